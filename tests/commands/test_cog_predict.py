"""`make predict`, the command-line twin of `cog predict`: same inputs, same checks, a file and its path."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

from musicgen_cog.commands.cog_predict import main, parse_inputs
from tests.conftest import ROOT
from tests.helpers import SAMPLE_RATE, decoding_steps, read_audio, write_tone


def error_of(*argv: str) -> str:
    """The one line the command exits with, run in this process (the weights are the tiny ones)."""
    with pytest.raises(SystemExit) as caught:
        main(list(argv))
    return str(caught.value.code)


@pytest.mark.slow
def test_a_prediction_writes_the_file_prints_its_path_and_no_warning(tiny_weights, predictor, tmp_path):
    """The real command, in a process of its own, as `make predict` runs it."""
    melody = write_tone(tmp_path / "m.flac")
    done = subprocess.run(
        [sys.executable, "-m", "musicgen_cog.commands.cog_predict", "-i", "prompt=lofi beat", "-i", "duration=2",
         "-i", f"input_audio=@{melody}", "-i", "output_format=mp3", "-i", "seed=0", "-o", "out/song.mp3"],
        cwd=tmp_path, env={**os.environ, "WEIGHTS_DIR": str(tiny_weights), "PYTHONPATH": str(ROOT)},
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "out/song.mp3"
    samples, rate = read_audio(tmp_path / "out" / "song.mp3")
    assert rate == SAMPLE_RATE and abs(len(samples) - 2 * SAMPLE_RATE) <= 1152
    steps = decoding_steps(predictor.model.musicgen, 2)
    assert "Using seed 0" in done.stderr and f"generation: {steps}/{steps} steps (100%)" in done.stderr
    assert "KV cache: 1 of 1 slots fit in " in done.stderr  # one prediction: one slot, whatever the server's limit
    assert "Warning" not in done.stderr and "WARNING" not in done.stderr  # nothing a user cannot act on


def test_the_default_output_is_output_dot_format_in_the_current_folder(tiny_weights, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["-i", "prompt=x", "-i", "duration=1", "-i", "output_format=mp3"]) == 0
    assert capsys.readouterr().out.strip() == "output.mp3" and (tmp_path / "output.mp3").is_file()


@pytest.mark.parametrize(
    "pair, name, kind",
    [("output_format=ogg", "output_format", "string"), ("continuation_end=-2", "continuation_end", "integer"),
     ("duration=eight", "duration", "integer"), ("top_p=high", "top_p", "float")],
)  # fmt: skip
def test_schema_violations_are_refused_before_loading_anything(pair, name, kind, monkeypatch):
    def must_not_load(self, weights=None):
        pytest.fail("the model was loaded before the inputs were checked")

    monkeypatch.setattr("predict.Predictor.setup", must_not_load)
    error = error_of("-i", "prompt=x", "-i", pair)  # cog's own reason sits between these two
    assert error.startswith(f"error: {name}") and error.endswith(f"({name} expects {kind})")


def test_predictor_checks_give_a_one_line_error(tiny_weights):
    assert error_of("-i", "top_k=5000", "-i", "prompt=x") == (
        "error: top_k must be between 0 and the codebook size 2048, got 5000"
    )
    assert error_of("-i", "duration=2") == "error: Must provide either prompt or input_audio"


def test_unknown_inputs_and_malformed_pairs_are_refused():
    assert error_of("-i", "promt=x").startswith("error: unknown input(s) promt; known: prompt, input_audio")
    assert error_of("-i", "prompt").endswith("is not of the form name=value")


def test_at_names_a_file_and_plain_values_stay_strings():
    assert parse_inputs(["input_audio=@song.mp3", "prompt=a=b", "seed=3"]) == {
        "input_audio": Path("song.mp3"), "prompt": "a=b", "seed": "3",
    }  # fmt: skip
