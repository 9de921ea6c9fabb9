"""Decoding the user's `input_audio` and cutting the slice that conditions generation.

PyAV (FFmpeg's decoders) sniffs the container itself, so the file name never decides
how a file is read, and anything ffmpeg reads (wav, mp3, flac, ogg, m4a...) works.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import torch

from ..errors import InputError

MAX_INPUT_SECONDS = 600.0  # decoding stops past this: bounded time and memory per request
ACCEPTED = "an audio file ffmpeg can decode (wav, mp3, flac, ogg, m4a, ...)"


@dataclass(frozen=True)
class Audio:
    """Decoded audio: `samples` is float32 [channels, frames] at `sample_rate`."""

    samples: torch.Tensor
    sample_rate: int

    @property
    def seconds(self) -> float:
        return self.samples.shape[-1] / self.sample_rate


def decode_audio(path: Path) -> Audio:
    """Decode every channel of the first audio stream in `path`, at its own sample rate."""
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise InputError("input_audio", f"holds no audio stream; expected {ACCEPTED}")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="fltp", layout=stream.layout, rate=stream.rate)
            chunks, frames, limit = [], 0, int(MAX_INPUT_SECONDS * stream.rate)
            for frame in container.decode(stream):
                for planar in resampler.resample(frame):
                    chunk = planar.to_ndarray()
                    chunks.append(chunk)
                    frames += chunk.shape[-1]
                if frames > limit:
                    raise InputError(
                        "input_audio",
                        f"is longer than the {MAX_INPUT_SECONDS:.0f} s accepted; trim it before uploading",
                    )
            sample_rate = stream.rate
    except InputError:
        raise
    except (av.error.FFmpegError, UnicodeDecodeError, ValueError) as exc:
        raise InputError("input_audio", f"could not be decoded ({exc}); expected {ACCEPTED}") from exc
    if not chunks or frames == 0:
        raise InputError("input_audio", f"holds no audio samples; expected {ACCEPTED}")
    samples = np.concatenate(chunks, axis=-1).astype(np.float32, copy=False)
    if not np.isfinite(samples).all():
        raise InputError("input_audio", "holds NaN or infinite samples; expected finite audio")
    return Audio(torch.from_numpy(samples), int(sample_rate))


def slice_audio(audio: Audio, start: float, end: float | None) -> Audio:
    """The part of `audio` from `start` to `end` seconds (`end` None: to the end of the clip)."""
    if start >= audio.seconds:
        raise InputError(
            "continuation_start",
            f"is {start:g} s, past the end of input_audio "
            f"({audio.seconds:.2f} s); use a start before the end of the clip",
        )
    stop = audio.samples.shape[-1] if end is None else min(int(audio.sample_rate * end), audio.samples.shape[-1])
    first = int(audio.sample_rate * start)
    if stop <= first:
        raise InputError(
            "continuation_end",
            f"leaves an empty slice of input_audio (from {start:g} s to "
            f"{end:g} s); choose an end after continuation_start",
        )
    return Audio(audio.samples[:, first:stop], audio.sample_rate)
