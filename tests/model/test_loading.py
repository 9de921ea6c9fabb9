"""Loading MusicGen from both checkpoint formats and the base assets, offline, with clear failures."""

from pathlib import Path
from typing import Any

import pytest
import torch

from musicgen_cog import environment
from musicgen_cog.model.loading import load_mbd, load_model
from musicgen_cog.weights import assets
from musicgen_cog.weights.assets import AssetError
from musicgen_cog.weights.checkpoints import CheckpointError
from musicgen_cog.weights.random_weights import write_finetune
from tests.helpers import copy_without, samples_per_frame


def test_the_baked_fine_tune_is_served_when_no_weights_are_given(tiny_weights):
    model = load_model(tiny_weights)
    assert model.source == tiny_weights / "trained_model.tar"
    assert model.musicgen.sample_rate == 32000 and model.musicgen.frame_rate == 50
    assert model.supports_melody and model.supports_mbd and model.codebook_size == 2048


def test_the_base_lm_folder_is_served_when_there_is_no_fine_tune(tiny_weights, tmp_path):
    root = copy_without(tiny_weights, tmp_path, assets.FINETUNE_FILENAME)
    model = load_model(root)
    assert model.source == assets.locate(root, assets.BASE_LM)
    assert (model.source / "state_dict.bin").is_file()


def test_an_audiocraft_folder_given_as_weights_loads(tiny_weights):
    folder = assets.locate(tiny_weights, assets.BASE_LM)
    assert load_model(tiny_weights, folder).source == folder


def test_a_fine_tune_file_given_as_weights_is_built_from_its_own_config(tiny_weights, tmp_path):
    text_only = write_finetune(tmp_path / "text.tar", melody=False)
    model = load_model(tiny_weights, text_only)
    assert not model.supports_melody
    assert "self_wav" not in model.musicgen.lm.condition_provider.conditioners


def test_a_stereo_fine_tune_reports_no_mbd(tiny_weights, tmp_path):
    model = load_model(tiny_weights, write_finetune(tmp_path / "stereo.tar", stereo=True))
    assert model.musicgen.lm.num_codebooks == 8 and not model.supports_mbd
    assert model.musicgen.audio_channels == 2


def test_training_only_config_keys_are_dropped(tiny_weights):
    cfg: Any = load_model(tiny_weights).musicgen.lm.cfg
    assert "merge_text_conditions_p" not in cfg.conditioners.args
    assert "cache_path" not in cfg.conditioners.self_wav.chroma_stem


def test_weights_that_do_not_match_their_config_are_refused(tiny_weights, tmp_path):
    package = torch.load(tiny_weights / "trained_model.tar", weights_only=False)
    package["model"].pop(next(iter(package["model"])))
    torch.save(package, tmp_path / "broken.tar")
    with pytest.raises(CheckpointError, match=r"do not match the model its xp.cfg describes"):
        load_model(tiny_weights, tmp_path / "broken.tar")


def test_a_dict_that_is_not_a_musicgen_checkpoint_is_refused(tiny_weights, tmp_path):
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.th")
    with pytest.raises(CheckpointError, match=r"not a MusicGen checkpoint: it lacks model, xp.cfg"):
        load_model(tiny_weights, tmp_path / "other.th")


def test_missing_weights_path_is_named(tiny_weights, tmp_path):
    with pytest.raises(CheckpointError, match=r"nope\.tar is not a readable PyTorch checkpoint .*No such file"):
        load_model(tiny_weights, tmp_path / "nope.tar")


@pytest.mark.parametrize("asset", [assets.T5, assets.ENCODEC, assets.HTDEMUCS], ids=lambda a: a.label)
def test_each_missing_base_asset_is_named_with_where_and_how(tiny_weights, tmp_path, asset):
    if isinstance(asset, assets.HubAsset):
        excluded = str(environment.hf_cache_dir(Path()) / ("models--" + asset.repo_id.replace("/", "--")))
        expected_file = asset.filenames[0]
    else:
        excluded, expected_file = str(Path("torch")), asset.filename
    root = copy_without(tiny_weights, tmp_path, excluded)
    with pytest.raises(AssetError) as caught:
        load_model(root)
    message = str(caught.value)
    assert asset.label in message and expected_file in message
    assert str(root) in message and f"make weights WEIGHTS_DIR={root}" in message


