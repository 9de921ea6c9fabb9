"""The shared decoding loop: requests join and leave at step boundaries, and none changes another.

Each request runs `generate_tokens` in a thread of its own, as predictions do on the server.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import torch

from musicgen_cog.audio.decoding import Audio
from musicgen_cog.model import faults
from musicgen_cog.model.decoding_loop import GenerationCancelled
from musicgen_cog.model.decoding_path import BATCHED
from musicgen_cog.model.generation import GenerationRequest, generate_tokens
from musicgen_cog.model.loading import load_model, start_decoding_loop
from musicgen_cog.model.randomness import RequestRandomness
from musicgen_cog.model.sampling import Sampling
from musicgen_cog.model.steps import BatchedSteps
from tests.helpers import tone
from tests.model.conftest import RecordingStreams, record_submissions

SLOTS = 3
CLIP = Audio(torch.from_numpy(tone(3.0, 32000, 1)).T.contiguous(), 32000)


def request(seconds: float, mode: str = "text", cancelled: threading.Event | None = None, **sampling) -> dict:
    rule = {"top_k": 250, "top_p": 0.0, "temperature": 1.0, "cfg_coef": 3.0, **sampling}
    return dict(
        prompt=f"{mode} {seconds}",
        duration=seconds,
        sampling=Sampling(**rule),
        melody=CLIP if mode == "melody" else None,
        continue_from=Audio(CLIP.samples[:, :16000], 32000) if mode == "continuation" else None,
        cancelled=cancelled or threading.Event(),
    )


MIXED = [  # more requests than slots: the last waits for a free one
    (1, request(2, "text")),
    (2, request(2, "melody", top_p=0.9, top_k=0)),
    (3, request(1.5, "continuation", temperature=0.0)),
    (4, request(1, "text", top_k=0, cfg_coef=1.0)),
]


def tokens(model, seed: int, spec: dict) -> torch.Tensor:
    return generate_tokens(model, GenerationRequest(**spec), RequestRandomness(seed, "cpu"))


def together(model, requests: list[tuple[int, dict]]) -> list:
    """Run every request at once, each in its own thread; results or exceptions, in order."""
    start = threading.Barrier(len(requests))

    def one(seed_and_spec):
        start.wait()
        try:
            return tokens(model, *seed_and_spec)
        except Exception as exc:
            return exc

    with ThreadPoolExecutor(len(requests)) as pool:
        return list(pool.map(one, requests))


@pytest.fixture(scope="module", params=["per-slot", "all-slots"])
def model(request, tiny_weights):
    """A CPU model with SLOTS slots, stepping per slot (a CPU's default) or every slot at once (a
    GPU's, run on a CPU): both give a request the same numbers alone and in any company."""
    loaded = load_model(tiny_weights, device="cpu", slots=SLOTS)
    if request.param == "all-slots":
        start_decoding_loop(loaded, SLOTS, BATCHED)
    return loaded


@pytest.fixture
def steps_seen(model, monkeypatch):
    """The number of windows in each step the loop takes."""
    seen: list[int] = []
    loop = model.loop
    step = loop._step

    def counted():
        seen.append(len(loop._active))
        step()

    monkeypatch.setattr(loop, "_step", counted)
    return seen


def test_a_seeded_request_gives_the_same_tokens_alone_and_in_company(model, steps_seen, admit_together):
    alone = [tokens(model, seed, spec) for seed, spec in MIXED]
    assert max(steps_seen) == 1
    steps_seen.clear()
    admit_together(len(MIXED))
    company = together(model, MIXED)
    assert max(steps_seen) == SLOTS  # decoded together, never more than the slots: the last one waited
    for mine, reference in zip(company, alone, strict=True):
        assert torch.equal(mine, reference)


EIGHT = 8
SEEDED = (42, request(2, "melody", top_k=40, temperature=1.1))
COMPANY = [  # every mode, duration and sampling rule
    request(1, "text"),
    request(2.5, "continuation", top_p=0.9, top_k=0),
    request(1.5, "melody", temperature=0.0),
    request(3, "text", top_k=0, cfg_coef=1.0),
    request(1, "continuation"),
    request(2, "melody", top_p=0.5),
    request(2.5, "text", top_k=5, temperature=0.7),
]


@pytest.fixture(scope="module")
def eight_slots(tiny_weights):
    """The batched step over 8 slots (the server's default), on a CPU; and the seeded request's
    tokens when it is alone (slot 0, the other seven free)."""
    loaded = load_model(tiny_weights, device="cpu", slots=EIGHT)
    start_decoding_loop(loaded, EIGHT, BATCHED)
    return loaded, tokens(loaded, *SEEDED)


# (others, when the seeded request joins): 1 to 7 others; slots 0 to 7 (first: 0; last: `others`)
JOINS = [(others, "last") for others in range(1, EIGHT)] + [(EIGHT - 1, "first"), (4, "middle")]


@pytest.mark.parametrize("others, joins", JOINS, ids=[f"{o}-others-{j}" for o, j in JOINS])
def test_a_seeded_request_repeats_beside_one_to_seven_others_in_any_slot(eight_slots, others, joins, monkeypatch):
    """The batched path: the seeded request starts alone in slot 0 and the others join it, or it
    joins them 20 steps after they began (in the middle of them, or after all of them: the
    highest slot in use). The others, of every mode, length and rule, leave while it decodes.
    Who joins when is held by the test, not left to the threads' timing."""
    model, alone = eight_slots
    loop, company = model.loop, [(100 + i, spec) for i, spec in enumerate(COMPANY[:others])]
    before = {"first": 0, "middle": others // 2, "last": others}[joins]
    randomness, slots, steps_taken = RequestRandomness(SEEDED[0], "cpu"), [], [0]
    holds = [(0, before), (20, before + 1), (25, others + 1)]  # (at step, until this many are queued)
    queued, changed = record_submissions(loop, monkeypatch)
    admit, step = loop.steps.admit, loop.steps.step

    def recorded_admit(window):
        if window.generator is randomness.generator:
            slots.append(window.slot)
        return admit(window)

    def held_step(windows):
        with changed:
            for at, wanted in holds:
                if steps_taken[0] >= at:
                    changed.wait_for(lambda: len(queued) >= wanted)  # noqa: B023 (used at once)
        steps_taken[0] += 1
        return step(windows)

    monkeypatch.setattr(loop.steps, "admit", recorded_admit)
    monkeypatch.setattr(loop.steps, "step", held_step)
    with ThreadPoolExecutor(others + 1) as pool:
        earlier = [pool.submit(tokens, model, *spec) for spec in company[:before]]
        wait_until(lambda: len(queued) == before)
        mine = pool.submit(generate_tokens, model, GenerationRequest(**SEEDED[1]), randomness)
        wait_until(lambda: bool(slots))
        later = [pool.submit(tokens, model, *spec) for spec in company[before:]]
        assert torch.equal(mine.result(), alone)
        assert all(f.result().shape[-1] > 0 for f in earlier + later)
    assert slots == [before]


def after_idle(model) -> None:
    """Return once `model`'s loop has been idle (and so tried the captures it was missing)."""
    model.loop.call(lambda: None).result(timeout=60)


def wait_until(condition, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.005)


def test_a_request_joins_a_running_batch_and_leaves_it_when_done(model, steps_seen):
    long, short = (5, request(10)), (6, request(1))
    alone = tokens(model, *long)
    steps_seen.clear()
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(tokens, model, *long)
        wait_until(lambda: len(steps_seen) > 20)
        second = pool.submit(tokens, model, *short)
        assert torch.equal(first.result(), alone) and second.result().shape[-1] == 50
    # the long one alone, then both, then the long one alone again
    assert steps_seen[0] == 1 and 2 in steps_seen and steps_seen[-1] == 1
    assert steps_seen.index(2) > 20 and len(steps_seen) > steps_seen.index(2) + steps_seen.count(2)


def test_a_cancelled_request_leaves_at_once_and_the_others_go_on_untouched(model, admit_together):
    cancel = threading.Event()
    doomed, kept = (7, request(20, cancelled=cancel)), (8, request(2))
    alone = tokens(model, *kept)
    admit_together(2)
    with ThreadPoolExecutor(2) as pool:
        cancelled = pool.submit(tokens, model, *doomed)
        survivor = pool.submit(tokens, model, *kept)
        wait_until(lambda: len(model.loop._active) == 2)
        cancel.set()
        with pytest.raises(GenerationCancelled):
            cancelled.result(timeout=10)
        assert torch.equal(survivor.result(), alone)
    wait_until(lambda: not model.loop._active)
    assert sorted(model.loop._free_slots) == list(range(SLOTS))


def test_a_request_waiting_for_a_slot_can_be_cancelled(model, admit_together):
    cancel = threading.Event()
    busy = [(20 + i, request(4)) for i in range(SLOTS)]
    waiting = (30, request(1, cancelled=cancel))
    admit_together(SLOTS + 1)
    with ThreadPoolExecutor(SLOTS + 1) as pool:
        running = [pool.submit(tokens, model, *spec) for spec in busy]
        cancelled = pool.submit(tokens, model, *waiting)
        wait_until(lambda: len(model.loop._waiting) == 1 and len(model.loop._active) == SLOTS)
        cancel.set()
        with pytest.raises(GenerationCancelled):
            cancelled.result(timeout=10)
        assert all(r.running() for r in running)  # it left without waiting for a slot
        assert all(r.result().shape[-1] == 200 for r in running)


def test_company_far_along_the_cache_does_not_change_a_requests_tokens(model, monkeypatch):
    """The all-slots step attends as far as the furthest request: a short request beside a long
    one meets other attended lengths than alone, and must not see it in its tokens. The long one's
    first step past two buckets waits for the short one, which then decodes beside it throughout."""
    short, long = (15, request(3)), (16, request(14))
    alone = tokens(model, *short)
    loop, seen = model.loop, []
    step = loop._step
    queued, changed = record_submissions(loop, monkeypatch)

    def held_step():
        if len(queued) == 1 and queued[0].position > 2 * 256:
            with changed:
                assert changed.wait_for(lambda: len(queued) == 2, timeout=60), "the short request never came"
        seen.append({queued.index(w): w.position for w in loop._active})  # 0: the long one, 1: the short
        step()

    monkeypatch.setattr(loop, "_step", held_step)
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(tokens, model, *long)
        wait_until(lambda: bool(queued) and queued[0].position > 2 * 256)
        assert torch.equal(pool.submit(tokens, model, *short).result(), alone)
        first.result()
    beside = [positions for positions in seen if 1 in positions]
    assert len(beside) >= 150 and all(positions.get(0, 0) > 2 * 256 for positions in beside)


def test_a_request_that_fails_fails_alone(model):
    good = (9, request(2))
    broken = (10, request(2, top_k=model.musicgen.lm.card + 1))  # torch.topk refuses: past the codebook
    alone = tokens(model, *good)
    failed, succeeded = together(model, [broken, good])
    assert isinstance(failed, RuntimeError | ValueError) and "out of range" in str(failed)
    assert torch.equal(succeeded, alone)


def test_a_failed_shared_step_fails_the_requests_in_it_and_the_loop_goes_on(model, monkeypatch, admit_together, logs):
    batched = isinstance(model.loop.steps, BatchedSteps)
    shared = model.loop.steps if batched else model.loop.decoder
    name = "_decode_step" if batched else "step_slot"
    real, failures = getattr(shared, name), list[int]()

    def fails_once(*args):
        if not failures:
            failures.append(1)
            raise RuntimeError("CUDA error: an illegal memory access was encountered")
        return real(*args)

    monkeypatch.setattr(shared, name, fails_once)
    admit_together(2)  # both in the first step, the one that fails
    outcome = together(model, [(11, request(1)), (12, request(1))])
    assert all(isinstance(o, RuntimeError) and "illegal memory access" in str(o) for o in outcome)
    errors = [r for r in logs.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in errors] == ["a decoding step failed"] and errors[0].exc_info
    assert tokens(model, 13, request(1)).shape[-1] == 50


def test_a_call_runs_between_two_steps_of_a_request_and_answers_with_its_result_or_error(model, steps_seen):
    """`call` without `when_idle` does not wait for the windows in flight to leave; its caller gets
    what the work returned, or the exception it raised."""
    with ThreadPoolExecutor(1) as pool:
        decoding = pool.submit(tokens, model, 17, request(5))
        wait_until(lambda: len(steps_seen) > 5)
        assert model.loop.call(lambda: len(model.loop._active)).result(timeout=60) == 1  # the request still in
        with pytest.raises(ZeroDivisionError):
            model.loop.call(lambda: 1 / 0).result(timeout=60)
        assert decoding.result().shape[-1] == 250


def test_a_loop_is_waited_on_only_while_windows_are_in_it_or_handed_in(model):
    """What health's stall check reads: with nothing in flight nothing stalls, however long since
    the last step; a window handed in while the loop's thread is held up is waiting on it."""
    loop, release = model.loop, threading.Event()
    loop.last_progress -= 3600  # an hour without a request
    assert loop.stalled_for() == 0.0
    busy = threading.Event()

    def holding() -> bool:
        busy.set()
        return release.wait(timeout=60)

    held = loop.call(holding)  # the loop's thread, busy with it
    assert busy.wait(timeout=60)
    try:
        with ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(tokens, model, 18, request(1))
            wait_until(lambda: not loop._incoming.empty())
            assert loop.stalled_for() > 0
            release.set()
            assert held.result(timeout=60) and waiting.result().shape[-1] == 50
    finally:
        release.set()
    assert loop.stalled_for() == 0.0


@pytest.mark.parametrize(
    "error", ["an illegal memory access was encountered", "an error no list names"], ids=["by-its-text", "by-asking"]
)
def test_a_sticky_error_in_a_call_fails_its_caller_and_the_devices_health(tiny_weights, monkeypatch, error):
    """The call's caller gets the error; health fails with it, and the loop stops. Sticky by its
    text, or, where the text says nothing, because the device (stood in) no longer runs a kernel."""
    loaded = load_model(tiny_weights, device="cpu", slots=2)
    assert loaded.loop is not None
    monkeypatch.setattr(faults, "device_answers", lambda device: device != "cpu")

    def lost():
        raise torch.AcceleratorError(f"CUDA error: {error}")

    with pytest.raises(torch.AcceleratorError, match=error):
        loaded.loop.call(lost).result(timeout=60)
    wait_until(lambda: not loaded.health.ok)  # the caller is answered first, then health
    assert f"AcceleratorError: CUDA error: {error}" in str(loaded.health.error())
    wait_until(lambda: not loaded.loop.alive)


def test_a_fault_of_the_loops_own_fails_the_requests_it_held_with_it_and_the_loop_goes_on(
    tiny_weights, monkeypatch, logs
):
    """Not a step's failure nor a sticky one: the windows in the loop fail with the error itself,
    the log says the loop failed (with its traceback), and the next request decodes. A loop of its
    own (the loop's thread starts in this test: mutmut counts it as this test's)."""
    model = load_model(tiny_weights, device="cpu", slots=2)
    assert model.loop is not None
    loop, drop = model.loop, model.loop._drop_cancelled
    faulted: list[int] = []

    def fault_once():
        if loop._active and not faulted:
            faulted.append(1)
            raise RuntimeError("a fault of the loop's own (injected)")
        drop()

    monkeypatch.setattr(loop, "_drop_cancelled", fault_once)
    with pytest.raises(RuntimeError, match=r"^a fault of the loop's own \(injected\)$"):
        tokens(model, 20, request(1))
    failures = [r for r in logs.records if r.levelname == "ERROR"]
    assert [r.getMessage() for r in failures] == ["the decoding loop failed"] and failures[0].exc_info
    assert tokens(model, 20, request(1)).shape[-1] == 50


def test_a_sticky_error_met_by_another_stage_stops_the_idle_loop_which_frees_its_cache(tiny_weights):
    """The loop sees the device's failure when it next goes round (here after a call it was busy
    with), fails what it holds, stops, and gives back its cache's memory."""
    loaded = load_model(tiny_weights, device="cpu", slots=2)
    assert loaded.loop is not None and tokens(loaded, 21, request(1)).shape[-1] == 50
    busy, release = threading.Event(), threading.Event()

    def busy_until_released() -> bool:
        busy.set()
        return release.wait(timeout=60)

    held = loaded.loop.call(busy_until_released)
    assert busy.wait(timeout=60)
    loaded.health.failed(torch.AcceleratorError("CUDA error: an illegal memory access was encountered"))
    release.set()
    assert held.result(timeout=60)
    wait_until(lambda: not loaded.loop.alive)
    assert loaded.loop.decoder.caches == []


def test_a_loop_never_closed_does_not_keep_the_process_from_exiting(tiny_weights):
    """Setup can fail after the loop started (the proof, the health check): the interpreter must
    still exit, so the loop's thread is a daemon (a loop made here, where mutmut sees it made)."""
    model = load_model(tiny_weights, device="cpu", slots=2)
    assert model.loop is not None and model.loop._thread.daemon is True


def test_the_loop_hands_each_window_over_through_the_streams_it_was_given(tiny_weights):
    """On a GPU the loop's stream waits for the event the request recorded after writing its window,
    and records one after writing its result, which the request's stream waits for (here the
    streams record their calls)."""
    loaded = load_model(tiny_weights, device="cpu", slots=2)
    loaded.streams = streams = RecordingStreams()
    start_decoding_loop(loaded, 2, BATCHED)
    tokens(loaded, 19, request(1))
    by_the_loop = [(what, detail) for thread, what, detail in streams.calls if thread == "decoding-loop"]
    by_the_request = [(what, detail) for thread, what, detail in streams.calls if thread != "decoding-loop"]
    written = next(event for what, event in by_the_request if what == "mark")
    assert by_the_loop[0] == ("wait", written) and by_the_loop[1][0] == "keep alive"
    answered = next(event for what, event in by_the_loop if what == "mark")
    assert ("wait", answered) in by_the_request


def test_a_request_is_timed_from_its_slot_to_its_last_token(model):
    """What its prediction's metrics report as its wait for a slot and its decoding."""
    generation = GenerationRequest(**request(1))
    generate_tokens(model, generation, RequestRandomness(20, "cpu"))
    assert {"slot_wait", "decoding"} <= set(generation.times.seconds) and generation.times.seconds["decoding"] > 0


def test_a_closed_loop_frees_its_cache_and_a_new_one_takes_over(tiny_weights):
    loaded = load_model(tiny_weights, device="cpu", slots=2)
    first = tokens(loaded, 14, request(1))
    old = loaded.loop
    assert old is not None
    start_decoding_loop(loaded, slots=4)
    assert old.decoder.caches == [] and not old._thread.is_alive()
    assert loaded.loop is not None and loaded.loop.slots == 4 and torch.equal(tokens(loaded, 14, request(1)), first)
    with pytest.raises(RuntimeError, match="the decoding loop is closed"):
        old.submit(object())  # type: ignore[arg-type]  # refused before it is even looked at
