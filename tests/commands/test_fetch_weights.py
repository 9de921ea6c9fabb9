"""`make weights` against a loopback hub: whole, interrupted then resumed, corrupted, pinned."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from musicgen_cog.files import sha256_of
from musicgen_cog.weights import assets
from musicgen_cog.weights.fetch import LOCK_NAME
from tests.conftest import ROOT
from tests.fake_hub import FakeHub, commit_for


@pytest.fixture
def hub(tiny_weights):
    server = FakeHub(tiny_weights)
    yield server
    server.close()


def fetch(hub: FakeHub, root, tiny_weights, htdemucs_sha256: str | None = None):
    expected = htdemucs_sha256 or sha256_of(assets.locate(tiny_weights, assets.HTDEMUCS))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_DOWNLOAD_TIMEOUT": "5"}
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "musicgen_cog.commands.fetch_weights",
            str(root),
            "--endpoint",
            hub.url,
            "--htdemucs-url",
            hub.htdemucs_url(),
            "--htdemucs-sha256",
            expected,
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )


def gets(hub: FakeHub) -> list[str]:
    return [path for method, path, _ in hub.log if method == "GET"]


@pytest.mark.slow  # boots a prediction in a process of its own
def test_a_whole_fetch_gives_a_folder_the_server_boots_from_offline(hub, tiny_weights, tmp_path):
    root = tmp_path / "weights"
    done = fetch(hub, root, tiny_weights)
    assert done.returncode == 0, done.stderr
    assert "all assets present and verified" in done.stdout
    for asset in assets.ALL_ASSETS:
        assets.locate(root, asset)  # raises if anything is missing
    lock = json.loads((root / LOCK_NAME).read_text())
    assert lock[assets.BASE_LM.repo_id]["revision"] == commit_for(assets.BASE_LM.repo_id)
    state = assets.locate(root, assets.BASE_LM) / "state_dict.bin"
    assert lock[assets.BASE_LM.repo_id]["files"]["state_dict.bin"] == sha256_of(state)
    prediction = subprocess.run(
        [sys.executable, "-m", "musicgen_cog.commands.cog_predict", "-i", "prompt=x", "-i", "duration=1"],
        cwd=tmp_path,
        env={**os.environ, "WEIGHTS_DIR": str(root), "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert prediction.returncode == 0, prediction.stderr
    assert "building the language model from" in prediction.stderr and "musicgen-melody" in prediction.stderr


def test_a_second_fetch_downloads_nothing(hub, tiny_weights, tmp_path):
    root = tmp_path / "weights"
    assert fetch(hub, root, tiny_weights).returncode == 0
    hub.log.clear()
    again = fetch(hub, root, tiny_weights)
    assert again.returncode == 0, again.stderr
    assert gets(hub) == []


def test_the_lock_pins_the_commit_even_after_the_hub_moves_on(hub, tiny_weights, tmp_path):
    root = tmp_path / "weights"
    assert fetch(hub, root, tiny_weights).returncode == 0
    pinned = commit_for(assets.ENCODEC.repo_id)
    hub.generation = 1  # "main" now points elsewhere
    snapshot = assets.locate(root, assets.ENCODEC)
    (snapshot / "model.safetensors").resolve().unlink()
    (snapshot / "model.safetensors").unlink()
    hub.log.clear()
    assert fetch(hub, root, tiny_weights).returncode == 0
    assert f"/{assets.ENCODEC.repo_id}/resolve/{pinned}/model.safetensors" in gets(hub)
    assert not any("/resolve/main/" in path for path in gets(hub))


def test_an_interrupted_fetch_fails_clearly_then_resumes_where_it_stopped(hub, tiny_weights, tmp_path):
    dropped_at = 12 * 1024 * 1024
    big = os.urandom(25 * 1024 * 1024)  # a stand-in for a multi-GB checkpoint
    hub.files[(assets.MBD.repo_id, assets.MBD.filenames[0])] = big
    hub.drop_at[assets.MBD.filenames[0]] = dropped_at
    root = tmp_path / "weights"
    first = fetch(hub, root, tiny_weights)
    assert first.returncode == 1 and "error: fetching weights" in first.stderr
    assert assets.hub_snapshot(root, assets.MBD) is None  # no half file is ever taken for a whole one
    partial = list(root.rglob("*.incomplete"))
    assert len(partial) == 1 and partial[0].stat().st_size == dropped_at  # every byte received is kept
    del hub.drop_at[assets.MBD.filenames[0]]
    hub.log.clear()
    second = fetch(hub, root, tiny_weights)
    assert second.returncode == 0, second.stderr
    ranges = [rng for method, path, rng in hub.log if method == "GET" and path.endswith(assets.MBD.filenames[0])]
    assert ranges == [f"bytes={dropped_at}-"]
    snapshot = assets.hub_snapshot(root, assets.MBD)  # random bytes: `locate` would refuse them as corrupt
    assert snapshot is not None
    assert (snapshot / assets.MBD.filenames[0]).read_bytes() == big and not list(root.rglob("*.incomplete"))


def test_a_corrupted_file_is_refused_and_removed(hub, tiny_weights, tmp_path):
    root = tmp_path / "weights"
    hub.corrupt.add("model.safetensors")
    done = fetch(hub, root, tiny_weights)
    assert done.returncode == 1
    assert "downloaded content does not match its checksum (the hub's content address is" in done.stderr
    with pytest.raises(assets.AssetError):
        assets.locate(root, assets.T5)
    hub.corrupt.clear()
    assert fetch(hub, root, tiny_weights).returncode == 0


def test_htdemucs_with_the_wrong_checksum_is_refused(hub, tiny_weights, tmp_path):
    root = tmp_path / "weights"
    done = fetch(hub, root, tiny_weights, htdemucs_sha256="8726e21a")  # the real file's prefix, not the tiny one's
    assert done.returncode == 1 and "expected a sha256 starting 8726e21a" in done.stderr
    assert not assets.torch_hub_path(root, assets.HTDEMUCS).exists()
