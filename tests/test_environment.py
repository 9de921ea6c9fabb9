"""configure(): the caches point at the weights folder, offline, and only after-import misuse is refused."""

import os
import subprocess
import sys

import pytest

from musicgen_cog import environment
from tests.conftest import ROOT


def python(code: str, **env: str) -> subprocess.CompletedProcess:
    """Run `code` in a fresh interpreter: configure() is about what happens before imports."""
    return subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, **env})  # fmt: skip


def test_configure_points_every_cache_at_the_folder_and_forbids_the_hub(tmp_path):
    done = python(
        "import os, json; from musicgen_cog import environment; environment.configure(os.environ['ROOT']);"
        "print(json.dumps({k: os.environ[k] for k in ('WEIGHTS_DIR', 'HF_HUB_CACHE', 'TORCH_HOME',"
        " 'HF_HUB_OFFLINE', 'TRANSFORMERS_OFFLINE')}))",
        ROOT=str(tmp_path),
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == (
        f'{{"WEIGHTS_DIR": "{tmp_path}", "HF_HUB_CACHE": "{tmp_path}/huggingface/hub", '
        f'"TORCH_HOME": "{tmp_path}/torch", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}}'
    )


def test_configuring_after_huggingface_hub_was_imported_is_refused(tmp_path):
    done = python(
        "import huggingface_hub; from musicgen_cog import environment; environment.configure('/elsewhere')",
        HF_HUB_CACHE=str(tmp_path),
    )
    assert done.returncode != 0 and "configure() ran after huggingface_hub was imported" in done.stderr


@pytest.mark.slow
def test_importing_the_model_libraries_after_configure_prints_no_warning():
    done = python(
        "from musicgen_cog import environment; environment.configure();"
        "import audiocraft.models, cog, pydub;"
        "import predict"
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""


def test_the_weights_folder_is_weights_dir_else_the_one_beside_predict_py(monkeypatch, tmp_path):
    monkeypatch.setenv("WEIGHTS_DIR", str(tmp_path))
    assert environment.weights_dir() == tmp_path
    monkeypatch.delenv("WEIGHTS_DIR")
    assert environment.weights_dir() == ROOT / "weights"
