"""run_prediction(): checks come first, the seed is chosen then logged, the file is named by it."""

import pytest

from musicgen_cog.api.inputs import PredictionInputs
from musicgen_cog.api.pipeline import limits_of, run_prediction
from musicgen_cog.audio.writing import OutputFolder
from musicgen_cog.errors import InputError


@pytest.fixture
def outputs(tmp_path):
    return OutputFolder(tmp_path / "out")


def test_the_limits_are_the_loaded_checkpoints(predictor):
    limits = limits_of(predictor.model)
    assert (limits.codebook_size, limits.supports_melody, limits.supports_mbd) == (2048, True, True)


def test_inputs_are_checked_before_any_audio_is_read_or_anything_generated(predictor, outputs, tmp_path, monkeypatch):
    monkeypatch.setattr("musicgen_cog.api.pipeline.decode_audio", lambda path: pytest.fail("decoded the audio"))
    monkeypatch.setattr("musicgen_cog.api.pipeline.generate", lambda *a: pytest.fail("generated"))
    bad = PredictionInputs(prompt="x", input_audio=tmp_path / "not-there.wav", top_k=5000)
    with pytest.raises(InputError, match=r"^top_k must be between"):
        run_prediction(predictor.model, bad, outputs)
    assert not outputs.path.exists()


def test_the_seed_is_logged_before_the_work_and_names_the_file(predictor, outputs, logs):
    path = run_prediction(predictor.model, PredictionInputs(prompt="x", duration=1, seed=77), outputs)
    messages = [r.getMessage() for r in logs.records]
    assert messages[0] == "Using seed 77"
    assert path.parent == outputs.path and path.name.startswith("musicgen-seed77-") and path.suffix == ".wav"
    assert messages[-1].startswith(f"wrote {path.name} (1.00 s of audio) in ")


def test_an_unseeded_request_logs_the_seed_it_drew(predictor, outputs, logs):
    path = run_prediction(predictor.model, PredictionInputs(prompt="x", duration=1, seed=-1), outputs)
    drawn = int(next(r.getMessage() for r in logs.records if r.getMessage().startswith("Using seed")).split()[-1])
    assert path.name.startswith(f"musicgen-seed{drawn}-")
