"""Decoding input_audio whatever its container, and slicing it."""

import math

import numpy as np
import pytest
import soundfile

from musicgen_cog.audio.decoding import Audio, decode_audio, slice_audio
from musicgen_cog.errors import InputError
from tests.helpers import read_audio, write_tone


@pytest.mark.parametrize("suffix", [".wav", ".mp3", ".flac", ".ogg", ".m4a"])
@pytest.mark.parametrize("channels", [1, 2])
def test_common_formats_decode_like_the_ffmpeg_command_line(tmp_path, suffix, channels):
    path = write_tone(tmp_path / f"tone{suffix}", seconds=2.0, sample_rate=44100, channels=channels)
    audio = decode_audio(path)
    reference, reference_rate = read_audio(path)
    assert audio.sample_rate == reference_rate == 44100
    assert audio.samples.shape == (channels, len(reference))
    assert audio.seconds == pytest.approx(2.0, abs=0.1)  # lossy codecs pad a little
    assert np.abs(audio.samples.numpy().T - reference).max() < 1e-4


@pytest.mark.parametrize("rate", [8000, 22050, 48000, 96000, 192000])
def test_sample_rates_are_kept(tmp_path, rate):
    assert decode_audio(write_tone(tmp_path / "t.wav", 0.5, rate)).sample_rate == rate


def test_six_channels_decode(tmp_path):
    assert decode_audio(write_tone(tmp_path / "t.wav", 0.5, 48000, channels=6)).samples.shape[0] == 6


def test_the_file_name_does_not_decide_the_decoder(tmp_path):
    mp3 = write_tone(tmp_path / "song.mp3")
    disguised = mp3.rename(tmp_path / "song.wav")
    assert decode_audio(disguised).seconds == pytest.approx(2.0, abs=0.1)


@pytest.mark.parametrize("content", [b"", b"this is not audio at all\n" * 20, bytes(range(256)) * 40])
def test_files_that_are_not_audio_are_rejected_by_name(tmp_path, content):
    path = tmp_path / "fake.wav"
    path.write_bytes(content)
    with pytest.raises(InputError) as caught:
        decode_audio(path)
    assert caught.value.input_name == "input_audio"
    assert "ffmpeg can decode" in str(caught.value)


def test_truncated_mp3_decodes_what_is_there_or_says_why(tmp_path):
    mp3 = write_tone(tmp_path / "t.mp3", seconds=3.0)
    data = mp3.read_bytes()
    mp3.write_bytes(data[: len(data) // 2])
    assert 0.5 < decode_audio(mp3).seconds < 2.5


def test_zero_length_audio_is_rejected(tmp_path):
    path = tmp_path / "empty.wav"
    soundfile.write(path, np.zeros((0, 1), dtype=np.float32), 44100)
    with pytest.raises(InputError, match="holds no audio samples"):
        decode_audio(path)


def test_nan_in_a_float_wav_is_rejected(tmp_path):
    samples = np.zeros((4410, 1), dtype=np.float32)
    samples[10] = math.nan
    path = tmp_path / "nan.wav"
    soundfile.write(path, samples, 44100, subtype="FLOAT")
    with pytest.raises(InputError, match="NaN or infinite"):
        decode_audio(path)


def clip(seconds=10.0, rate=100):
    import torch

    return Audio(torch.arange(int(seconds * rate), dtype=torch.float32)[None], rate)


def test_slice_takes_start_to_end_seconds():
    part = slice_audio(clip(), 2, 5)
    assert part.seconds == 3.0 and part.samples[0, 0].item() == 200


def test_slice_without_end_runs_to_the_end_of_the_clip():
    assert slice_audio(clip(), 4, None).seconds == 6.0


def test_slice_end_past_the_clip_stops_at_the_clip():
    assert slice_audio(clip(), 4, 60).seconds == 6.0


def test_slice_start_past_the_end_is_an_error_naming_continuation_start():
    with pytest.raises(InputError) as caught:
        slice_audio(clip(), 12, None)
    assert caught.value.input_name == "continuation_start" and "past the end of input_audio" in str(caught.value)


def test_empty_slice_is_an_error_naming_continuation_end():
    with pytest.raises(InputError) as caught:
        slice_audio(clip(), 3, 3)
    assert caught.value.input_name == "continuation_end"
