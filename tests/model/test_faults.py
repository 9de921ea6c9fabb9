"""A device's faults, stood in for on a CPU: out of memory fails one request (a step is tried once
more first; a capture is tried again later), a sticky error stops the loop and fails health, and
health also fails for a loop that is stuck or gone."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from musicgen_cog.model import decoding_loop, faults, loading, randomness
from musicgen_cog.model.decoding_path import BATCHED, LADDER
from musicgen_cog.model.faults import DeviceFailed, OutOfMemory
from musicgen_cog.model.generation import GenerationRequest, generate
from musicgen_cog.model.loading import load_model, start_decoding_loop
from musicgen_cog.model.randomness import RequestRandomness
from musicgen_cog.model.sampling import Sampling
from musicgen_cog.model.steps import BatchedSteps
from musicgen_cog.model.warm_up import warm_up
from tests.model.conftest import record_submissions
from tests.model.test_decoding_loop import after_idle, request, together, tokens, wait_until

ILLEGAL_ADDRESS = "CUDA error: an illegal memory access was encountered"


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")


@pytest.fixture(params=["per-slot", "batched"])
def model(request, tiny_weights):
    loaded = load_model(tiny_weights, device="cpu", slots=2)
    if request.param == "batched":
        start_decoding_loop(loaded, 2, BATCHED)
    return loaded


def failing(real, times: int, error=oom):
    """`real`, raising `error()` on its first `times` calls."""
    calls = []

    def call(*args):
        calls.append(1)
        if len(calls) <= times:
            raise error()
        return real(*args)

    call.calls = calls  # type: ignore[attr-defined]
    return call


MARKED = Sampling(top_k=7, top_p=0.0, temperature=1.0, cfg_coef=3.0)  # the rule of request(..., top_k=7)


def failing_for_the_marked(real, error=oom):
    """`real(window)`, raising `error()` for a window of the MARKED rule instead."""

    def call(window):
        if window.sampling == MARKED:
            raise error()
        return real(window)

    return call


def on_a_stood_in_gpu(model, monkeypatch) -> list[str]:
    """The loop's device said to be CUDA; what it hands back to the allocator recorded (returned)."""
    released: list[str] = []
    monkeypatch.setattr(model.loop, "_device", "cuda")
    monkeypatch.setattr(decoding_loop, "release_cached_memory", released.append)
    return released


def test_a_step_that_runs_out_of_memory_once_is_tried_again_with_the_same_tokens(
    model, monkeypatch, admit_together, logs
):
    """The retried step gives every request the tokens it gets without the fault: a step writes
    nothing of the state before its last allocation. What the device's allocator held is handed back
    first, and the operator is told."""
    specs = [(1, request(1)), (2, request(1, top_p=0.9))]
    expected = [tokens(model, *spec) for spec in specs]
    steps, released = model.loop.steps, list[str]()
    flaky = failing(steps.step, times=1)
    monkeypatch.setattr(steps, "step", flaky)
    monkeypatch.setattr(decoding_loop, "release_cached_memory", released.append)
    admit_together(2)
    assert all(torch.equal(t, e) for t, e in zip(together(model, specs), expected, strict=True))
    assert len(flaky.calls) > 1
    assert released == ["cpu"]
    assert [r.getMessage() for r in logs.records if r.levelname == "WARNING"] == [
        "a decoding step ran out of memory; trying it once more"
    ]


@pytest.mark.parametrize("device, named", [("cpu", "CPU"), ("cuda", "GPU")])
def test_a_step_out_of_memory_twice_fails_its_requests_and_the_next_one_succeeds(
    model, monkeypatch, admit_together, device, named
):
    """The message names the device: the model's, or a GPU stood in (the loop's device said to be
    CUDA, the allocator's release recorded)."""
    steps = model.loop.steps
    monkeypatch.setattr(steps, "step", failing(steps.step, times=2))
    monkeypatch.setattr(model.loop, "_device", device)
    monkeypatch.setattr(decoding_loop, "release_cached_memory", lambda device: None)
    admit_together(2)  # both in the first step, the one that fails
    outcome = together(model, [(1, request(1)), (2, request(1))])
    assert all(isinstance(o, OutOfMemory) for o in outcome)
    assert str(outcome[0]) == (
        f"the {named} ran out of memory while decoding; try a shorter duration, or fewer requests at once"
    )
    assert tokens(model, 3, request(1)).shape[-1] == 50


