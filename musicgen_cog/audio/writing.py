"""Writing the generated audio: 16-bit PCM wav, or mp3 encoded from it by ffmpeg.

Every file gets a fresh unique name, so an upload never sends a stale file under a
reused name; `OutputFolder` keeps only the latest prediction's file on disk.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import soundfile
import torch
from audiocraft.data.audio_utils import i16_pcm
from pydub import AudioSegment
from pydub.exceptions import CouldntEncodeError

from .choices import OUTPUT_FORMATS


class OutputFolder:
    """The server's output folder, holding only the latest prediction's file.

    Cog sends (or uploads) a returned file before the next prediction starts and never
    deletes it, so each new prediction removes the previous one's: disk use stays bounded.
    This relies on one prediction at a time (coglet's default concurrency of one).
    """

    def __init__(self, path: Path | str):
        self.path = Path(path)
        self._previous: Path | None = None

    def write(self, wav: torch.Tensor, sample_rate: int, output_format: str, stem: str) -> Path:
        if self._previous is not None:
            self._previous.unlink(missing_ok=True)
        self._previous = write_audio(wav, sample_rate, output_format, self.path, stem)
        return self._previous


class EncodingError(RuntimeError):
    """The output file could not be written or encoded."""


def write_audio(
    wav: torch.Tensor, sample_rate: int, output_format: str, output_dir: Path, stem: str = "musicgen"
) -> Path:
    """Write `wav` ([channels, samples] in [-1, 1]) as `output_format` to a new file in `output_dir`."""
    if output_format not in OUTPUT_FORMATS:
        raise ValueError(f"output_format {output_format!r} is not one of {', '.join(OUTPUT_FORMATS)}")
    output_dir.mkdir(parents=True, exist_ok=True)
    wav_path = output_dir / f"{stem}-{uuid.uuid4().hex[:12]}.wav"
    # audiocraft's own conversion (scale by 2**15, round), so files match the hosted model's to the bit
    soundfile.write(wav_path, i16_pcm(wav.detach().cpu()).T.numpy(), sample_rate, subtype="PCM_16")
    if output_format == "wav":
        return wav_path
    mp3_path = wav_path.with_suffix(".mp3")
    try:
        AudioSegment.from_wav(wav_path).export(mp3_path, format="mp3")
    except (CouldntEncodeError, OSError) as exc:
        mp3_path.unlink(missing_ok=True)
        raise EncodingError(f"mp3 encoding with ffmpeg failed: {exc}") from exc
    finally:
        wav_path.unlink(missing_ok=True)
    if mp3_path.stat().st_size == 0:
        mp3_path.unlink()
        raise EncodingError("mp3 encoding with ffmpeg produced an empty file")
    return mp3_path
