"""The concurrency limit, and the threads predictions run in: context carried, cancellation honoured."""

import asyncio
import contextvars
import threading

import pytest

from musicgen_cog.api.concurrency import CONCURRENCY_ENV, DEFAULT_CONCURRENCY, RequestThreads, concurrency_limit


def test_the_limit_is_the_default_unless_cog_max_concurrency_says_otherwise(monkeypatch):
    monkeypatch.delenv(CONCURRENCY_ENV, raising=False)
    assert concurrency_limit() == DEFAULT_CONCURRENCY == 8
    monkeypatch.setenv(CONCURRENCY_ENV, "16")
    assert concurrency_limit() == 16


@pytest.mark.parametrize("value", ["0", "-2", "eight", "1.5"])
def test_a_bad_limit_names_the_variable_and_what_it_accepts(monkeypatch, value):
    monkeypatch.setenv(CONCURRENCY_ENV, value)
    with pytest.raises(ValueError, match=f"COG_MAX_CONCURRENCY must be a whole number of at least 1, got '{value}'"):
        concurrency_limit()


PREDICTION: contextvars.ContextVar[str | None] = contextvars.ContextVar("prediction", default=None)  # as coglet


def test_work_runs_in_a_thread_of_its_own_with_the_callers_context():
    seen = []

    def work(cancelled):
        seen.append((threading.current_thread().name, PREDICTION.get(), cancelled.is_set()))
        return "done"

    async def prediction():
        PREDICTION.set("p-1")
        return await RequestThreads(2).run(work)

    assert asyncio.run(prediction()) == "done"
    ((name, context, cancelled),) = seen
    assert name.startswith("prediction") and context == "p-1" and not cancelled


def test_cancelling_sets_the_event_and_waits_until_the_work_has_stopped():
    started, stopped = threading.Event(), threading.Event()

    def work(cancelled):
        started.set()
        assert cancelled.wait(timeout=10), "the cancellation never reached the work"
        stopped.set()

    async def cancel_mid_way():
        task = asyncio.ensure_future(RequestThreads(1).run(work))
        await asyncio.to_thread(started.wait, 10)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        return stopped.is_set()

    assert asyncio.run(cancel_mid_way())  # the coroutine ended only after the work did
