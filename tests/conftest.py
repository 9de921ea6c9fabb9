"""Shared fixtures: one tiny random-weights folder per generator version, and the predictor on it.

The environment is configured before anything imports huggingface_hub or transformers,
exactly as predict.py does, so every test goes through the real offline loading code.
"""

from __future__ import annotations

import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
os.environ.setdefault("OMP_NUM_THREADS", "2")

import torch  # noqa: E402

if not torch.cuda.is_available():  # Triton kernels (the GPU's attention) run in Triton's interpreter
    os.environ.setdefault("TRITON_INTERPRET", "1")

from musicgen_cog import environment  # noqa: E402
from musicgen_cog.weights import random_weights  # noqa: E402

TINY_WEIGHTS = random_weights.cached_tiny_folder()
environment.configure(TINY_WEIGHTS)

from musicgen_cog.audio.writing import OutputFolder  # noqa: E402
from tests.helpers import DEFAULTS, predict_now  # noqa: E402


def pytest_configure(config: pytest.Config) -> None:
    """pytest's warning filters take precedence over a program's own: give it ours."""
    for message, category in environment.KNOWN_HARMLESS_WARNINGS:
        config.addinivalue_line("filterwarnings", f"ignore:{message}:{category.__name__}")


@pytest.fixture(scope="session")
def tiny_weights() -> Path:
    """A complete random weights folder (base assets, base LM, fine-tune), built once and reused."""
    return random_weights.ensure_weights_folder(TINY_WEIGHTS)


@pytest.fixture(scope="session")
def schema_file(tiny_weights: Path) -> Path:
    """`.cog/openapi_schema.json`, written exactly as `make schema` writes it, for the HTTP server."""
    from musicgen_cog.api.cog_schema import write_schema

    return write_schema()


@pytest.fixture(scope="session")
def server(tiny_weights: Path, schema_file: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """The real Cog HTTP server on a loopback port, shared by the HTTP tests; it has a temporary
    folder of its own (`<log folder>/tmp`), so that files left behind can be found."""
    from tests.cog_server import CogServer

    folder = tmp_path_factory.mktemp("server")
    (folder / "tmp").mkdir()
    instance = CogServer(tiny_weights, folder / "server.log", env={"TMPDIR": str(folder / "tmp")})
    try:
        instance.wait_for("READY")
        yield instance
    finally:
        instance.stop()


@pytest.fixture(scope="session")
def predictor(tiny_weights: Path) -> Any:
    """predict.Predictor after setup() on the tiny folder's baked-in fine-tune."""
    import predict

    instance = predict.Predictor()
    instance.setup(weights=None)
    return instance


@pytest.fixture
def run(predictor: Any, tmp_path: Path) -> Callable[..., Path]:
    """Call predict() with every argument passed (as Cog would), overriding some; return the file."""
    predictor.outputs = OutputFolder(tmp_path / "outputs")

    def call(**overrides: Any) -> Path:
        unknown = set(overrides) - set(DEFAULTS)
        assert not unknown, f"not an input of the API: {unknown}"
        return predict_now(predictor, **{**DEFAULTS, **overrides})

    return call


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Our package's log records, set up as in production (its logger does not propagate)."""
    from musicgen_cog.api.logs import configure_logging

    configure_logging()
    logger = logging.getLogger("musicgen_cog")
    logger.addHandler(caplog.handler)
    yield caplog
    logger.removeHandler(caplog.handler)