@pytest.mark.parametrize("stage", ["codec", "mbd"])
def test_out_of_memory_decoding_the_audio_fails_the_request_and_the_next_one_succeeds(model, stage, monkeypatch):
    if stage == "codec":
        monkeypatch.setattr(model.musicgen, "generate_audio", failing(model.musicgen.generate_audio, times=1))
    else:
        mbd = model.mbd()
        monkeypatch.setattr(mbd, "tokens_to_wav", failing(mbd.tokens_to_wav, times=1))
    sampling = Sampling(250, 0.0, 1.0, 3.0)
    one = GenerationRequest("x", 1.0, sampling, multi_band_diffusion=stage == "mbd")
    with pytest.raises(OutOfMemory, match=r"while decoding (the audio \(EnCodec\)|with MultiBand Diffusion);"):
        generate(model, one, RequestRandomness(1, "cpu"))
    assert generate(model, one, RequestRandomness(1, "cpu")).shape[-1] == 32000


def test_a_capture_that_runs_out_of_memory_is_tried_again_later_and_graphs_stay_on(
    graphed, replayed, monkeypatch, logs
):
    """Warm-up's first request meets no graph; the capture tried once it has left runs out of
    memory; the next request decodes eagerly; the capture tried after it succeeds."""
    from musicgen_cog.model import steps as steps_module

    real = steps_module.CudaGraphStep
    attempts = []

    def short_of_memory(*args):
        attempts.append(1)
        if len(attempts) == 1:
            raise oom()
        return real(*args)

    released: list[str] = []
    monkeypatch.setattr(steps_module, "CudaGraphStep", short_of_memory)
    monkeypatch.setattr(steps_module, "release_cached_memory", released.append)
    warm_up(graphed)
    batched = graphed.loop.steps
    assert len(attempts) == 2 and batched.graphs_enabled and not batched.pending
    assert list(batched.graphs) == [graphed.loop.decoder.cache_length()]
    warnings = [r.getMessage() for r in logs.records if "capture" in r.getMessage()]
    assert warnings == ["warm-up: CUDA graph capture ran out of memory; decoding eagerly, capturing later"]
    assert released == ["cpu"]  # what the failed capture held goes back to its device before the next try


def test_a_capture_that_runs_out_of_memory_saving_the_slots_state_is_tried_again_later(
    graphed, replayed, monkeypatch, logs
):
    """The state is saved before a capture (its warm-up runs advance it): short of memory there,
    the capture is put off as any other that ran short, and nothing else goes wrong."""
    from musicgen_cog.model.faults import CAPTURING
    from musicgen_cog.model.steps import SlotState

    tensors, short = SlotState.tensors, [True]

    def saved_short_of_memory(self):
        if CAPTURING.is_set() and short:
            short.clear()
            raise oom()
        return tensors(self)

    monkeypatch.setattr(SlotState, "tensors", saved_short_of_memory)
    assert tokens(graphed, 1, request(1)).shape[-1] == 50
    for _ in range(2):  # the capture tried once the request had left ran short; the next try succeeds
        after_idle(graphed)
    batched = graphed.loop.steps
    assert not short and batched.graphs_enabled and not batched.pending
    assert list(batched.graphs) == [graphed.loop.decoder.cache_length()]
    assert [r.getMessage() for r in logs.records if r.levelname in ("WARNING", "ERROR")] == [
        "CUDA graph capture ran out of memory; decoding eagerly, capturing later"
    ]


