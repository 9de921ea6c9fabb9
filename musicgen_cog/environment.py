"""Prepares the process before any model library is imported: local caches, offline, quiet.

huggingface_hub and transformers read the cache variables when they are first imported,
so `configure()` must run before either is imported (predict.py, the commands and the
tests call it first thing). It also silences the warnings a user cannot act on.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_WEIGHTS_DIR = REPO_ROOT / "weights"


def weights_dir() -> Path:
    """The base-assets folder: `$WEIGHTS_DIR`, else `weights/` beside predict.py."""
    return Path(os.environ.get("WEIGHTS_DIR") or DEFAULT_WEIGHTS_DIR).resolve()


def hf_cache_dir(root: Path) -> Path:
    return root / "huggingface" / "hub"


def torch_home(root: Path) -> Path:
    return root / "torch"


def configure(root: Path | None = None, offline: bool = True) -> Path:
    """Point the caches at `root` (default `weights_dir()`), offline unless fetching; return it."""
    root = Path(root).resolve() if root is not None else weights_dir()
    wanted = {
        "WEIGHTS_DIR": str(root),
        "HF_HUB_CACHE": str(hf_cache_dir(root)),
        "TORCH_HOME": str(torch_home(root)),
        "HF_HUB_OFFLINE": "1" if offline else "0",
        "TRANSFORMERS_OFFLINE": "1" if offline else "0",
        "HF_HUB_DISABLE_TELEMETRY": "1",
    }
    if offline:
        wanted["HF_HUB_DISABLE_PROGRESS_BARS"] = "1"
    if "huggingface_hub" in sys.modules and os.environ.get("HF_HUB_CACHE") != wanted["HF_HUB_CACHE"]:
        raise RuntimeError(
            "musicgen_cog.environment.configure() ran after huggingface_hub was imported; "
            "the weights folder would be ignored. Call it before importing audiocraft or transformers."
        )
    os.environ.update(wanted)
    # torch.compile's caches (MUSICGEN_COMPILE), read only when compiling: beside the weights
    # rather than in /tmp, unless the operator chose a folder
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(torch_home(root) / "inductor"))
    os.environ.setdefault("TRITON_CACHE_DIR", str(torch_home(root) / "triton"))
    silence_known_harmless_warnings()
    return root


# Warnings that are expected and that no user of this server can act on: (message regex, category).
KNOWN_HARMLESS_WARNINGS: tuple[tuple[str, type[Warning]], ...] = (
    # Cog 0.20 renamed BasePredictor/predict to BaseRunner/run and warns on the old names;
    # this project's brief and Replicate's own docs name predict.py's Predictor, so we keep them.
    ("BasePredictor is deprecated", DeprecationWarning),
    (r".*\.predict\(\) is deprecated", DeprecationWarning),
    # pydub (mp3 export) imports audioop, deprecated since Python 3.11 and removed in 3.13; we run 3.11.
    ("'audioop' is deprecated", DeprecationWarning),
)


def setting(name: str, choices: tuple[str, ...]) -> str:
    """The environment variable `name`: one of `choices`, the first when unset; else ValueError
    naming what is accepted."""
    value = os.environ.get(name, choices[0])
    if value not in choices:
        accepted = ", ".join(repr(choice) for choice in choices)
        raise ValueError(f"{name} must be one of {accepted}, got {value!r}")
    return value


def silence_known_harmless_warnings() -> None:
    """Hide the warnings in KNOWN_HARMLESS_WARNINGS, and xformers' build-mismatch notice."""
    # xformers 0.0.35 (the newest) is built for torch 2.10 and logs "please reinstall" on import.
    # audiocraft's torch attention backend only uses xformers' Python-level `unbind` and
    # `LowerTriangularMask`, never its C++/CUDA kernels, so nothing is lost.
    logging.getLogger("xformers").setLevel(logging.ERROR)
    for message, category in KNOWN_HARMLESS_WARNINGS:
        warnings.filterwarnings("ignore", message=message, category=category)
