"""predict.py's Predictor with faults injected from outside, for the real server's fault tests.

coglet loads it as `COG_PREDICT_TYPE_STUB=tests/fault_injection.py:Predictor` (the schema stays
predict.py's). After the real setup, it patches library and model functions to raise what a
device raises when it runs out of memory or fails, for requests carrying a marker, so that
nothing in the serving code knows about tests. Markers (`MARKERS`) are inputs no other test uses.
MUSICGEN_TEST_FAULT adds a fault of the decoding path: `sampler` (before setup, which must prove
the path and step down from it) or `capture` (after setup: graphs whose capture fails).
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any

import torch
from audiocraft.models.multibanddiffusion import MultiBandDiffusion
from audiocraft.modules.conditioners import ChromaStemConditioner

import predict
from musicgen_cog.audio.writing import OutputFolder
from musicgen_cog.model import loading, proof, sampling, steps
from musicgen_cog.model.decoding_loop import DecodingLoop
from musicgen_cog.model.fast_decode import SlotDecoder
from musicgen_cog.model.steps import BatchedSteps, PerSlotSteps

SAMPLE_RATE = 32000
MARKERS = {
    "conditioning": "a melody of exactly 2.5 s",
    "admission": "top_k 7",
    "step, once": "top_k 8 (joins the batch only beside another request)",
    "codec": "3 s of audio",
    "mbd": "multi_band_diffusion",
    "writing": "4 s of audio",
    "sticky": "top_k 9",
}
FREE_MEMORY_ENV = "MUSICGEN_TEST_FREE_MEMORY"  # bytes the planner sees free, to size fewer slots
FAULT_ENV = "MUSICGEN_TEST_FAULT"  # a fault of the decoding path: "sampler" or "capture"


def oom() -> torch.OutOfMemoryError:
    return torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB (injected by the test)")


def patch(owner: Any, name: str, wrap: Any) -> None:
    setattr(owner, name, wrap(getattr(owner, name)))


def install() -> None:
    retried: set[int] = set()

    def stems(real):
        def stemmed(self, wav, sample_rate):
            if wav.shape[-1] == int(2.5 * SAMPLE_RATE):
                raise oom()
            return real(self, wav, sample_rate)

        return stemmed

    def prefill(real):
        def prefilled(self, window):
            if window.sampling.top_k == 7:
                raise oom()
            return real(self, window)

        return prefilled

    def admission(real):
        def admitted(self):
            # the window of "step, once" joins the batch only beside another one: the step that runs
            # out of memory is shared (the loop comes back here every 10 ms while it waits)
            if any(w.sampling.top_k == 8 for w in self._waiting) and len(self._active) + len(self._waiting) < 2:
                time.sleep(0.01)
                return
            real(self)

        return admitted

    def step(real):
        def stepped(self, windows):
            marked = [w for w in windows if w.sampling.top_k in (8, 9)]
            if any(w.sampling.top_k == 9 for w in marked):
                raise torch.AcceleratorError("CUDA error: an illegal memory access was encountered (injected)")
            if marked and id(marked[0]) not in retried:
                retried.add(id(marked[0]))
                company = sorted(w.sampling.top_k for w in windows)
                print(f"fault injection: a step of windows with top_k {company} ran out of memory", file=sys.stderr)
                raise oom()
            return real(self, windows)

        return stepped

    def codec(real):
        def decoded(self, tokens):
            if tokens.shape[-1] == 3 * 50:
                raise oom()
            return real(self, tokens)

        return decoded

    def mbd(real):
        def diffused(self, tokens):
            raise oom()

        return diffused

    def writing(real):
        def written(self, wav, sample_rate, output_format, stem):
            if wav.shape[-1] == 4 * SAMPLE_RATE:
                raise MemoryError()
            return real(self, wav, sample_rate, output_format, stem)

        return written

    patch(ChromaStemConditioner, "_get_stemmed_wav", stems)
    patch(SlotDecoder, "prefill", prefill)
    patch(DecodingLoop, "_admit", admission)
    patch(PerSlotSteps, "step", step)
    patch(BatchedSteps, "step", step)
    from audiocraft.models import MusicGen

    patch(MusicGen, "generate_audio", codec)
    patch(MultiBandDiffusion, "tokens_to_wav", mbd)
    patch(OutputFolder, "write", writing)


def ranked_from_the_wrong_end(sample_rows: Any) -> Any:
    """`sample_rows` (the batched step's sampler) ranking the tokens least probable first."""
    return lambda logits, rule, uniforms: sample_rows(-logits, rule, uniforms)


class Uncapturable(steps.CudaGraphStep):
    """A CUDA graph whose capture fails for a reason other than memory."""

    def _capture(self, step: Any, stream: Any) -> None:
        raise RuntimeError("CUDA error: operation not permitted when stream is capturing (injected)")


class Predictor(predict.Predictor):
    def setup(self, weights: str | None = None) -> None:
        free = os.environ.get(FREE_MEMORY_ENV)
        if free:
            loading.free_memory = lambda device: int(free)  # the planner's view of the device
        fault = os.environ.get(FAULT_ENV)
        if fault == "sampler":
            steps.sample_rows = proof.sample_rows = ranked_from_the_wrong_end(sampling.sample_rows)
        super().setup(weights)
        install()  # after the warm-up, which must succeed
        if fault == "capture":  # the batched step turns to graphs: the loop's next idle pass captures
            steps.CudaGraphStep = Uncapturable  # type: ignore[misc]
            loop = self.model.loop
            assert loop is not None and isinstance(loop.steps, BatchedSteps)
            loop.steps.graphs_enabled = True