@pytest.mark.parametrize("stage", ["step", "admit"], ids=["in-a-step", "joining-the-batch"])
@pytest.mark.parametrize(
    "error", [ILLEGAL_ADDRESS, "CUDA error: an error no list names"], ids=["by-its-text", "by-asking"]
)
def test_a_sticky_device_error_stops_the_loop_fails_every_request_and_health(
    model, monkeypatch, admit_together, error, stage
):
    """Met in a step or as a window joins the batch. Sticky by its text, or, where the text says
    nothing, because the device (stood in) no longer runs a kernel when asked."""
    steps = model.loop.steps
    error_once = failing(getattr(steps, stage), times=1, error=lambda: torch.AcceleratorError(error))
    monkeypatch.setattr(steps, stage, error_once)
    monkeypatch.setattr(faults, "device_answers", lambda device: device != "cpu")
    admit_together(2)
    outcome = together(model, [(1, request(3)), (2, request(1))])
    assert all(isinstance(o, DeviceFailed) and error in str(o) for o in outcome)
    wait_until(lambda: not model.loop.alive)
    assert not model.health.ok and not model.healthy()
    with pytest.raises(DeviceFailed, match="the server reports itself unhealthy and must be restarted"):
        tokens(model, 3, request(1))


def test_a_sticky_error_in_a_requests_own_stage_fails_health_and_every_request_after(model, monkeypatch):
    error = failing(model.musicgen.generate_audio, times=1, error=lambda: torch.AcceleratorError(ILLEGAL_ADDRESS))
    monkeypatch.setattr(model.musicgen, "generate_audio", error)
    with pytest.raises(DeviceFailed):
        generate(model, GenerationRequest("x", 1.0, Sampling(250, 0.0, 1.0, 3.0)), RequestRandomness(1, "cpu"))
    assert not model.healthy()
    with pytest.raises(DeviceFailed):  # refused before it decodes
        tokens(model, 2, request(1))


def held(real):
    """`real`, made to wait until released: (the wrapper, set once it is entered, the release)."""
    entered, release = threading.Event(), threading.Event()

    def wrapper(*args):
        entered.set()
        release.wait(timeout=60)
        return real(*args)

    return wrapper, entered, release


def test_health_fails_for_a_loop_stuck_on_a_step_and_recovers_when_it_moves(model, monkeypatch):
    steps = model.loop.steps
    step = steps.step
    hangs, stuck, release = held(step)
    monkeypatch.setattr(steps, "step", hangs)
    monkeypatch.setitem(loading.STALLED_AFTER, "cpu", 0.2)
    assert model.healthy()
    thread = threading.Thread(target=tokens, args=(model, 1, request(1)))
    thread.start()
    assert stuck.wait(timeout=60)
    wait_until(lambda: not model.healthy())
    release.set()
    monkeypatch.setattr(steps, "step", step)
    thread.join()
    assert model.healthy()


def test_every_step_counts_as_progress_however_long_the_one_before_took(model, monkeypatch):
    """Health's stall check counts from the loop's last step: each step here is made to look an hour
    long, and the next one still finds the loop a moment since its last progress."""
    loop, steps = model.loop, model.loop.steps
    step, stalls = steps.step, list[float]()

    def an_hour_long(windows):
        stalls.append(loop.stalled_for())  # the loop's thread, a request in it: waited on
        loop.last_progress -= 3600
        return step(windows)

    monkeypatch.setattr(steps, "step", an_hour_long)
    assert tokens(model, 1, request(1)).shape[-1] == 50
    assert len(stalls) > 2 and max(stalls) < 60, stalls


def test_health_fails_when_the_loop_is_gone(model):
    model.loop.close()
    assert not model.healthy()


def test_a_loop_idle_for_long_is_not_taken_for_a_stuck_one_when_work_arrives(model, monkeypatch):
    """The stall is counted from when a window arrives, not from the loop's last step an hour ago."""
    monkeypatch.setitem(loading.STALLED_AFTER, "cpu", 30.0)
    model.loop.last_progress -= 3600  # an hour without a request
    decoder = model.loop.decoder
    slow_prefill, joining, release = held(decoder.prefill)
    monkeypatch.setattr(decoder, "prefill", slow_prefill)
    thread = threading.Thread(target=tokens, args=(model, 1, request(1)))
    thread.start()
    assert joining.wait(timeout=60)
    try:
        assert 0 < model.loop.stalled_for() < 30 and model.healthy()
    finally:
        release.set()
        thread.join()


