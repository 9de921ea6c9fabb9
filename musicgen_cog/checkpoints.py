"""Reading checkpoint files without running code hidden in them.

A fine-tune may come from any URL, so every `.th`/`.bin`/`.tar` we read goes through
`torch.load(weights_only=True)` with an allow-list of exactly the classes that
audiocraft's formats pickle (OmegaConf configs), and nothing else.
"""
from __future__ import annotations

import collections
import pickle
import typing
import zipfile
from pathlib import Path

import torch
from omegaconf import DictConfig, ListConfig
from omegaconf.base import ContainerMetadata, Metadata
from omegaconf.nodes import AnyNode

# What an OmegaConf config pickles into (builtin types appear as factories and value types); torch allows tensors itself.
CONFIG_CLASSES = [DictConfig, ListConfig, ContainerMetadata, Metadata, AnyNode, typing.Any,
                  collections.defaultdict, dict, list, int, float, bool, str]


class CheckpointError(ValueError):
    """A checkpoint that is missing, unreadable, unsafe or not in an expected format."""


def load_checkpoint(path: Path) -> dict:
    """Load a checkpoint dict from `path`, refusing anything beyond tensors and configs."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    try:
        with torch.serialization.safe_globals(CONFIG_CLASSES):
            obj = torch.load(path, map_location="cpu", weights_only=True, mmap=_is_zip(path))
    except pickle.UnpicklingError as exc:
        raise CheckpointError(
            f"refused to load {path}: it holds objects other than tensors and configs, and loading "
            f"them could run arbitrary code ({_first_line(exc)})") from exc
    except (zipfile.BadZipFile, RuntimeError, EOFError, OSError, ValueError) as exc:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint ({_first_line(exc)})") from exc
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path} holds a {type(obj).__name__}, expected a dict of weights")
    return obj


def _is_zip(path: Path) -> bool:
    """torch.save's zip format can be memory-mapped: tensors are read once, straight into place."""
    return zipfile.is_zipfile(path)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    for line in text.splitlines():
        if "GLOBAL" in line or "Unsupported" in line:
            return line.strip()
    return text.splitlines()[0] if text else type(exc).__name__
