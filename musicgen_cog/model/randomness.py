"""One request's random streams, so that concurrent requests never draw from each other's.

Sampling draws from the request's own torch generator. Two libraries only draw from global
state: demucs (python's `random`, for its shifts) and MultiBand Diffusion (torch's default
generator). Those calls run under a lock with the request's own state swapped in and saved
back, so a seeded request repeats exactly, alone or beside others.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator
from contextlib import contextmanager

import torch

_PYTHON_RANDOM = threading.Lock()
_TORCH_DEFAULT = threading.Lock()


class RequestRandomness:
    """A seed's streams: what `random.seed(seed)` and `torch.manual_seed(seed)` would start."""

    def __init__(self, seed: int, device: torch.device | str):
        self.generator = torch.Generator(device=device).manual_seed(seed)
        self._python_state = random.Random(seed).getstate()

    @contextmanager
    def python_random(self) -> Iterator[None]:
        """Python's global `random` draws from this request's stream inside the block."""
        with _PYTHON_RANDOM:
            saved = random.getstate()
            random.setstate(self._python_state)
            try:
                yield
            finally:
                self._python_state = random.getstate()
                random.setstate(saved)

    @contextmanager
    def torch_default(self) -> Iterator[None]:
        """torch's default generator (of this request's device) continues this request's stream
        inside the block, as it would if the request had seeded it and run alone."""
        default = _default_generator(self.generator.device)
        with _TORCH_DEFAULT:
            saved = default.get_state()
            default.set_state(self.generator.get_state())
            try:
                yield
            finally:
                self.generator.set_state(default.get_state())
                default.set_state(saved)


@contextmanager
def holding_default_generators(blocking: bool = True) -> Iterator[bool]:
    """No request draws from torch's default generators inside the block (a CUDA graph capture
    registers them, and a draw from another thread meanwhile would fail it). Gives whether it
    holds them: not blocking, it may not (MBD draws from them for seconds)."""
    held = _TORCH_DEFAULT.acquire(blocking=blocking)
    try:
        yield held
    finally:
        if held:
            _TORCH_DEFAULT.release()


def _default_generator(device: torch.device) -> torch.Generator:
    if device.type == "cuda":
        return torch.cuda.default_generators[device.index if device.index is not None else torch.cuda.current_device()]
    return torch.default_generator