class CudaError(torch.AcceleratorError):
    """An AcceleratorError as torch raises it from a failed CUDA call, with its error code."""

    def __init__(self, message: str, error_code: int | None = None):
        super().__init__(message)
        if error_code is not None:
            self.error_code = error_code


@pytest.mark.parametrize(
    "error, answers, sticky",
    [
        (CudaError("CUDA error: an illegal memory access was encountered", 700), True, True),
        (CudaError("CUDA error: operation not permitted when stream is capturing", 900), True, False),
        (CudaError("CUDA error: invalid configuration argument", 9), False, False),  # the code decides
        (CudaError("CUDA error: device-side assert triggered"), True, True),  # no code: the text
        (CudaError("CUDA error: something new"), True, False),  # no code, no known text: the device answers
        (CudaError("CUDA error: something new"), False, True),  # ... or does not
        (RuntimeError("CUDA error: an illegal memory access was encountered"), False, False),  # not a device's
    ],
)
def test_only_errors_that_leave_the_device_unusable_are_sticky(error, answers, sticky, monkeypatch):
    """Since torch 2.8 every failed CUDA call raises AcceleratorError: a capture that cannot run,
    a bad launch, are not the end of the device."""
    monkeypatch.setattr(faults, "device_answers", lambda device: answers)
    assert faults.is_sticky(error, "cuda") is sticky


def test_a_device_that_is_full_still_answers(monkeypatch):
    def full(*args, **kwargs):
        raise torch.OutOfMemoryError("CUDA out of memory")

    monkeypatch.setattr(torch, "ones", full)
    assert faults.device_answers("cpu")


def test_a_health_check_that_fails_for_another_reason_does_not_mark_the_device_failed(model, monkeypatch):
    monkeypatch.setattr(loading, "device_answers", lambda device: False)
    assert not model.healthy() and model.health.ok
    monkeypatch.undo()
    assert model.healthy()


def test_a_capture_that_fails_oddly_turns_graphs_off_and_the_loop_goes_on(graphed, replayed, monkeypatch, logs):
    """Not only RuntimeErrors: whatever a capture raises (but a sticky error), decoding goes on
    eagerly; health fails (after setup, the allocator may be left mid-capture)."""
    from musicgen_cog.model import steps as steps_module

    def odd(*args):
        raise TypeError("a capture gone wrong")

    monkeypatch.setattr(steps_module, "CudaGraphStep", odd)
    expected = tokens(graphed, 1, request(1))
    after_idle(graphed)
    assert not graphed.loop.steps.graphs_enabled and graphed.loop.alive
    assert torch.equal(tokens(graphed, 1, request(1)), expected)
    assert not graphed.healthy() and "TypeError: a capture gone wrong" in str(graphed.health.suspicion)


def test_a_capture_that_meets_a_sticky_error_stops_the_loop_and_fails_health(graphed, replayed, monkeypatch):
    """An error the device does not come back from is not a capture's own failure: here one whose
    text says nothing, on a device (stood in) that no longer runs a kernel when asked."""
    from musicgen_cog.model import steps as steps_module

    read = threading.Event()

    def lost(*args):
        read.wait(timeout=60)  # until the request has read its tokens out of the slot's state
        raise torch.AcceleratorError("CUDA error: an error no list names (injected)")

    monkeypatch.setattr(steps_module, "CudaGraphStep", lost)
    monkeypatch.setattr(faults, "device_answers", lambda device: device != "cpu")
    assert tokens(graphed, 1, request(1)).shape[-1] == 50  # eagerly; the capture comes once it has left
    read.set()
    with pytest.raises(DeviceFailed, match="an error no list names"):  # the loop stopped, with the reason
        graphed.loop.call(lambda: None).result(timeout=60)
    assert not graphed.health.ok
    wait_until(lambda: not graphed.loop.alive)  # its thread ends once it has answered what came


