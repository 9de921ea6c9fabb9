"""Warm-up makes every step graph a request can need before the first request, and leaves no trace.

CPU models, the GPU's all-slots step with graphs 'captured' as ReplayedStep (tests/model/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from musicgen_cog.model import warm_up as warm_up_module
from musicgen_cog.model.fast_decode import KV_BUCKET
from musicgen_cog.model.loading import load_model
from musicgen_cog.model.warm_up import warm_up
from tests.model.test_decoding_loop import after_idle, request, tokens


@pytest.mark.parametrize("attention", ["rowwise", "sdpa"])
def test_warm_up_captures_the_step_for_every_shape_it_can_take(graphed, replayed, attention):
    """Row-wise attention: one graph for every step; SDPA: one per bucket of the cache."""
    graphed.loop.decoder.attention = attention
    done = warm_up(graphed)
    cache = graphed.loop.decoder.cache_length()
    window = int(graphed.musicgen.max_duration * graphed.musicgen.frame_rate)
    assert cache > window  # a whole window fits beside a prefix
    spans = [cache] if attention == "rowwise" else list(range(KV_BUCKET, cache + 1, KV_BUCKET))
    assert sorted(graphed.loop.steps.graphs) == spans
    assert done.graphs == len(replayed) == len(spans)
    assert all(held and active == 0 for *_, held, active in replayed)  # generators held, nothing decoding


@pytest.mark.parametrize(
    "spec",
    [
        pytest.param(request(8), id="text-8s"),
        pytest.param(request(8, "melody", top_p=0.9), id="melody-8s"),
        pytest.param(request(8, "continuation", temperature=0.0), id="continuation-8s"),
        pytest.param(request(30), id="text-30s", marks=pytest.mark.slow),
        pytest.param(request(33, "melody"), id="melody-33s-windowed", marks=pytest.mark.slow),
    ],
)
def test_after_warm_up_no_request_captures_anything_or_moves_the_cache(graphed, replayed, spec):
    warm_up(graphed)
    decoder = graphed.loop.decoder
    captured, cache = len(replayed), [keys.data_ptr() for keys, _ in decoder.caches]
    tokens(graphed, 5, spec)
    after_idle(graphed)
    assert len(replayed) == captured and [keys.data_ptr() for keys, _ in decoder.caches] == cache


@pytest.mark.parametrize("device", ["cuda", "cpu"])
def test_warm_up_runs_each_mode_for_a_gpu_and_a_few_steps_on_a_cpu(graphed, device, monkeypatch):
    """A GPU: a second of each mode the checkpoint has (this one has a chroma conditioner). A CPU,
    where nothing is captured: a melody request and a continuation of 5 frames each, for their
    first uses of T5, demucs and the codec."""
    monkeypatch.setattr(type(graphed), "device", property(lambda _: device))
    requests = warm_up_module._requests(graphed)
    seconds = {"cuda": warm_up_module.GPU_SECONDS, "cpu": warm_up_module.CPU_SECONDS}[device]
    assert all(r.duration == seconds for r in requests)
    modes = [("melody" if r.melody else "continuation" if r.continue_from else "text") for r in requests]
    assert modes == (["text", "continuation", "melody"] if device == "cuda" else ["melody", "continuation"])


def test_warm_up_lines_say_they_are_the_warm_up(graphed, logs):
    warm_up(graphed)
    lines = [r.getMessage() for r in logs.records if r.name.startswith("musicgen_cog")]
    assert lines and all(line.startswith("warm-up: ") for line in lines)
    assert any(line.startswith("warm-up: done in ") for line in lines)
    tokens(graphed, 1, request(1))
    assert not logs.records[-1].getMessage().startswith("warm-up: ")


def test_a_request_after_warm_up_gives_the_tokens_it_gives_on_a_cold_model(tiny_weights):
    cold = load_model(tiny_weights, device="cpu", slots=2)
    expected = tokens(cold, 7, request(2, "melody"))
    warm = load_model(tiny_weights, device="cpu", slots=2)
    warm_up(warm)
    assert torch.equal(tokens(warm, 7, request(2, "melody")), expected)
