"""One generation: text, melody or continuation, decoded by EnCodec or MultiBand Diffusion.

The steps are audiocraft's (`MusicGen.generate*`, `_generate_tokens`, `LMModel.generate`),
reassembled so that a request's windows are decoded in the loop it shares with the others:
beyond the model's 30 s window it extends in windows, each prompted with the last 12 s of
tokens, the melody looped. Without the shared loop (an architecture our step does not
reproduce) each window runs audiocraft's own `LMModel.generate`, one request at a time.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from typing import Any

import torch
from audiocraft.data.audio_utils import convert_audio
from audiocraft.modules.conditioners import ClassifierFreeGuidanceDropout, ConditioningAttributes, WavCondition

from ..audio.decoding import Audio
from ..errors import InputError
from .conditions import check_prompt_tokens
from .decoding_loop import DecodingLoop, GenerationCancelled
from .loading import LoadedModel
from .progress import StepProgress, planned_steps
from .randomness import RequestRandomness
from .sampling import Sampling
from .timings import StageTimes
from .window import Window

log = logging.getLogger(__name__)
EXTEND_STRIDE = 18.0  # audiocraft's default: each extra window keeps 12 s of context
REPORT_INTERVAL = 0.5  # s between looks at the step counter while the shared loop decodes


@dataclass(frozen=True)
class GenerationRequest:
    prompt: str | None
    duration: float  # seconds of new audio
    sampling: Sampling
    melody: Audio | None = None  # chroma condition (melody mode)
    continue_from: Audio | None = None  # audio prompt (continuation mode)
    multi_band_diffusion: bool = False
    cancelled: threading.Event = field(default_factory=threading.Event, compare=False)
    times: StageTimes = field(default_factory=StageTimes, compare=False)  # filled as the stages end


def generate(model: LoadedModel, request: GenerationRequest, randomness: RequestRandomness) -> torch.Tensor:
    """Generate audio [channels, samples] at `model.musicgen.sample_rate` for `request`, on this
    thread's own CUDA stream; out of memory in any stage fails it alone, a sticky device error
    anywhere (it may surface at any later sync) marks the device failed (faults.py)."""
    with model.streams.request(), torch.no_grad(), model.health.stage("generating", model.device):
        tokens = generate_tokens(model, request, randomness)
        _stop_if_cancelled(request)
        if request.multi_band_diffusion:
            log.info("decoding %d frames with MultiBand Diffusion", tokens.shape[-1])
            with model.health.stage("decoding with MultiBand Diffusion", model.device), request.times.measure("mbd"):
                mbd = model.mbd()
                with randomness.torch_default():  # its noise continues the request's stream, as if alone
                    wav = mbd.tokens_to_wav(tokens)
        else:
            stage = model.health.stage("decoding the audio (EnCodec)", model.device)
            with model.codec_lock, stage, request.times.measure("audio_decoding"):
                wav = model.musicgen.generate_audio(tokens)
        wav = wav[0].float().cpu()
    if not torch.isfinite(wav).all():
        raise RuntimeError("the model produced NaN or infinite samples; try again with another seed")
    return wav


def generate_tokens(model: LoadedModel, request: GenerationRequest, randomness: RequestRandomness) -> torch.Tensor:
    """The tokens [1, K, frames] of `request` (a continuation's prompt included), as audiocraft's
    `MusicGen.generate`, `generate_with_chroma` or `generate_continuation` would give them."""
    musicgen = model.musicgen
    total = request.duration
    descriptions: list[Any] = [request.prompt]  # audiocraft conditions on no text for None
    check_prompt_tokens(musicgen.lm, request.prompt)  # before any work: the KV cache holds so many
    stage = model.health.stage("preparing the conditions", model.device)
    with torch.no_grad(), stage, request.times.measure("conditioning"):
        if request.continue_from is not None:
            clip = request.continue_from
            _check_continuation_prompt(clip, musicgen.max_duration)
            total += clip.seconds
            log.info("generating %.2f s continuing %.2f s of input_audio", request.duration, clip.seconds)
            prompt = convert_audio(clip.samples[None], clip.sample_rate, musicgen.sample_rate, musicgen.audio_channels)
            with model.codec_lock:  # the codec's encoder: one request at a time, as its decoder
                attributes, prompt_tokens = musicgen._prepare_tokens_and_attributes(descriptions, prompt)
        elif request.melody is not None:
            melody = _melody_used(request.melody, total, musicgen.max_duration)
            log.info("separating melody stems (htdemucs) and generating %.2f s", total)
            converted = convert_audio(melody.samples, melody.sample_rate, musicgen.sample_rate, musicgen.audio_channels)
            attributes, prompt_tokens = musicgen._prepare_tokens_and_attributes(descriptions, None, [converted])
        else:
            log.info("generating %.2f s from text", total)
            attributes, prompt_tokens = musicgen._prepare_tokens_and_attributes(descriptions, None)
    prompt_frames = 0 if prompt_tokens is None else prompt_tokens.shape[-1]
    progress = StepProgress(planned_steps(musicgen, total, prompt_frames, EXTEND_STRIDE))
    with torch.no_grad():
        tokens = _Decoding(model, request, attributes, randomness, progress).tokens(prompt_tokens, total)
    progress.finish()
    request.times.steps += progress.done
    return tokens


@dataclass
class _Decoding:
    """One request's token decoding: what each of its windows needs."""

    model: LoadedModel
    request: GenerationRequest
    attributes: list[ConditioningAttributes]
    randomness: RequestRandomness
    progress: StepProgress

    def tokens(self, prompt_tokens: torch.Tensor | None, duration: float) -> torch.Tensor:
        """Tokens [1, K, frames] for `duration` s (prompt included): one window, or audiocraft's windows."""
        musicgen = self.model.musicgen
        rate, window = musicgen.frame_rate, musicgen.max_duration
        total_frames = int(duration * rate)
        if duration <= window:
            return self.window(prompt_tokens, total_frames)
        ref_wav = self.attributes[0].wav["self_wav"]
        pieces = [] if prompt_tokens is None else [prompt_tokens]
        stride = int(rate * EXTEND_STRIDE)
        offset = 0
        while offset + (0 if prompt_tokens is None else prompt_tokens.shape[-1]) < total_frames:
            time_offset = offset / rate
            frames = int(min(duration - time_offset, window) * rate)
            wav_length = int(ref_wav.length.item())
            if wav_length > 0:  # the melody, looped if it is shorter than the music
                start = int(time_offset * musicgen.sample_rate)
                target = int(window * musicgen.sample_rate)
                positions = torch.arange(start, start + target, device=musicgen.device)
                self.attributes[0].wav["self_wav"] = WavCondition(
                    ref_wav[0][..., positions % wav_length],
                    torch.full_like(ref_wav[1], target),
                    [musicgen.sample_rate] * ref_wav[0].size(0),
                    [None],
                    [0.0],
                )
            tokens = self.window(prompt_tokens, frames)
            pieces.append(tokens if prompt_tokens is None else tokens[:, :, prompt_tokens.shape[-1] :])
            prompt_tokens = tokens[:, :, stride:]
            offset += stride
        return torch.cat(pieces, dim=-1)

    def window(self, prompt: torch.Tensor | None, frames: int) -> torch.Tensor:
        """Tokens [1, K, frames] of one window after `prompt` [1, K, T] (kept at its start)."""
        _stop_if_cancelled(self.request)
        if self.model.loop is None:
            return self._in_audiocrafts_loop(prompt, frames)
        return self._in_shared_loop(self.model.loop, prompt, frames)

    def _in_shared_loop(self, loop: DecodingLoop, prompt: torch.Tensor | None, frames: int) -> torch.Tensor:
        musicgen, lm = self.model.musicgen, self.model.musicgen.lm
        health, device = self.model.health, self.model.device
        # demucs draws its shifts from python's random
        stage, timed = health.stage("conditioning (T5, stems)", device), self.request.times.measure("conditioning")
        with self.randomness.python_random(), self.model.autocast(), stage, timed:
            conditions = condition_tensors(lm, self.attributes)
        if prompt is None:
            prompt = torch.zeros((1, lm.num_codebooks, 0), dtype=torch.long, device=musicgen.device)
        window = Window.laid_out(
            lm,
            prompt,
            frames,
            conditions,
            self.request.sampling,
            generator=self.randomness.generator,
            on_step=self.progress.advance,
            cancelled=self.request.cancelled,
            tensors_ready=self.model.streams.mark(),  # the loop's stream waits for what this one wrote
        )
        done = loop.submit(window)
        while True:
            try:
                filled = done.result(timeout=REPORT_INTERVAL)
                break
            except FutureTimeout:
                self.progress.report()
                if not loop.alive:
                    raise RuntimeError("the decoding loop stopped") from None
        self.progress.report()
        if window.admitted_at is not None:  # decoding: from its slot to its last token, window by window
            self.request.times.add("slot_wait", window.admitted_at - window.submitted_at)
            self.request.times.add("decoding", time.monotonic() - window.admitted_at)
        self.model.streams.wait(window.result_ready)  # written on the loop's stream
        self.model.streams.keep_alive([filled])
        codes = window.tokens(filled)[..., :frames]
        if (codes < 0).any():  # the batched step marks a window whose logits were NaN or infinite
            raise RuntimeError("the model produced NaN or infinite logits; try again with another seed")
        assert (codes <= lm.card).all(), "every token of the window was generated"
        return codes

    def _in_audiocrafts_loop(self, prompt: torch.Tensor | None, frames: int) -> torch.Tensor:
        """audiocraft's own `LMModel.generate`: one request at a time, drawing from global
        generators that hold this request's streams meanwhile."""
        model, request, progress = self.model, self.request, self.progress

        def step_done(_done: int, _total: int) -> None:
            _stop_if_cancelled(request)  # audiocraft's streaming state is reset on the way out
            progress.advance()
            progress.report()

        while not model.exclusive.acquire(timeout=REPORT_INTERVAL):  # another request holds audiocraft's loop
            _stop_if_cancelled(request)
        sampling = request.sampling
        with contextlib.ExitStack() as held:
            held.callback(model.exclusive.release)
            held.enter_context(self.randomness.python_random())
            held.enter_context(self.randomness.torch_default())
            held.enter_context(model.musicgen.autocast)
            held.enter_context(request.times.measure("decoding"))
            return model.musicgen.lm.generate(
                prompt,
                self.attributes,
                callback=step_done,
                max_gen_len=frames,
                use_sampling=True,
                temp=sampling.temperature,
                top_k=sampling.top_k,
                top_p=sampling.top_p,
                cfg_coef=sampling.cfg_coef,
                two_step_cfg=False,
            )


def condition_tensors(lm: Any, attributes: list[ConditioningAttributes]) -> dict:
    """The condition tensors of the CFG pair of `attributes` (conditional, then with every condition
    dropped), as audiocraft's `LMModel.generate` computes them."""
    pair = attributes + ClassifierFreeGuidanceDropout(p=1.0)(attributes)
    return lm.condition_provider(lm.condition_provider.tokenize(pair))


def _stop_if_cancelled(request: GenerationRequest) -> None:
    if request.cancelled.is_set():
        raise GenerationCancelled()


def _melody_used(melody: Audio, total: float, window: float) -> Audio:
    """The part of `melody` that can condition `total` seconds: one window, or every window's reach.

    With the checkpoint's `match_len_on_eval: false` audiocraft prepends chroma for the whole
    melody, so a 10-minute file would add ~4,700 prefix tokens to every step; melodies up to
    one window long are passed whole, as the hosted model does.
    """
    keep = int((window if total <= window else total + window) * melody.sample_rate)
    return melody if melody.samples.shape[-1] <= keep else Audio(melody.samples[:, :keep], melody.sample_rate)


def _check_continuation_prompt(audio: Audio, window: float) -> None:
    longest = window - 1
    if audio.seconds > longest:
        raise InputError(
            "input_audio",
            f"slice for continuation is {audio.seconds:.2f} s; it must be at most "
            f"{longest:g} s so the model's {window:g} s window has room to continue it. "
            "Use continuation_start and continuation_end to choose a shorter part.",
        )