def test_a_capture_that_fails_after_others_succeeded_leaves_their_graphs_unreplayed(
    tiny_weights, replayed, monkeypatch
):
    """Graphs off means off: the graphs captured at warm-up are not replayed after a later capture
    failed (every capture shares the allocator the failure may have left mid-capture). Shown with
    SDPA's graphs, one per bucket of the cache, the spans eager steps read too."""
    from musicgen_cog.model import steps as steps_module
    from tests.model.conftest import ReplayedStep

    model = load_model(tiny_weights, device="cpu", slots=2)
    start_decoding_loop(model, 2, LADDER[2])
    assert model.loop is not None and model.loop.steps.decoder.attention == "sdpa"
    monkeypatch.setattr(ReplayedStep, "loop", model.loop)
    warm_up(model)
    batched, replays, replay = model.loop.steps, [], ReplayedStep.replay
    assert isinstance(batched, BatchedSteps)

    def counted(self):
        replays.append(self)
        return replay(self)

    monkeypatch.setattr(ReplayedStep, "replay", counted)
    expected = tokens(model, 1, request(1))
    assert len(batched.graphs) > 1 and replays  # stepped from its graphs

    def odd(*args):
        raise TypeError("a capture gone wrong")

    monkeypatch.setattr(steps_module, "CudaGraphStep", odd)
    model.loop.call(lambda: batched.pending.add(1)).result(timeout=60)  # a span met without a graph
    after_idle(model)  # the loop has gone round once since: it tried that capture
    assert not batched.graphs_enabled and batched.graphs
    replays.clear()
    assert torch.equal(tokens(model, 1, request(1)), expected) and replays == []


def test_a_capture_waits_while_mbd_draws_from_the_default_generators(graphed, replayed):
    """The capture must hold their lock; it does not wait for it (MBD holds it for seconds)."""
    batched = graphed.loop.steps
    tokens(graphed, 1, request(1))  # the cache is there, the graph captured once idle
    after_idle(graphed)
    batched.graphs.clear()  # as if that capture had run out of memory
    batched.pending.add(graphed.loop.decoder.cache_length())
    with randomness.holding_default_generators():  # as MBD does, in another request's thread
        for _ in range(2):  # the second call runs after an idle pass that tried the capture
            after_idle(graphed)
        assert not batched.graphs and batched.pending
    for _ in range(2):
        after_idle(graphed)
    assert batched.graphs and not batched.pending


def test_a_window_whose_result_runs_out_of_memory_fails_alone(model, monkeypatch, admit_together):
    """The message names the device, and what it held goes back to it: here a GPU, stood in (the
    loop's device said to be CUDA, the allocator's release recorded)."""
    steps = model.loop.steps
    monkeypatch.setattr(steps, "result", failing_for_the_marked(steps.result))
    released = on_a_stood_in_gpu(model, monkeypatch)
    admit_together(2)
    failed, succeeded = together(model, [(1, request(1, top_k=7)), (2, request(1))])
    assert isinstance(failed, OutOfMemory) and str(failed) == (
        "the GPU ran out of memory while handing back its tokens; try a shorter duration, or fewer requests at once"
    )
    assert isinstance(succeeded, torch.Tensor) and succeeded.shape[-1] == 50
    assert "cuda" in released and set(released) == {"cuda"}


def test_a_window_that_runs_out_of_memory_joining_the_batch_fails_alone_naming_the_device(
    model, monkeypatch, admit_together, logs
):
    """Its prefill ran short: what the allocator held goes back to the device, the message names it
    (a GPU, stood in) and the stage, the operator reads it, and the request beside it decodes."""
    steps = model.loop.steps
    monkeypatch.setattr(steps, "admit", failing_for_the_marked(steps.admit))
    released = on_a_stood_in_gpu(model, monkeypatch)
    admit_together(2)
    failed, succeeded = together(model, [(1, request(1, top_k=7)), (2, request(1))])
    message = (
        "the GPU ran out of memory while joining the batch (the prefill of its conditions); try a shorter "
        "duration, or fewer requests at once"
    )
    assert isinstance(failed, OutOfMemory) and str(failed) == message
    assert isinstance(succeeded, torch.Tensor) and succeeded.shape[-1] == 50
    assert released == ["cuda"]
    errors = [r.getMessage() for r in logs.records if r.levelname == "ERROR"]
    assert errors == [f"a request failed while joining the batch: {message}"]


