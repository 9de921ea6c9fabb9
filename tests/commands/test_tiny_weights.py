"""`make tiny-weights`: a weights folder the server boots from, written by the command."""

import subprocess
import sys

import pytest

from musicgen_cog.model.loading import load_model
from musicgen_cog.weights import assets
from tests.conftest import ROOT


@pytest.mark.slow
def test_the_command_writes_a_folder_the_model_loads_from(tmp_path):
    root = tmp_path / "weights"
    done = subprocess.run([sys.executable, "-m", "musicgen_cog.commands.tiny_weights", str(root)], cwd=ROOT,
                          capture_output=True, text=True, timeout=600)  # fmt: skip
    assert (done.returncode, done.stdout, done.stderr) == (0, f"random tiny weights written to {root}\n", "")
    for asset in assets.ALL_ASSETS:
        assets.locate(root, asset)
    assert load_model(root).source == root / assets.FINETUNE_FILENAME
