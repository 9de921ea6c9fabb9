"""The code shown for a take, run for real: with a file input it builds the request on stdin (curl) or
inline (Python), and both return the bytes the server gives for the same request sent directly."""

from __future__ import annotations

import base64
import subprocess
import sys

import pytest

from playground.code import request_code
from tests.helpers import data_uri, write_tone


@pytest.fixture
def melody(tmp_path):
    # a name with a space and a quote: the shell and Python code must both carry it
    return write_tone(tmp_path / "it's my melody.wav", seconds=2)


@pytest.mark.parametrize("language", ["curl", "python"])
def test_the_code_with_a_file_input_returns_what_the_server_gives(server, tmp_path, melody, language):
    inputs = {"prompt": "the tune, as a trio", "duration": 1, "input_audio": data_uri(melody.read_bytes())}
    direct = server.predict(input={**inputs, "seed": 7}).json()
    assert direct["status"] == "succeeded", direct
    code = request_code(server.url, inputs, {"input_audio": melody.name}, seed=7)[language]
    command = ["bash", "-c", code] if language == "curl" else [sys.executable, "-c", code]
    done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "musicgen-seed7.wav").read_bytes() == base64.b64decode(direct["output"].split(",", 1)[1])


def test_a_refused_request_says_why(server, tmp_path):
    code = request_code(server.url, {"prompt": "x", "top_k": 4000}, {}, seed=1)
    for command in (["bash", "-c", code["curl"]], [sys.executable, "-c", code["python"]]):
        done = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=60)
        assert done.returncode != 0 and "top_k must be between 0 and the codebook size 2048, got 4000" in done.stderr
    assert not list(tmp_path.iterdir())


def test_the_seed_used_is_fixed_in_the_code_and_names_the_file():
    code = request_code("http://h:5000", {"prompt": "x", "output_format": "mp3"}, {}, seed=0)
    assert "'seed': 0" in code["python"] and 'open("musicgen-seed0.mp3", "wb")' in code["python"]
    assert '"seed": 0' in code["curl"] and code["curl"].rstrip().endswith("musicgen-seed0.mp3")
