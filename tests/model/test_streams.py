"""The order of hand-offs between a request's stream and the decoding loop's, with CUDA's streams
and events stood in for by RecordingStreams (tests/model/conftest.py), which records each call
and the thread that made it.

A request writes its window on its own stream and marks an event; the loop waits for that event
before anything reads the window, and keeps the window's tensors alive for its own stream. The
loop marks an event after writing a finished window's tokens; the request waits for it, and
keeps the tokens alive for its stream, before reading them.
"""

from __future__ import annotations

import contextlib
from concurrent.futures import ThreadPoolExecutor

import pytest

from musicgen_cog.model.decoding_path import BATCHED, PER_SLOT
from musicgen_cog.model.generation import GenerationRequest, generate
from musicgen_cog.model.loading import load_model, start_decoding_loop
from musicgen_cog.model.randomness import RequestRandomness
from tests.model.conftest import RecordingStreams
from tests.model.test_decoding_loop import request

LOOP = "decoding-loop"


class Recorded(RecordingStreams):
    def request(self):
        self.record("request stream")
        return contextlib.nullcontext()

    def loop(self):
        self.record("loop stream")
        return contextlib.nullcontext()


@pytest.fixture(params=["per-slot", "batched"])
def recorded(request, tiny_weights, monkeypatch):
    model = load_model(tiny_weights, device="cpu", slots=2)
    model.streams = streams = Recorded()
    start_decoding_loop(model, 2, BATCHED if request.param == "batched" else PER_SLOT)
    loop = model.loop
    assert loop is not None
    submit, prefill, result = loop.submit, loop.decoder.prefill, loop.steps.result

    def recorded_submit(window):
        streams.record("submit", window)
        return submit(window)

    def recorded_prefill(window):
        streams.record("prefill", window)
        return prefill(window)

    def recorded_result(window):
        tokens = result(window)
        streams.record("result", (window, tokens))
        return tokens

    monkeypatch.setattr(loop, "submit", recorded_submit)
    monkeypatch.setattr(loop.decoder, "prefill", recorded_prefill)
    monkeypatch.setattr(loop.steps, "result", recorded_result)
    return model, streams


def test_each_hand_off_waits_for_the_event_of_the_stream_that_wrote_it(recorded):
    model, streams = recorded
    specs = [(1, request(1)), (2, request(1, "melody"))]
    with ThreadPoolExecutor(2) as pool:
        done = [
            pool.submit(generate, model, GenerationRequest(**spec), RequestRandomness(seed, "cpu"))
            for seed, spec in specs
        ]
        assert all(d.result().shape[-1] == 32000 for d in done)
    calls = streams.calls
    at = {id(call): index for index, call in enumerate(calls)}
    assert calls[0] == (LOOP, "loop stream", None)  # the loop entered its own stream first
    submits = [call for call in calls if call[1] == "submit"]
    assert len(submits) == 2
    for thread, _, window in submits:
        mine = [call for call in calls if call[0] == thread]
        assert mine[0][1] == "request stream"  # the request's work went to its own stream
        # the request marked the event after writing its window and before handing it in
        marked = next(c for c in mine if c[1] == "mark" and c[2] == window.tensors_ready)
        assert at[id(marked)] < at[id(next(c for c in mine if c[1] == "submit"))]
        # the loop waited for that event, and kept the window's tensors alive, before the prefill read them
        waited = next(c for c in calls if c == (LOOP, "wait", window.tensors_ready))
        kept = next(c for c in calls if c[:2] == (LOOP, "keep alive") and c[2] == [id(t) for t in window.tensors()])
        prefilled = next(c for c in calls if c[:2] == (LOOP, "prefill") and c[2] is window)
        assert at[id(marked)] < at[id(waited)] < at[id(kept)] < at[id(prefilled)]
        # the loop marked an event after writing the result; the request waited for it, then kept it alive
        resulted = next(c for c in calls if c[:2] == (LOOP, "result") and c[2][0] is window)
        result_marked = next(c for c in calls if c == (LOOP, "mark", window.result_ready))
        result_waited = next(c for c in mine if c == (thread, "wait", window.result_ready))
        result_kept = next(c for c in mine if c == (thread, "keep alive", [id(resulted[2][1])]))
        assert at[id(resulted)] < at[id(result_marked)] < at[id(result_waited)] < at[id(result_kept)]


def test_the_batched_step_lets_the_host_run_ahead_by_the_lookahead_only(tiny_weights):
    from musicgen_cog.model.steps import LOOKAHEAD

    model = load_model(tiny_weights, device="cpu", slots=2)
    model.streams = streams = Recorded()
    start_decoding_loop(model, 2, BATCHED)
    generate(model, GenerationRequest(**request(1)), RequestRandomness(1, "cpu"))
    throttles = [call for call in streams.calls if call[1] == "throttle"]
    assert throttles and all(call == (LOOP, "throttle", LOOKAHEAD) for call in throttles)
