"""Helpers shared by the tests: the API defaults, test audio files, reading results back."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import signal
import subprocess
from pathlib import Path
from typing import Any

import numpy as np
import soundfile

from musicgen_cog.serving.coglet_control import child_pids

# Every input of the hosted API, as Cog passes them all to predict(): hosted defaults, except a prompt
# (text mode needs one), 1 s (quick) and seed 1 (repeatable).
DEFAULTS: dict[str, Any] = dict(
    prompt="calm piano",
    input_audio=None,
    duration=1,
    continuation=False,
    continuation_start=0,
    continuation_end=None,
    multi_band_diffusion=False,
    normalization_strategy="loudness",
    top_k=250,
    top_p=0.0,
    temperature=1.0,
    classifier_free_guidance=3,
    output_format="wav",
    seed=1,
)

SAMPLE_RATE = 32000
HOSTED_API = json.loads((Path(__file__).parent / "data" / "hosted_api.json").read_text())


def with_default_stop_signals() -> None:
    """A child's `preexec_fn`: the stop signals at their default actions, whatever its parent had. A
    shell's background job starts with SIGINT ignored and exec keeps that (CI may run tests so)."""
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.SIG_DFL)


def predict_now(predictor: Any, **inputs: Any) -> Path:
    """Run `predictor.predict` (a coroutine: Cog runs several at once) to its end, as Cog would."""
    return Path(asyncio.run(predictor.predict(**inputs)))


def data_uri(content: bytes, mime: str = "audio/wav") -> str:
    """`content` as a data URI, the way a client uploads a file inline."""
    return f"data:{mime};base64," + base64.b64encode(content).decode()


def samples_per_frame(musicgen: Any) -> int:
    """Audio samples per codec frame (one token per codebook): 640 for EnCodec 32 kHz at 50 Hz."""
    return int(musicgen.sample_rate // musicgen.frame_rate)


def decoding_steps(musicgen: Any, seconds: float) -> int:
    """Decoding steps for `seconds` of new tokens in one window: one per frame, then one per delayed
    codebook (audiocraft's delay pattern shifts codebook k by k steps)."""
    return int(seconds * musicgen.frame_rate) + musicgen.lm.num_codebooks - 1


def tone(seconds: float, sample_rate: int, channels: int, freq: float = 440.0, level: float = 0.3) -> np.ndarray:
    """A sine chord [frames, channels]: a different pitch per channel so channels differ."""
    t = np.arange(int(seconds * sample_rate)) / sample_rate
    return np.stack([level * np.sin(2 * np.pi * freq * (1 + 0.25 * c) * t) for c in range(channels)], axis=1).astype(
        np.float32
    )


def write_tone(path: Path, seconds: float = 2.0, sample_rate: int = 44100, channels: int = 1) -> Path:
    """Write a tone as `path`'s extension says: wav/flac/ogg via libsndfile, mp3/m4a via ffmpeg."""
    samples = tone(seconds, sample_rate, channels)
    if path.suffix in (".wav", ".flac", ".ogg"):
        soundfile.write(path, samples, sample_rate)
    else:
        wav = path.with_suffix(".src.wav")
        soundfile.write(wav, samples, sample_rate)
        subprocess.run(["ffmpeg", "-loglevel", "error", "-y", "-i", str(wav), str(path)], check=True)
        wav.unlink()
    return path


def read_audio(path: Path) -> tuple[np.ndarray, int]:
    """Decode any output file with ffmpeg (independently of our own decoder): [frames, channels]."""
    probe = json.loads(
        subprocess.run(
            ["ffprobe", "-v", "error", "-show_entries", "stream=sample_rate,channels", "-of", "json", str(path)],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    )["streams"][0]
    raw = subprocess.run(
        ["ffmpeg", "-loglevel", "error", "-i", str(path), "-f", "f32le", "-"], check=True, capture_output=True
    ).stdout
    channels = int(probe["channels"])
    return np.frombuffer(raw, dtype=np.float32).reshape(-1, channels), int(probe["sample_rate"])


def ffmpeg_loudness(path: Path) -> float:
    """Integrated loudness (LUFS) by ffmpeg's ebur128 filter: a measurement independent of pyloudnorm."""
    log = subprocess.run(
        ["ffmpeg", "-nostats", "-i", str(path), "-af", "ebur128", "-f", "null", "-"],
        capture_output=True,
        text=True,
        check=True,
    ).stderr
    return float(re.findall(r"I:\s+(-?[\d.]+) LUFS", log)[-1])


def copy_without(tiny_weights: Path, tmp_path: Path, *excluded: str) -> Path:
    """A weights folder linking to the tiny one's files, minus the relative paths in `excluded`."""
    root = tmp_path / "weights"
    for path in tiny_weights.rglob("*"):
        relative = path.relative_to(tiny_weights)
        if path.is_dir() or any(str(relative).startswith(e) for e in excluded):
            continue
        target = root / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if path.is_symlink():
            os.symlink(os.readlink(path), target)
        else:
            os.symlink(path, target)
    return root


def process_tree_memory_mb(pid: int) -> dict[str, float]:
    """Resident memory of a process and its descendants from /proc, in MB: all of it (VmRSS), the
    anonymous part where a leak would show (RssAnon), and the file-backed part (RssFile: library
    code and mapped files, paged in as code paths are first used)."""
    totals = dict.fromkeys(("VmRSS", "RssAnon", "RssFile"), 0.0)
    stack = [pid]
    while stack:
        current = stack.pop()
        try:
            for line in Path(f"/proc/{current}/status").read_text().splitlines():
                key, _, value = line.partition(":")
                if key in totals:
                    totals[key] += int(value.split()[0]) / 1024
            stack.extend(child_pids(current))
        except (FileNotFoundError, ProcessLookupError):
            continue
    return totals
