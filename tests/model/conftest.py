"""A CUDA graph's stand-in on a CPU, so that the GPU's capture and replay paths are tested without one."""

from __future__ import annotations

from typing import ClassVar

import pytest
import torch

from musicgen_cog.model import steps
from musicgen_cog.model.loading import load_model, start_decoding_loop
from musicgen_cog.model.steps import BatchedSteps, CudaGraphStep


class ReplayedStep(CudaGraphStep):
    """CudaGraphStep on a CPU: its calls and capture context, with the CUDA graph replaced by what
    a graph freezes: the step and the autocast it was captured with."""

    captured: ClassVar[list] = []

    def _capture(self, step):
        self.step = step
        self.autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        self.captured.append((*self.autocast, torch.is_autocast_cache_enabled()))
        for _ in range(2):  # as the real capture's warm-up runs: the state they advance must be restored
            step()

    def replay(self):
        enabled, dtype = self.autocast
        with torch.autocast("cpu", dtype=dtype, enabled=enabled):
            self.step()


@pytest.fixture
def replayed(monkeypatch) -> list:
    """Steps are 'captured' as ReplayedStep; the list gets one entry per capture."""
    monkeypatch.setattr(steps, "CudaGraphStep", ReplayedStep)
    monkeypatch.setattr(ReplayedStep, "captured", [])
    return ReplayedStep.captured


@pytest.fixture
def graphed(tiny_weights, replayed):
    """A CPU model stepping every slot at once with graphs ('captured' as ReplayedStep), as on a GPU."""
    model = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(model, 2, batched=True)
    loop = model.loop
    assert loop is not None and isinstance(loop.steps, BatchedSteps)
    loop.steps.graphs_enabled = True
    return model
