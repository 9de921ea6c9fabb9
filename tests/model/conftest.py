"""Stand-ins for what only a GPU gives, so that its paths are tested on a CPU: a CUDA graph that
fails when replayed stale, and CUDA streams that record who waited for what."""

from __future__ import annotations

import threading
from typing import Any, ClassVar

import pytest
import torch

from musicgen_cog.model import randomness, steps
from musicgen_cog.model.decoding_path import LADDER
from musicgen_cog.model.loading import load_model, start_decoding_loop
from musicgen_cog.model.steps import BatchedSteps, CudaGraphStep
from musicgen_cog.model.streams import NoStreams


def frozen(step: Any) -> dict[str, Any]:
    """What a real graph freezes at capture, for the step `partial(BatchedSteps._run_step, span)`:
    the addresses and shapes of the cache and of the slots' state, the cache's length, and the
    Python numbers the step reads (its arguments, and the steps' and decoder's attributes)."""
    batched, decoder = step.func.__self__, step.func.__self__.decoder
    values: dict[str, Any] = {"arguments": step.args, "cache length": decoder.cache_length()}
    values["cache"] = [(k.data_ptr(), v.data_ptr(), tuple(k.shape)) for k, v in decoder.caches]
    values["state"] = [(t.data_ptr(), tuple(t.shape)) for t in batched.state.tensors()]
    for name, owner in (("steps", batched), ("decoder", decoder)):
        values |= {f"{name}.{k}": v for k, v in vars(owner).items() if isinstance(v, bool | int | float | str)}
    return values


GRAPHS = LADDER[0]  # the batched step replayed from CUDA graphs, as a GPU runs it


class ReplayedStep(CudaGraphStep):
    """CudaGraphStep on a CPU: a replay runs the step again under the autocast it was captured
    with, and fails first if anything a real graph would have frozen has changed since."""

    captured: ClassVar[list] = []
    loop: ClassVar[Any] = None  # the decoding loop whose windows a capture must not meet

    def _capture(self, step, stream):
        self.step, self.stream = step, stream
        self.autocast = (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"))
        active = len(self.loop._active) if self.loop is not None else 0
        held = randomness._TORCH_DEFAULT.locked()
        self.captured.append((*self.autocast, torch.is_autocast_cache_enabled(), held, active))
        for _ in range(2):  # as the real capture's warm-up runs: the state they advance must be restored
            step()
        self.frozen = frozen(step)

    def replay(self):
        now = frozen(self.step)
        changed = sorted(name for name in self.frozen.keys() | now.keys() if self.frozen.get(name) != now.get(name))
        assert not changed, f"a stale capture was replayed: {', '.join(changed)} changed since it was captured"
        enabled, dtype = self.autocast
        with torch.autocast("cpu", dtype=dtype, enabled=enabled):
            return self.step()


@pytest.fixture
def replayed(monkeypatch) -> list:
    """Steps are 'captured' as ReplayedStep; the list gets one entry per capture: autocast on,
    its dtype, its cache on, the default generators' lock held, windows decoding meanwhile."""
    monkeypatch.setattr(steps, "CudaGraphStep", ReplayedStep)
    monkeypatch.setattr(ReplayedStep, "captured", [])
    return ReplayedStep.captured


@pytest.fixture
def graphed(tiny_weights, replayed, monkeypatch):
    """A CPU model stepping every slot at once with graphs ('captured' as ReplayedStep), as on a GPU."""
    model = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(model, 2, GRAPHS)
    loop = model.loop
    assert loop is not None and isinstance(loop.steps, BatchedSteps) and loop.steps.graphs_enabled
    monkeypatch.setattr(ReplayedStep, "loop", loop)
    return model


def record_submissions(loop: Any, monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], threading.Condition]:
    """The windows handed to `loop`, in order as they come (its `submit` wrapped), and a condition
    notified at each: a test holds a step until a request has come."""
    queued: list[Any] = []
    changed, submit = threading.Condition(), loop.submit

    def counted_submit(window):
        done = submit(window)
        with changed:
            queued.append(window)
            changed.notify_all()
        return done

    monkeypatch.setattr(loop, "submit", counted_submit)
    return queued, changed


@pytest.fixture
def admit_together(model, monkeypatch):
    """Arm with `n`: the loop admits nothing until `n` more windows are queued, then all it can."""
    loop = model.loop
    admit = loop._admit
    queued, changed = record_submissions(loop, monkeypatch)
    expected = {"queued": 0}

    def gated_admit():
        with changed:
            changed.wait_for(lambda: len(queued) >= expected["queued"])
        loop._take_incoming(block=False)
        admit()

    def arm(n: int) -> None:
        with changed:
            expected["queued"] = len(queued) + n

    monkeypatch.setattr(loop, "_admit", gated_admit)
    return arm


class RecordingStreams(NoStreams):
    """CUDA streams' calls, recorded in order with the thread that made them: events are numbered."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str, Any]] = []
        self._lock = threading.Lock()
        self._events = 0

    def record(self, what: str, detail: Any = None) -> None:
        with self._lock:
            self.calls.append((threading.current_thread().name, what, detail))

    def mark(self) -> int:
        with self._lock:
            self._events += 1
            event = self._events
        self.record("mark", event)
        return event

    def wait(self, event: Any) -> None:
        self.record("wait", event)

    def keep_alive(self, tensors) -> None:
        self.record("keep alive", [id(t) for t in tensors])

    def throttle(self, lookahead: int) -> None:
        self.record("throttle", lookahead)
