"""Writing wav (16-bit PCM) and mp3, with unique names and failures that are errors."""

import numpy as np
import pytest
import soundfile
import torch
from pydub import AudioSegment

from musicgen_cog.audio.writing import EncodingError, OutputFolder, write_audio
from tests.helpers import SAMPLE_RATE, read_audio

SIGNAL = 0.5 * torch.sin(torch.linspace(0, 2000, SAMPLE_RATE * 2))[None]


def test_wav_is_16_bit_pcm_at_the_model_rate(tmp_path):
    path = write_audio(SIGNAL, SAMPLE_RATE, "wav", tmp_path)
    info = soundfile.info(path)
    assert (info.subtype, info.samplerate, info.channels, info.frames) == ("PCM_16", SAMPLE_RATE, 1, SAMPLE_RATE * 2)
    samples, _ = soundfile.read(path)
    assert np.abs(samples - SIGNAL[0].numpy()).max() < 1 / 2**14


def test_mp3_decodes_to_the_same_duration_and_leaves_no_wav(tmp_path):
    path = write_audio(SIGNAL, SAMPLE_RATE, "mp3", tmp_path)
    samples, rate = read_audio(path)
    assert path.suffix == ".mp3" and rate == SAMPLE_RATE
    assert abs(len(samples) - SAMPLE_RATE * 2) <= 1152  # one mp3 frame
    assert [p.name for p in tmp_path.iterdir()] == [path.name]


def test_every_file_gets_a_new_name(tmp_path):
    names = {write_audio(SIGNAL, SAMPLE_RATE, "wav", tmp_path, stem="same").name for _ in range(5)}
    assert len(names) == 5


def test_a_failed_mp3_encode_is_an_error_and_leaves_nothing(tmp_path, monkeypatch):
    monkeypatch.setattr(AudioSegment, "converter", "false")  # an encoder that exits non-zero
    with pytest.raises(EncodingError, match="mp3 encoding with ffmpeg failed"):
        write_audio(SIGNAL, SAMPLE_RATE, "mp3", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_the_output_folder_keeps_only_the_latest_predictions(tmp_path):
    folder = OutputFolder(tmp_path / "out", keep=2)
    first = folder.write(SIGNAL, SAMPLE_RATE, "wav", stem="a")
    second = folder.write(SIGNAL, SAMPLE_RATE, "mp3", stem="b")
    third = folder.write(SIGNAL, SAMPLE_RATE, "wav", stem="c")
    assert not first.exists()
    assert sorted((tmp_path / "out").iterdir()) == sorted([second, third])
