"""Each prediction's metrics, through the real server: Cog's predict_time and ours beside it,
present for every mode and consistent with each other."""

from __future__ import annotations

from typing import Any

import pytest

from musicgen_cog.api.metrics import METRIC_NAMES
from musicgen_cog.model.generation import EXTEND_STRIDE
from musicgen_cog.model.progress import planned_steps
from tests.helpers import data_uri, write_tone

MODES: dict[str, tuple[dict[str, Any], float, str]] = {
    "text": ({"prompt": "metrics", "duration": 2}, 2.0, "audio_decoding_time"),
    "mp3": ({"prompt": "metrics", "duration": 1, "output_format": "mp3"}, 1.0, "audio_decoding_time"),
    "melody": ({"prompt": "metrics", "duration": 1, "input_audio": "clip"}, 1.0, "audio_decoding_time"),
    "continuation": ({"duration": 1, "input_audio": "clip", "continuation": True}, 3.0, "audio_decoding_time"),
    "mbd": ({"prompt": "metrics", "duration": 1, "multi_band_diffusion": True}, 1.0, "mbd_time"),
    # two windows: each waits for a slot, conditions and decodes in turn; the stages do not overlap
    "windowed": ({"prompt": "metrics", "duration": 33}, 33.0, "audio_decoding_time"),
}


@pytest.fixture(scope="module")
def clip(tmp_path_factory) -> str:
    return data_uri(write_tone(tmp_path_factory.mktemp("clip") / "clip.wav", seconds=2.0).read_bytes())


@pytest.mark.parametrize("mode", [pytest.param(m, marks=pytest.mark.slow) if m == "windowed" else m for m in MODES])
def test_every_prediction_reports_its_stages_steps_audio_and_seed(server, predictor, clip, mode):
    inputs, audio_seconds, decoder = MODES[mode]
    inputs = {**inputs, "seed": 31, **({"input_audio": clip} if "input_audio" in inputs else {})}
    body = server.predict(input=inputs).json()
    assert body["status"] == "succeeded", body.get("error")
    metrics = body["metrics"]
    stages = {"slot_wait_time", "conditioning_time", "decoding_time", decoder, "encoding_time"}
    assert stages <= set(metrics) and set(metrics) <= {*METRIC_NAMES.values(), "predict_time", "decoding_steps",
                                                         "steps_per_second", "audio_seconds", "seed",
                                                         "decoding_path"}  # fmt: skip
    assert all(metrics[name] >= 0 for name in stages)
    assert sum(metrics[name] for name in stages) <= metrics["predict_time"]
    prompt = 2 if inputs.get("continuation") else 0  # seconds of the clip a continuation starts from
    steps = planned_steps(predictor.model.musicgen, inputs["duration"] + prompt, 50 * prompt, EXTEND_STRIDE)
    assert metrics["decoding_steps"] == steps
    assert metrics["steps_per_second"] == pytest.approx(steps / metrics["decoding_time"], rel=0.01)
    assert metrics["audio_seconds"] == audio_seconds and metrics["seed"] == 31
    assert metrics["decoding_path"] == "per-slot"  # a CPU's default, proven at setup
