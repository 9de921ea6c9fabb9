"""The command-line twin of `cog predict`: same inputs, same checks, a file and its path."""
import os
import subprocess
import sys

from tests.conftest import ROOT
from tests.helpers import SAMPLE_RATE, read_audio, write_tone


def cli(tiny_weights, *args, cwd):
    env = {**os.environ, "WEIGHTS_DIR": str(tiny_weights), "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-m", "musicgen_cog.cli", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=300)


def test_a_prediction_writes_the_file_and_prints_its_path(tiny_weights, tmp_path):
    melody = write_tone(tmp_path / "m.flac")
    done = cli(tiny_weights, "-i", "prompt=lofi beat", "-i", "duration=2", "-i", f"input_audio=@{melody}",
               "-i", "output_format=mp3", "-i", "seed=0", "-o", "out/song.mp3", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "out/song.mp3"
    samples, rate = read_audio(tmp_path / "out" / "song.mp3")
    assert rate == SAMPLE_RATE and abs(len(samples) - 2 * SAMPLE_RATE) <= 1152
    assert "Using seed 0" in done.stderr and "generation: 103/103 steps (100%)" in done.stderr


def test_the_default_output_is_output_dot_format_in_the_current_folder(tiny_weights, tmp_path):
    done = cli(tiny_weights, "-i", "prompt=x", "-i", "duration=1", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "output.wav" and (tmp_path / "output.wav").is_file()


def test_schema_violations_are_refused_before_loading_anything(tiny_weights, tmp_path):
    done = cli(tiny_weights, "-i", "prompt=x", "-i", "output_format=ogg", cwd=tmp_path)
    assert done.returncode != 0 and "output_format does not match choices ['wav', 'mp3']" in done.stderr
    done = cli(tiny_weights, "-i", "prompt=x", "-i", "continuation_end=-2", cwd=tmp_path)
    assert done.returncode != 0 and "continuation_end fails constraint >= -1" in done.stderr
    done = cli(tiny_weights, "-i", "prompt=x", "-i", "duration=eight", cwd=tmp_path)
    assert done.returncode != 0 and "duration expects integer" in done.stderr.splitlines()[-1]


def test_predictor_checks_give_a_one_line_error(tiny_weights, tmp_path):
    done = cli(tiny_weights, "-i", "top_k=5000", "-i", "prompt=x", cwd=tmp_path)
    assert done.returncode != 0
    assert done.stderr.strip().splitlines()[-1] == "error: top_k must be between 0 and the codebook size 2048, got 5000"
    done = cli(tiny_weights, "-i", "duration=2", cwd=tmp_path)
    assert done.stderr.strip().splitlines()[-1] == "error: Must provide either prompt or input_audio"


def test_unknown_inputs_and_malformed_pairs_are_refused(tiny_weights, tmp_path):
    done = cli(tiny_weights, "-i", "promt=x", cwd=tmp_path)
    assert done.returncode != 0 and "unknown input(s) promt" in done.stderr
    done = cli(tiny_weights, "-i", "prompt", cwd=tmp_path)
    assert done.returncode != 0 and "is not of the form name=value" in done.stderr
