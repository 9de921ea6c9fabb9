"""Shared fixtures: one tiny random-weights folder per generator version, and the predictor on it.

The environment is configured before anything imports huggingface_hub or transformers,
exactly as predict.py does, so every test goes through the real offline loading code.
"""
from __future__ import annotations

import logging
import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")

from musicgen_cog import environment, random_weights  # noqa: E402

TINY_WEIGHTS = ROOT / ".cache" / f"tiny-weights-{random_weights.generator_version()}"
environment.configure(TINY_WEIGHTS)

from musicgen_cog.audio_output import OutputFolder  # noqa: E402
from tests.helpers import DEFAULTS  # noqa: E402


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    """A complete random weights folder (base assets, base LM, fine-tune), built once and reused."""
    # The fine-tune is written last and atomically: its presence means the folder is complete.
    if not (TINY_WEIGHTS / "trained_model.tar").is_file():
        shutil.rmtree(TINY_WEIGHTS, ignore_errors=True)
        random_weights.write_weights_folder(TINY_WEIGHTS)
    return TINY_WEIGHTS


@pytest.fixture(scope="session")
def schema_file(tiny_weights) -> Path:
    """`.cog/openapi_schema.json`, generated exactly as `make schema` does, for the HTTP server."""
    import json

    from musicgen_cog.openapi_schema import build_schema
    path = ROOT / ".cog" / "openapi_schema.json"
    path.parent.mkdir(exist_ok=True)
    path.write_text(json.dumps(build_schema(), indent=2) + "\n")
    return path


@pytest.fixture(scope="session")
def predictor(tiny_weights):
    """predict.Predictor after setup() on the tiny folder's baked-in fine-tune."""
    import predict
    instance = predict.Predictor()
    instance.setup(weights=None)
    return instance


@pytest.fixture
def run(predictor, tmp_path):
    """Call predict() with every argument passed (as Cog would), overriding some; return the file."""
    predictor.outputs = OutputFolder(tmp_path / "outputs")

    def call(**overrides) -> Path:
        unknown = set(overrides) - set(DEFAULTS)
        assert not unknown, f"not an input of the API: {unknown}"
        return Path(predictor.predict(**{**DEFAULTS, **overrides}))
    return call


@pytest.fixture
def logs(caplog):
    """Our package's log records, set up as in production (its logger does not propagate)."""
    from musicgen_cog.logs import configure_logging
    configure_logging()
    logger = logging.getLogger("musicgen_cog")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
