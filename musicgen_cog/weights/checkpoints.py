"""Reading checkpoint files without running code hidden in them.

A fine-tune may come from any URL, so every `.th`/`.bin`/`.tar` we read goes through
`torch.load(weights_only=True)` with an allow-list of exactly the classes that
audiocraft's formats pickle (OmegaConf configs), and nothing else.
"""

from __future__ import annotations

import collections
import pickle
import typing
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode

# What an OmegaConf config pickles into (builtin types appear as factories and value types);
# torch allows tensors itself.
CONFIG_CLASSES: list[Any] = [
    DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, typing.Any,
    collections.defaultdict, dict, list, int, float, bool, str,
]  # fmt: skip


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe or not in an expected format."""


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint dict from `path`, refusing anything beyond tensors and configs.

    A missing file is one more unreadable checkpoint: the message carries the OS's reason.
    """
    path = Path(path)
    try:
        with torch.serialization.safe_globals(CONFIG_CLASSES), warnings.catch_warnings():
            # torch's advice on an old-style pickle adds nothing to the error we raise for it
            warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as exc:
        reason = _refusal(exc)
        if "GLOBAL" not in reason:  # not a refused class: the pickle itself is broken
            raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({reason})") from exc
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and configs, and loading "
            f"them could run arbitrary code ({reason})"
        ) from exc
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_refusal(exc)})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of weights")
    return obj


def _is_zip(path: Path) -> bool:
    """torch.save's zip format can be memory-mapped: tensors are read once, straight into place."""
    return zipfile.is_zipfile(path)


def _refusal(exc: BaseException) -> str:
    """The line of torch's long message that says what it refused (a GLOBAL, an opcode), else its
    first line, else the exception's type: torch wraps the reason in paragraphs of advice."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return text.splitlines()[0] if text else type(exc).__name__
