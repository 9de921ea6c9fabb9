"""predict.py's Predictor with the model's work held by the test, for the stop tests (tests/test_stopping.py).

coglet (and `make predict`) load it as `COG_PREDICT_TYPE_STUB=tests/held_predictor.py:Predictor`.
All of predict.py runs (setup's plumbing, admission, the drain, the cut, the output file) except the
model: loading it waits until the test creates a file, and so does each prediction, unless it is
cancelled or cut first (one asking for MultiBand Diffusion, a stage that sees a cut only when it ends,
waits for its file whatever happens). A test holds the server starting, or busy, for as long as it
needs, at any speed.
"""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from typing import Any

import torch

import predict
from musicgen_cog.api.inputs import PredictionInputs
from musicgen_cog.audio.writing import OutputFolder

HOLD_ENV = "MUSICGEN_TEST_HOLD"  # the folder of the files below
SETUP_STARTED, SETUP_GO = "setup-started", "setup-go"


def started(prompt: str) -> str:
    """The file a prediction with this prompt creates once it is in flight."""
    return f"started-{prompt}"


def go(prompt: str) -> str:
    """The file that lets the prediction with this prompt finish."""
    return f"go-{prompt}"


def held(name: str, cancelled: threading.Event | None = None) -> bool:
    """Create nothing, wait for the test's file `name`: True once it exists, False if cancelled first."""
    path = Path(os.environ[HOLD_ENV]) / name
    while not path.exists():
        if cancelled is not None and cancelled.is_set():
            return False
        time.sleep(0.05)
    return True


def mark(name: str) -> None:
    (Path(os.environ[HOLD_ENV]) / name).touch()


class HeldModel:
    def healthy(self) -> bool:
        return True


def load_model(root: Path, finetune: Path | None, slots: int) -> HeldModel:
    mark(SETUP_STARTED)
    held(SETUP_GO)
    return HeldModel()


def run_prediction(model: Any, inputs: PredictionInputs, outputs: OutputFolder, cancelled: threading.Event) -> Path:
    mark(started(str(inputs.prompt)))
    if not held(go(str(inputs.prompt)), None if inputs.multi_band_diffusion else cancelled):
        raise RuntimeError("cancelled at a step boundary")  # as the pipeline's GenerationCancelled
    return outputs.write(torch.zeros(1, 320), 32000, "wav", "held")


class Predictor(predict.Predictor):
    def setup(self, weights: str | None = None) -> None:
        held_versions = {
            "load_model": load_model,
            "settle_decoding_path": lambda model: None,  # nothing to warm up or prove
            "run_prediction": run_prediction,
        }
        for name, function in held_versions.items():  # predict.py's own names, as setup() and _run() call them
            assert hasattr(predict, name), f"predict.py no longer calls {name}: hold what it calls instead"
            setattr(predict, name, function)
        super().setup(weights)
