"""Points every model library at the local weights folder and forbids hub access.

huggingface_hub and transformers read these variables when they are first imported,
so `configure()` must run before either is imported (predict.py, the CLI and the
tests call it first thing).
"""
from __future__ import annotations

import os
import sys
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
            "the weights folder would be ignored. Call it before importing audiocraft or transformers.")
    os.environ.update(wanted)
    return root
