"""Where each base asset lives in a weights folder, and the refusal of missing or corrupt files."""

import pytest

from musicgen_cog import environment
from musicgen_cog.weights import assets
from musicgen_cog.weights.assets import AssetError
from tests.helpers import copy_without


def test_paths_follow_the_caches_the_libraries_read_offline(tmp_path):
    assert assets.hub_repo_dir(tmp_path, assets.ENCODEC) == (
        environment.hf_cache_dir(tmp_path) / "models--facebook--encodec_32khz"
    )
    assert assets.torch_hub_path(tmp_path, assets.HTDEMUCS) == tmp_path / "torch/hub/checkpoints/955717e8-8726e21a.th"
    assert assets.HTDEMUCS.sha256_prefix == "8726e21a"


def test_a_snapshot_is_where_refs_main_points(tiny_weights, tmp_path):
    assert assets.hub_snapshot(tmp_path, assets.T5) is None
    snapshot = assets.hub_snapshot(tiny_weights, assets.T5)
    commit = (assets.hub_repo_dir(tiny_weights, assets.T5) / "refs" / "main").read_text()
    assert snapshot == assets.hub_repo_dir(tiny_weights, assets.T5) / "snapshots" / commit


@pytest.mark.parametrize("asset", assets.ALL_ASSETS, ids=lambda a: a.label)
def test_a_missing_asset_is_named_with_where_and_how(tmp_path, asset):
    with pytest.raises(AssetError) as caught:
        assets.locate(tmp_path, asset)
    message = str(caught.value)
    assert message.startswith(f"missing {asset.label}") and "not found under" in message
    assert f"make weights WEIGHTS_DIR={tmp_path}" in message and f"make tiny-weights WEIGHTS_DIR={tmp_path}" in message


@pytest.mark.parametrize(
    "asset, filename, damage",
    [
        (assets.T5, "model.safetensors", "truncate"), (assets.T5, "tokenizer.json", "garbage"),
        (assets.T5, "spiece.model", "garbage"), (assets.ENCODEC, "config.json", "truncate"),
        (assets.HTDEMUCS, None, "truncate"), (assets.BASE_LM, "state_dict.bin", "truncate"),
    ],
    ids=lambda v: getattr(v, "label", v),
)  # fmt: skip
def test_a_corrupt_asset_is_refused_naming_the_file_and_the_fix(tiny_weights, tmp_path, asset, filename, damage):
    root = copy_without(tiny_weights, tmp_path)
    link = assets.locate(root, asset) if filename is None else assets.locate(root, asset) / filename
    data = link.read_bytes()
    link.unlink()
    link.write_bytes(data[: len(data) // 2] if damage == "truncate" else b"\x00garbage" * 10)
    with pytest.raises(AssetError) as caught:
        assets.locate(root, asset)
    message = str(caught.value)
    assert message.startswith(f"corrupt {asset.label}") and f"{link.name} cannot be read" in message
    assert str(link.parent) in message and f"make weights WEIGHTS_DIR={root}" in message