def test_a_window_that_fails_joining_does_not_hold_back_the_one_queued_behind_it(model, monkeypatch, admit_together):
    """Both were queued for the same step boundary: the one behind the failure joins there too,
    before the batch beside them steps again."""
    steps, events = model.loop.steps, list[tuple[str, object]]()
    admit, step = failing_for_the_marked(steps.admit, lambda: ValueError("its own numbers")), steps.step

    def joining(window):
        events.append(("admit", window.sampling == MARKED))
        return admit(window)

    def stepping(windows):
        events.append(("step", len(windows)))
        return step(windows)

    monkeypatch.setattr(steps, "admit", joining)
    monkeypatch.setattr(steps, "step", stepping)
    with ThreadPoolExecutor(3) as pool:
        admit_together(1)
        decoding = pool.submit(tokens, model, 1, request(3))
        wait_until(lambda: ("step", 1) in events)
        admit_together(2)  # the loop waits at its next boundary until both are queued, the failing one first
        queued, _ = record_submissions(model.loop, monkeypatch)
        failing = pool.submit(tokens, model, 2, request(1, top_k=7))
        wait_until(lambda: len(queued) == 1)
        behind = pool.submit(tokens, model, 3, request(1))
        with pytest.raises(ValueError, match="its own numbers"):
            failing.result(timeout=60)
        assert behind.result(timeout=60).shape[-1] == 50 and decoding.result(timeout=60).shape[-1] == 150
    failed_at = events.index(("admit", True))
    assert events[failed_at + 1] == ("admit", False), events[failed_at - 1 : failed_at + 3]


def with_window_failures(step, failure):
    """`step`, whose answer also fails each window `failure(window, windows)` names (an error, or None):
    a window's own failure in a step, as a per-slot draw reports one."""

    def call(windows):
        failed = step(windows)
        for window in windows:
            if (error := failure(window, windows)) is not None:
                failed[window] = error
        return failed

    return call


def test_a_draw_that_runs_out_of_memory_fails_its_request_alone_naming_the_device(model, monkeypatch, admit_together):
    """A GPU, stood in (the loop's device said to be CUDA): the message names it."""
    steps = model.loop.steps
    short = with_window_failures(steps.step, lambda window, _: oom() if window.sampling == MARKED else None)
    monkeypatch.setattr(steps, "step", short)
    on_a_stood_in_gpu(model, monkeypatch)
    admit_together(2)
    failed, succeeded = together(model, [(1, request(1, top_k=7)), (2, request(1))])
    assert isinstance(failed, OutOfMemory) and str(failed) == (
        "the GPU ran out of memory while sampling; try a shorter duration, or fewer requests at once"
    )
    assert isinstance(succeeded, torch.Tensor) and succeeded.shape[-1] == 50


def test_a_request_finishing_in_the_step_where_anothers_draw_met_a_sticky_error_fails_too(model, monkeypatch):
    """Its last token came from a device that no longer works (its text says nothing, and the device,
    stood in, no longer runs a kernel when asked): it is not served, and health fails."""
    queued, changed = record_submissions(model.loop, monkeypatch)
    steps, both_came = model.loop.steps, list[bool]()

    def lost_as_one_finishes(window, windows):
        if not both_came:  # the longer request is in every step, from the first on
            with changed:
                both_came.append(changed.wait_for(lambda: len(queued) == 2, timeout=60))
        if not window.finished and any(w.finished for w in windows):
            return torch.AcceleratorError("CUDA error: an error no list names (injected)")
        return None

    monkeypatch.setattr(steps, "step", with_window_failures(steps.step, lost_as_one_finishes))
    monkeypatch.setattr(faults, "device_answers", lambda device: device != "cpu")
    longer, finishing = together(model, [(1, request(3)), (2, request(1))])
    assert both_came == [True]
    assert isinstance(finishing, DeviceFailed) and isinstance(longer, DeviceFailed), (longer, finishing)
    assert not model.health.ok


