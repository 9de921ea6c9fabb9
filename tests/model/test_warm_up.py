"""Warm-up makes every step graph a request can need before the first request, and leaves no trace.

CPU models, the GPU's all-slots step with graphs 'captured' as ReplayedStep (tests/model/conftest.py).
"""

from __future__ import annotations

import pytest
import torch

from musicgen_cog.model.fast_decode import KV_BUCKET
from musicgen_cog.model.loading import load_model
from musicgen_cog.model.warm_up import warm_up
from tests.model.test_decoding_loop import request, tokens


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
    assert done.requests == 3  # text, continuation, melody: this checkpoint has a chroma conditioner


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
def test_after_warm_up_no_request_captures_anything(graphed, replayed, spec):
    warm_up(graphed)
    captured, cache = len(replayed), graphed.loop.decoder.cache_length()
    tokens(graphed, 5, spec)
    assert len(replayed) == captured and graphed.loop.decoder.cache_length() == cache


def test_a_request_after_warm_up_gives_the_tokens_it_gives_on_a_cold_model(tiny_weights):
    cold = load_model(tiny_weights, device="cpu", slots=2)
    expected = tokens(cold, 7, request(2, "melody"))
    warm = load_model(tiny_weights, device="cpu", slots=2)
    warm_up(warm)
    assert torch.equal(tokens(warm, 7, request(2, "melody")), expected)
