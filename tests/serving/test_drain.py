"""The predictions in flight and the drain: refusals, waiting for the last one, cutting the rest."""

import asyncio
import gc
import threading

import pytest

from musicgen_cog.serving import drain as drain_module
from musicgen_cog.serving.drain import DRAIN_ENV, REFUSED, InFlight, ShuttingDown, drain_seconds


@pytest.mark.parametrize("value, seconds", [(None, 300), ("", 300), ("42.5", 42.5), ("0.5", 0.5), (" 0 ", 0)])
def test_the_grace_period_is_300_s_unless_the_variable_says_otherwise(monkeypatch, value, seconds):
    """0 is a grace period too: predictions in flight are cut at once."""
    monkeypatch.delenv(DRAIN_ENV, raising=False)
    if value is not None:
        monkeypatch.setenv(DRAIN_ENV, value)
    assert drain_seconds() == seconds


@pytest.mark.parametrize("value", ["-1", "soon", "nan"])
def test_a_bad_grace_period_names_the_variable(monkeypatch, value):
    monkeypatch.setenv(DRAIN_ENV, value)
    expected = f"MUSICGEN_DRAIN_SECONDS must be a number of seconds, 0 or more, got '{value}'"
    with pytest.raises(ValueError, match=expected):
        drain_seconds()


async def until(condition) -> None:
    while not condition():
        await asyncio.sleep(0.01)


async def predict(in_flight: InFlight, work) -> str:
    """A prediction as predict.py runs one: admitted, its blocking `work(cancelled)` in a thread."""
    with in_flight.admit() as admission:
        return await admission.outlast(asyncio.to_thread(work, admission.cancelled))


def test_a_drain_waits_for_the_predictions_in_flight_and_refuses_new_ones():
    counts: list[int] = []
    in_flight = InFlight(on_change=counts.append)
    release = threading.Event()

    async def scenario():
        try:
            running = [asyncio.ensure_future(predict(in_flight, lambda c: release.wait(30) and "file")) for _ in "ab"]
            await until(lambda: in_flight.count == 2)
            drained = asyncio.ensure_future(asyncio.to_thread(in_flight.drain, 60))
            await until(lambda: in_flight.draining)
            with pytest.raises(ShuttingDown, match=REFUSED), in_flight.admit():
                pass
            assert not drained.done()  # still waiting for the two
        finally:
            release.set()  # the threads end now, also when the test has failed
        return await asyncio.gather(*running), await drained

    files, result = asyncio.run(scenario())
    assert files == ["file", "file"]
    assert (result.finished, result.cut, result.abandoned, result.refused) == (2, 0, 0, 1)
    assert counts[:2] == [1, 2] and counts[-1] == 0 and in_flight.count == 0


def test_predictions_still_running_at_the_deadline_are_stopped_and_fail_with_shutting_down():
    in_flight, stops = InFlight(), []

    def work(cancelled: threading.Event) -> str:
        stops.append(cancelled)
        assert cancelled.wait(timeout=30), "the drain never stopped the prediction"
        raise RuntimeError("cancelled at a step boundary")  # as the pipeline's GenerationCancelled

    async def scenario():
        try:
            running = asyncio.ensure_future(predict(in_flight, work))
            await until(lambda: in_flight.count == 1)
            result = await asyncio.to_thread(in_flight.drain, 0.1)
            message = r"still running 0.1 s after shutdown began \(MUSICGEN_DRAIN_SECONDS\)"
            with pytest.raises(ShuttingDown, match=message) as cut:
                await running
        finally:
            for stop in stops:  # a drain that never stopped it: the thread ends now all the same
                stop.set()
        return result, cut.value.__cause__

    result, cause = asyncio.run(scenario())
    assert (result.finished, result.cut, result.abandoned) == (0, 1, 0) and in_flight.count == 0
    assert str(cause) == "cancelled at a step boundary"  # the drain stopped its work


@pytest.mark.parametrize("during", [True, False], ids=["during a drain", "before it"])
def test_cut_now_ends_the_grace_period_at_once(during):
    """A second stop signal (or SIGINT) mid-drain, or before the drain's thread has begun."""
    in_flight = InFlight()

    def work(cancelled: threading.Event) -> str:
        assert cancelled.wait(timeout=30), "the prediction was never cut"
        raise RuntimeError("cancelled at a step boundary")

    async def scenario():
        running = asyncio.ensure_future(predict(in_flight, work))
        await until(lambda: in_flight.count == 1)
        if not during:
            in_flight.cut_now()
        drained = asyncio.ensure_future(asyncio.to_thread(in_flight.drain, 60))  # a grace it must not wait out
        await until(lambda: in_flight.draining)
        if during:
            in_flight.cut_now()
        with pytest.raises(ShuttingDown) as cut:
            await running
        assert str(cut.value) == (
            "this server shut down before the prediction finished: it was told to stop at once; send it again"
        )
        return await drained

    result = asyncio.run(scenario())
    assert (result.finished, result.cut, result.abandoned) == (0, 1, 0) and in_flight.count == 0


