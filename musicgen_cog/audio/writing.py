"""Writing the generated audio: 16-bit PCM wav, or mp3 encoded from it by ffmpeg.

Every file gets a fresh unique name, so an upload never sends a stale file under a
reused name; `OutputFolder` keeps only the latest predictions' files on disk.
"""

from __future__ import annotations

import threading
import uuid
from collections import deque
from pathlib import Path

import soundfile
import torch
from audiocraft.data.audio_utils import i16_pcm
from pydub import AudioSegment
from pydub.exceptions import CouldntEncodeError

from .choices import OUTPUT_FORMATS


class OutputFolder:
    """The server's output folder, holding only the `keep` latest predictions' files.

    Cog sends (or uploads) a returned file while its prediction still holds one of the server's
    concurrency slots, and never deletes it. With `keep` at least twice the concurrency, a new
    file only ever removes one Cog is done with, and disk use stays bounded.
    """

    def __init__(self, path: Path | str, keep: int = 2):
        self.path = Path(path)
        self._kept: deque[Path] = deque()
        self._keep = keep
        self._lock = threading.Lock()  # predictions write from threads of their own

    def write(self, wav: torch.Tensor, sample_rate: int, output_format: str, stem: str) -> Path:
        written = write_audio(wav, sample_rate, output_format, self.path, stem)
        with self._lock:
            self._kept.append(written)
            while len(self._kept) > self._keep:
                self._kept.popleft().unlink(missing_ok=True)
        return written


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
