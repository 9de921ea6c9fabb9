"""Warm-up in setup(): the first request is served as fast as the tenth, and its lines say so.

On a GPU, one short request of each mode the checkpoint supports runs through `generate` (lazy
initialisation of T5, demucs, the codec and the GPU's libraries; the KV cache's allocation; with
MUSICGEN_COMPILE, the compile), then the decode step is captured for every shape it can take
(`BatchedSteps.capture_all`), when no window decodes. On a CPU nothing is captured: a few steps
of a melody request (T5, demucs, the codec, the LM's first products) and of a continuation (the
codec's encoder) are enough; decoding a whole second of a 1.5 B model there takes minutes. The
warm-up requests draw from a generator of their own, write no file, and every line logged meanwhile
starts with "warm-up: ".
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from ..audio.decoding import Audio
from .generation import GenerationRequest, generate
from .loading import LoadedModel
from .randomness import RequestRandomness
from .sampling import Sampling
from .steps import BatchedSteps

log = logging.getLogger(__name__)
PACKAGE_LOGGER = "musicgen_cog"
GPU_SECONDS = 1.0  # of music per warm-up request on a GPU: short; capture_all covers the lengths it never reaches
CPU_SECONDS = 0.1  # on a CPU: 5 frames, 8 steps
PREFIX = "warm-up: "


@dataclass(frozen=True)
class WarmUp:
    requests: int
    graphs: int  # decode-step graphs held after warm-up
    seconds: float


def warm_up(model: LoadedModel) -> WarmUp:
    """Run the warm-up requests on `model`, then capture every step graph it can need."""
    started = time.perf_counter()
    with _lines_marked():
        requests = _requests(model)
        for request in requests:
            generate(model, request, RequestRandomness(0, model.musicgen.device))
        graphs = 0
        if model.loop is not None and isinstance(model.loop.steps, BatchedSteps):
            graphs = model.loop.call(model.loop.steps.capture_all, when_idle=True).result()
        done = WarmUp(len(requests), graphs, time.perf_counter() - started)
        log.info("done in %.1f s: %d requests, %d decode-step graphs", done.seconds, done.requests, done.graphs)
    return done


def _requests(model: LoadedModel) -> list[GenerationRequest]:
    sampling = Sampling(top_k=250, top_p=0.0, temperature=1.0, cfg_coef=3.0)
    rate = model.musicgen.sample_rate
    time_axis = torch.arange(rate) / rate
    tone = Audio((0.3 * torch.sin(2 * math.pi * 440.0 * time_axis))[None], rate)  # 1 s
    if model.device == "cpu":
        first = GenerationRequest("warm-up", CPU_SECONDS, sampling, melody=tone if model.supports_melody else None)
        return [first, GenerationRequest("warm-up", CPU_SECONDS, sampling, continue_from=tone)]
    requests = [
        GenerationRequest("warm-up", GPU_SECONDS, sampling),
        GenerationRequest("warm-up", GPU_SECONDS, sampling, continue_from=tone),
    ]
    if model.supports_melody:
        requests.append(GenerationRequest("warm-up", GPU_SECONDS, sampling, melody=tone))
    return requests


class _Marked(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not str(record.msg).startswith(PREFIX):  # one record, several handlers
            record.msg = PREFIX + str(record.msg)
        return True


@contextlib.contextmanager
def _lines_marked() -> Iterator[None]:
    """Every line of the package's handlers (the server's log) starts with PREFIX meanwhile."""
    marker, handlers = _Marked(), list(logging.getLogger(PACKAGE_LOGGER).handlers)
    for handler in handlers:
        handler.addFilter(marker)
    try:
        yield
    finally:
        for handler in handlers:
            handler.removeFilter(marker)
