"""Random weights in the real on-disk formats: every asset present and readable, configs of each kind."""

from pathlib import Path

import pytest
import torch

from musicgen_cog.weights import assets
from musicgen_cog.weights.checkpoints import load_checkpoint
from musicgen_cog.weights.random_weights import SIZES, lm_config, write_finetune


@pytest.mark.parametrize("asset", assets.ALL_ASSETS, ids=lambda a: a.label)
def test_the_folder_holds_every_asset_readable_where_the_libraries_look(tiny_weights, asset):
    assets.locate(tiny_weights, asset)  # raises AssetError if missing or unreadable


def test_the_fine_tune_is_in_the_trainers_format(tiny_weights):
    package = load_checkpoint(tiny_weights / assets.FINETUNE_FILENAME)
    assert set(package) == {"xp.cfg", "model"}
    assert package["xp.cfg"].transformer_lm.num_layers == SIZES["tiny"].num_layers
    assert all(isinstance(tensor, torch.Tensor) for tensor in package["model"].values())


@pytest.mark.parametrize("stereo, melody, codebooks, prepend, cross", [
    (False, True, 4, ["self_wav", "description"], []),
    (True, True, 8, ["self_wav", "description"], []),
    (False, False, 4, [], ["description"]),
])  # fmt: skip
def test_configs_describe_mono_stereo_melody_and_text_only_models(stereo, melody, codebooks, prepend, cross):
    cfg = lm_config(SIZES["tiny"], stereo=stereo, melody=melody)
    assert cfg["transformer_lm"]["n_q"] == codebooks == len(cfg["codebooks_pattern"]["delay"]["delays"])
    assert (cfg["fuser"]["prepend"], cfg["fuser"]["cross"]) == (prepend, cross)
    assert ("self_wav" in cfg["conditioners"]) is melody


def test_a_fine_tune_file_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    def save_half_then_fail(obj, path):
        Path(path).write_bytes(b"half")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", save_half_then_fail)
    with pytest.raises(OSError, match="disk full"):
        write_finetune(tmp_path / "trained_model.tar")
    assert list(tmp_path.iterdir()) == []