def test_missing_base_lm_is_named_when_there_is_no_fine_tune(tiny_weights, tmp_path):
    root = copy_without(tiny_weights, tmp_path, assets.FINETUNE_FILENAME, "huggingface/hub/models--facebook--musicgen")
    with pytest.raises(AssetError, match=r"MusicGen-melody base model .* state_dict.bin"):
        load_model(root)


def test_one_missing_file_of_a_hub_asset_is_named(tiny_weights, tmp_path):
    root = copy_without(tiny_weights, tmp_path)
    snapshot = assets.locate(root, assets.T5)
    (snapshot / "tokenizer.json").unlink()
    with pytest.raises(AssetError, match=r"tokenizer.json not found"):
        load_model(root)


def test_missing_mbd_is_named_only_when_mbd_is_loaded(tiny_weights, tmp_path):
    root = copy_without(tiny_weights, tmp_path, "huggingface/hub/models--facebook--multiband-diffusion")
    model = load_model(root)
    with pytest.raises(AssetError, match=r"MultiBand Diffusion decoder .* mbd_musicgen_32khz.th"):
        model.mbd()


def test_mbd_decodes_tokens_through_the_models_own_codec(tiny_weights):
    model = load_model(tiny_weights)  # on either device: the MBD loads beside the model's codec
    device = model.musicgen.device
    mbd = load_mbd(tiny_weights, model.musicgen.compression_model, device)
    assert mbd.codec_model is model.musicgen.compression_model and len(mbd.DPs) == 4
    tokens = torch.randint(0, model.codebook_size, (1, model.musicgen.lm.num_codebooks, 25), device=device)
    wav = mbd.tokens_to_wav(tokens)
    assert wav.shape == (1, 1, 25 * samples_per_frame(model.musicgen)) and torch.isfinite(wav).all()


def test_skipping_random_init_gives_exactly_the_checkpoints_model(tiny_weights):
    """Setup builds the LM without random init (the checkpoint overwrites it): same model as a full
    build, compared bit for bit in fp32 on the CPU."""
    from audiocraft.models import builders

    musicgen = load_model(tiny_weights, device="cpu").musicgen
    fast: Any = musicgen.lm
    reference = builders.get_lm_model(fast.cfg)
    reference.load_state_dict(torch.load(tiny_weights / "trained_model.tar", weights_only=False)["model"])
    reference.eval()
    assert {k: v.shape for k, v in fast.named_buffers()} == {k: v.shape for k, v in reference.named_buffers()}
    for (name, a), (_, b) in zip(fast.named_buffers(), reference.named_buffers(), strict=True):
        assert torch.equal(a, b), name
    attributes, _ = musicgen._prepare_tokens_and_attributes(["calm piano"], None)
    codes = torch.randint(0, 2048, (1, 4, 20))
    with torch.no_grad():
        logits = [lm.compute_predictions(codes, attributes).logits for lm in (fast, reference)]
    assert torch.isfinite(logits[0]).any()
    torch.testing.assert_close(logits[0], logits[1], rtol=0, atol=0, equal_nan=True)  # NaN marks masked steps


def test_a_fine_tune_crafted_to_run_code_is_refused_at_setup(tiny_weights, tmp_path):
    from tests.weights.test_checkpoints import RunsCode

    marker = tmp_path / "pwned"
    torch.save({"xp.cfg": {}, "model": RunsCode(marker)}, tmp_path / "trained_model.tar")
    with pytest.raises(CheckpointError, match=r"refused to load .* could run arbitrary code"):
        load_model(tiny_weights, tmp_path / "trained_model.tar")
    assert not marker.exists()