def test_a_step_that_cannot_be_tried_again_fails_its_requests_at_its_first_out_of_memory(
    model, monkeypatch, admit_together
):
    """A compiled step may have written the slots' state before it ran out (`retry_safe` false): not
    run again, its requests fail, the message naming the device (a GPU, stood in); the next succeeds."""
    steps = model.loop.steps
    flaky = failing(steps.step, times=1)
    monkeypatch.setattr(steps, "step", flaky)
    monkeypatch.setattr(type(steps), "retry_safe", False)
    monkeypatch.setattr(model.loop, "_device", "cuda")
    admit_together(2)
    outcome = together(model, [(1, request(1)), (2, request(1))])
    assert [str(o) for o in outcome] == [
        "the GPU ran out of memory while decoding; try a shorter duration, or fewer requests at once"
    ] * 2
    assert len(flaky.calls) == 1
    assert tokens(model, 3, request(1)).shape[-1] == 50


def test_a_call_made_while_a_closing_loop_frees_its_cache_is_refused_not_left_unanswered(tiny_weights, monkeypatch):
    """The loop refuses what comes from its last sweep on, before it frees the cache (held here by
    the test), not only once its thread has ended."""
    loaded = load_model(tiny_weights, device="cpu", slots=2)
    loop = loaded.loop
    assert loop is not None
    freeing, release, free = threading.Event(), threading.Event(), loop.steps.release

    def held_while_freeing() -> None:
        freeing.set()
        release.wait(timeout=60)
        free()

    monkeypatch.setattr(loop.steps, "release", held_while_freeing)
    closing = threading.Thread(target=loop.close)
    closing.start()
    try:
        assert freeing.wait(timeout=60) and loop.alive
        with pytest.raises(RuntimeError, match=r"^the decoding loop is closed$"):
            loop.call(lambda: None)
    finally:
        release.set()
        closing.join(timeout=60)


def test_a_call_that_passed_the_closed_check_as_the_loop_closed_is_answered_not_lost(tiny_weights, monkeypatch):
    """The check and the queueing are one step to the loop's last sweep: a call between the two
    (held there by the test while the loop closes) is swept and refused, not queued after the sweep."""
    loaded = load_model(tiny_weights, device="cpu", slots=2)
    loop = loaded.loop
    assert loop is not None
    checked, incoming, thread = threading.Event(), loop._incoming, loop._thread

    class HeldBeforeQueueing:
        def put(self, item) -> None:
            if item is not None:  # the test's call, not close()'s mark
                checked.set()
                thread.join(timeout=2)  # time for the loop's last sweep, were it not held off
            incoming.put(item)

        def __getattr__(self, name: str):
            return getattr(incoming, name)

    monkeypatch.setattr(loop, "_incoming", HeldBeforeQueueing())
    with ThreadPoolExecutor(1) as pool:
        calling = pool.submit(loop.call, lambda: "ran")
        assert checked.wait(timeout=60)
        loop.close()
        answer = calling.result(timeout=60)
    with pytest.raises(RuntimeError, match=r"^the decoding loop was closed$"):
        answer.result(timeout=10)


def test_a_closed_loop_answers_every_call_and_window_it_still_held(model):
    """Nothing hangs on a loop that stops: a call waiting for it to be idle, or a window."""
    loop = model.loop
    blocking, started, gate = held(lambda: None)
    blocked = loop.call(blocking)
    assert started.wait(timeout=60)
    waiting = loop.call(lambda: None, when_idle=True)
    with ThreadPoolExecutor(1) as pool:
        window = pool.submit(tokens, model, 30, request(1))
        wait_until(lambda: loop._incoming.qsize() == 2)  # the call and the window, handed in
        loop._incoming.put(None)  # close, while the first call still runs
        gate.set()
        blocked.result(timeout=60)
        for answer in (waiting, window):
            with pytest.raises(RuntimeError, match=r"^the decoding loop was closed$"):
                answer.result(timeout=60)
    assert not loop.alive or loop._thread.join(timeout=60) is None
