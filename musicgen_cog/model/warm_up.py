"""Warm-up in setup(): the first request is served as fast as the tenth.

Before the server says READY, one short request of each mode the checkpoint supports runs
through `generate` (lazy initialisation of T5, demucs, the codec and the GPU's libraries; the
KV cache's allocation; with MUSICGEN_COMPILE, the compile), then the decode step is captured
for every shape it can take (`BatchedSteps.capture_all`: one CUDA graph per count of slots run
and bucket of the cache). The warm-up requests draw from a generator of their own and write no file.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass

import torch

from ..audio.decoding import Audio
from .generation import GenerationRequest, generate
from .loading import LoadedModel
from .randomness import RequestRandomness
from .sampling import Sampling
from .steps import BatchedSteps

log = logging.getLogger(__name__)
SECONDS = 1.0  # of music per warm-up request: short; capture_all covers the lengths it never reaches


@dataclass(frozen=True)
class WarmUp:
    requests: int
    graphs: int  # decode-step graphs held after warm-up
    seconds: float


def warm_up(model: LoadedModel) -> WarmUp:
    """Run a short request of each mode on `model`, then capture every step graph it can need."""
    started = time.perf_counter()
    requests = _requests(model)
    for request in requests:
        generate(model, request, RequestRandomness(0, model.musicgen.device))
    graphs = 0
    if model.loop is not None and isinstance(model.loop.steps, BatchedSteps):
        graphs = model.loop.call(model.loop.steps.capture_all).result()
    done = WarmUp(len(requests), graphs, time.perf_counter() - started)
    log.info("warmed up in %.1f s: %d requests, %d decode-step graphs", done.seconds, done.requests, done.graphs)
    return done


def _requests(model: LoadedModel) -> list[GenerationRequest]:
    sampling = Sampling(top_k=250, top_p=0.0, temperature=1.0, cfg_coef=3.0)
    rate = model.musicgen.sample_rate
    time_axis = torch.arange(int(SECONDS * rate)) / rate
    tone = Audio((0.3 * torch.sin(2 * math.pi * 440.0 * time_axis))[None], rate)
    requests = [
        GenerationRequest("warm-up", SECONDS, sampling),
        GenerationRequest("warm-up", SECONDS, sampling, continue_from=tone),
    ]
    if model.supports_melody:
        requests.append(GenerationRequest("warm-up", SECONDS, sampling, melody=tone))
    return requests