def test_a_prediction_that_fails_for_its_own_reason_during_a_drain_keeps_its_error():
    """Only what the drain cut fails with ShuttingDown: a prediction that fails by itself while the
    server drains tells its client its real error, and counts as finished."""
    in_flight = InFlight()
    fail = threading.Event()

    def work(cancelled: threading.Event) -> str:
        assert fail.wait(timeout=30), "the test never let the prediction fail"
        raise ValueError("top_k is out of range")

    async def scenario():
        try:
            running = asyncio.ensure_future(predict(in_flight, work))
            await until(lambda: in_flight.count == 1)
            drained = asyncio.ensure_future(asyncio.to_thread(in_flight.drain, 60))
            await until(lambda: in_flight.draining)
        finally:
            fail.set()
        with pytest.raises(ValueError, match="top_k is out of range"):
            await running
        return await drained

    result = asyncio.run(scenario())
    assert (result.finished, result.cut, result.abandoned) == (1, 0, 0) and in_flight.count == 0


def test_a_prediction_that_will_not_stop_is_answered_without_its_work(monkeypatch):
    monkeypatch.setattr(drain_module, "CUT_WAIT_SECONDS", 0.1)
    in_flight = InFlight()
    stuck = threading.Event()  # as a long MBD stage, which sees the cut only when it ends

    async def scenario():
        try:
            running = asyncio.ensure_future(predict(in_flight, lambda cancelled: stuck.wait(30)))
            await until(lambda: in_flight.count == 1)
            result = await asyncio.to_thread(in_flight.drain, 0.1)
            with pytest.raises(ShuttingDown, match=r"still running 0\.1 s after shutdown began"):
                await running
        finally:
            stuck.set()  # let the thread end before the loop closes
        return result

    result = asyncio.run(scenario())
    assert (result.finished, result.cut, result.abandoned) == (0, 1, 1) and in_flight.count == 0


def test_work_the_drain_gave_up_on_that_fails_later_is_reported_to_no_one(monkeypatch):
    """Its client was answered long ago: the failure of the work left running must not reach the
    event loop's handler ("Task exception was never retrieved" in the server's log)."""
    monkeypatch.setattr(drain_module, "CUT_WAIT_SECONDS", 0.1)
    in_flight, stuck, reported = InFlight(), threading.Event(), []

    def work(cancelled: threading.Event) -> str:
        stuck.wait(30)
        raise RuntimeError("MultiBand Diffusion failed after the drain gave up on it")

    async def scenario():
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context["message"]))
        try:
            running = asyncio.ensure_future(predict(in_flight, work))
            await until(lambda: in_flight.count == 1)
            await asyncio.to_thread(in_flight.drain, 0.1)
            with pytest.raises(ShuttingDown):
                await running
            left = [task for task in asyncio.all_tasks() if task is not asyncio.current_task()]
        finally:
            stuck.set()
        await until(lambda: all(task.done() for task in left))  # failed, not cancelled by asyncio.run

    asyncio.run(scenario())
    gc.collect()  # an exception nobody retrieved is reported when its task is collected
    assert reported == []


def test_a_drain_ends_even_if_a_prediction_never_leaves(monkeypatch):
    """A prediction whose event loop is frozen never hears the cut nor the drain giving up: the drain
    still ends, CUT_WAIT_SECONDS after giving up, and says so (the process then stops regardless)."""
    monkeypatch.setattr(drain_module, "CUT_WAIT_SECONDS", 0.1)
    in_flight, admitted, thaw = InFlight(), threading.Event(), threading.Event()

    async def frozen():
        with in_flight.admit():
            admitted.set()
            thaw.wait(30)  # blocks its event loop: nothing scheduled on it runs
            thawed.set()

    thawed = threading.Event()
    frozen_loop = threading.Thread(target=asyncio.run, args=(frozen(),), daemon=True)
    frozen_loop.start()
    try:
        assert admitted.wait(timeout=30)
        drained = in_flight.drain(0.1)
        assert not thawed.is_set()  # it ended without the prediction
    finally:
        thaw.set()
        frozen_loop.join(timeout=30)
    assert (drained.finished, drained.cut, drained.abandoned) == (0, 1, 1)


def test_cancelling_a_prediction_cancels_its_work_and_waits_for_it():
    in_flight = InFlight()
    seen = []

    async def work():
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(0.01)  # still cleaning up: the prediction must wait for this
            seen.append("work cancelled and done")
            raise

    async def prediction():
        with in_flight.admit() as admission:
            await admission.outlast(work())

    async def scenario():
        running = asyncio.ensure_future(prediction())
        await until(lambda: in_flight.count == 1)
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    asyncio.run(scenario())
    assert seen == ["work cancelled and done"] and in_flight.count == 0


def test_a_failure_of_its_own_is_not_turned_into_shutting_down():
    in_flight = InFlight()

    async def prediction():
        with in_flight.admit():
            raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        asyncio.run(prediction())
    assert in_flight.count == 0
