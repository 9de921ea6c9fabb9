"""How the decoding loop takes a step: slot by slot (CPU), or every slot in one captured graph (GPU).

- `PerSlotSteps`: each slot's CFG pair runs alone at its filled length, then samples with its
  request's generator: exactly audiocraft's numbers and draws (oneDNN picks other kernels for
  other row counts, so rows of several requests are not stacked on a CPU).
- `BatchedSteps`: one fixed-shape function runs the rows of every slot, busy or free, guides,
  samples and writes each slot's next tokens, all from device tensors (tokens, positions,
  offsets, sequences, sampling rules, uniforms drawn at admission from the request's generator).
  Its shapes never change with company, and each row attends to its own filled length
  (`attention.py`): a request's numbers are the same alone and beside any others, in any slot.
  A free slot's rows stay at position 0, so they read one position of the cache. On a GPU a step
  is one CUDA graph replay, and the host only counts: it never reads a step's numbers, and runs
  at most LOOKAHEAD steps ahead.
"""

from __future__ import annotations

import logging
import typing as tp
from collections.abc import Callable
from dataclasses import dataclass, fields
from functools import partial

import torch

from .conditions import longest_prefix
from .decoding_path import DecodingPath
from .fast_decode import KV_BUCKET, SlotDecoder
from .faults import CAPTURING, CaptureFailed, is_out_of_memory, is_sticky, release_cached_memory
from .randomness import holding_default_generators
from .sampling import RowSampling, guided, guided_rows, sample, sample_rows
from .streams import NoStreams
from .window import UNKNOWN_TOKEN, Window

if tp.TYPE_CHECKING:
    from audiocraft.models import MusicGen

log = logging.getLogger(__name__)
# Steps the host may launch before the device has finished them: enough to keep the device fed,
# few enough that progress (counted on the host) is at most this far ahead of the music.
LOOKAHEAD = 4


class PerSlotSteps:
    """Steps that reproduce audiocraft's arithmetic exactly, one slot at a time."""

    def __init__(self, decoder: SlotDecoder):
        self.decoder = decoder
        self._guided: dict[int, torch.Tensor] = {}  # by slot: the logits its last token was drawn from

    def admit(self, window: Window) -> None:
        """Prefill `window`'s prefix into its slot and write its first generated tokens."""
        logits, filled = self.decoder.prefill(window)
        window.offset, window.position = window.first_step, filled
        self._sample_into(window, logits)

    def step(self, windows: list[Window]) -> dict[Window, Exception]:
        """One token for every window; a failure of the forward fails all (raised), a failure
        of one window's sampling only that window (returned)."""
        logits = {w: self.decoder.step_slot(w.slot, w.last_tokens(), w.position) for w in windows}
        failed = {}
        for window in windows:
            window.position += 1
            try:
                self._sample_into(window, logits[window])
            except Exception as exc:
                failed[window] = exc
        return failed

    def result(self, window: Window) -> torch.Tensor:
        return window.sequence

    def vacate(self, window: Window) -> None:
        """Nothing to do: a slot's step runs only while it holds a request."""

    capture_failure = None  # nothing is captured

    def capture_pending(self) -> None:
        """Nothing to capture: a CPU's steps run eagerly."""

    @property
    def retry_safe(self) -> bool:
        """A step that ran out of memory can run again: its state is written after its logits."""
        return True

    def guided_logits(self, slot: int) -> torch.Tensor:
        """The guided logits [K, card] `slot`'s last token was drawn from (read by the proof)."""
        return self._guided[slot][0]

    def _sample_into(self, window: Window, pair: torch.Tensor) -> None:
        logits = self._guided[window.slot] = guided(pair, window.sampling.cfg_coef)
        window.write(sample(logits, window.sampling, window.generator))

    def release(self) -> None:
        self._guided.clear()
        self.decoder.caches.clear()


@dataclass
class SlotState:
    """Everything a batched step reads and writes, per row or per slot, on the model's device."""

    tokens: torch.Tensor  # [rows, K, 1] each row's next input
    positions: torch.Tensor  # [rows] its cache position
    offsets: torch.Tensor  # [slots] the sequence step each slot fills next
    sequences: torch.Tensor  # [slots, K, L] each slot's pattern sequence
    masks: torch.Tensor  # [slots, K, L] its pattern's validity
    uniforms: torch.Tensor  # [slots, L, K] its draws in [0, 1), one per generated token
    faults: torch.Tensor  # [slots] whether its logits were ever NaN or infinite
    advancing: torch.Tensor  # [rows] 1 while the row's slot holds a request (its position moves), else 0
    rule: RowSampling

    @classmethod
    def empty(cls, slots: int, codebooks: int, length: int, device: torch.device) -> SlotState:
        def zeros(*shape: int, dtype: torch.dtype = torch.long) -> torch.Tensor:
            return torch.zeros(*shape, dtype=dtype, device=device)

        return cls(
            tokens=zeros(2 * slots, codebooks, 1),
            positions=zeros(2 * slots),
            offsets=zeros(slots),
            sequences=zeros(slots, codebooks, length),
            masks=zeros(slots, codebooks, length, dtype=torch.bool),
            uniforms=zeros(slots, length, codebooks, dtype=torch.float32),
            faults=zeros(slots, dtype=torch.bool),
            advancing=zeros(2 * slots),
            rule=RowSampling.zeros(slots, device),
        )

    def narrow(self, first: int, count: int = 1) -> SlotState:
        """Views of the state of slots first .. first + count - 1 (their rows, sequences, rules)."""
        rows, slots = slice(2 * first, 2 * (first + count)), slice(first, first + count)
        return SlotState(
            self.tokens[rows],
            self.positions[rows],
            self.offsets[slots],
            self.sequences[slots],
            self.masks[slots],
            self.uniforms[slots],
            self.faults[slots],
            self.advancing[rows],
            self.rule.narrow(first, count),
        )

    def tensors(self) -> list[torch.Tensor]:
        values = [getattr(self, f.name) for f in fields(self) if f.name != "rule"]
        return values + [getattr(self.rule, f.name) for f in fields(self.rule)]


class BatchedSteps:
    """Every slot's rows in one fixed-shape step that also chooses and writes their next tokens."""

    def __init__(
        self,
        decoder: SlotDecoder,
        sequence_length: int,
        graphs: bool = False,
        compile_as: str | None = None,
        streams: NoStreams | None = None,
    ):
        self.decoder = decoder
        self.streams = streams or NoStreams()
        # torch.compile (Inductor: fused kernels) of the step; dynamic shapes: one compile serves
        # every span of the cache
        self._compiled = torch.compile(self._decode_step, dynamic=True, mode=compile_as) if compile_as else None
        self.sequence_length = sequence_length  # the longest window's pattern sequence
        self.graphs_enabled = graphs  # replay captured steps (CUDA); turned off for good if a capture fails
        self.graphs: dict[int, CudaGraphStep] = {}  # by the span of the cache a step reads
        self.pending: set[int] = set()  # spans met without a graph: captured when no window decodes
        self.capture_failure: CaptureFailed | None = None  # why graphs went off, when a capture failed
        self.state: SlotState | None = None
        # the guided logits [slots, K, card] of the last step (a graph's own output: overwritten by
        # its next replay); read by the proof, never by the loop
        self.guided: torch.Tensor | None = None
        self._pool = torch.cuda.graph_pool_handle() if graphs else None  # one memory pool: graphs never run at once

    def admit(self, window: Window) -> None:
        """Prefill `window`'s prefix into its slot, load its sequence, rule and draws into the
        slot's state, and write its first generated tokens."""
        lm = self.decoder.lm
        if window.length > self.sequence_length:
            raise ValueError(f"a window of {window.length} steps is longer than the {self.sequence_length} allocated")
        if not 0 <= window.sampling.top_k <= lm.card:
            raise ValueError(f"top_k {window.sampling.top_k} is out of range: 0 to the codebook size {lm.card}")
        logits, filled = self.decoder.prefill(window)
        whole = self._state(window.sequence.device)
        whole.rule.set(window.slot, window.sampling)
        state = whole.narrow(window.slot)
        state.sequences[0, :, : window.length] = window.sequence[0]
        state.masks[0, :, : window.length] = window.mask
        steps = window.length - window.first_step
        draws = torch.rand((steps, lm.num_codebooks), generator=window.generator, device=window.generator.device)
        state.uniforms[0, window.first_step : window.length] = draws
        state.offsets.fill_(window.first_step)
        state.positions.fill_(filled)
        state.advancing.fill_(1)
        state.faults.fill_(False)
        self._choose(state, logits)
        window.offset, window.position = window.first_step, filled
        window.advance()

    def step(self, windows: list[Window]) -> dict[Window, Exception]:
        """One token for every window; their host counters follow. A failure fails all (raised)."""
        span = self.span(max(w.position for w in windows))
        graph = self.graphs.get(span) if self.graphs_enabled else None
        if graph is not None:
            self.guided = graph.replay()
        else:  # no graph for it yet, and windows decode: eagerly now, captured when the loop is idle
            if self.graphs_enabled:
                self.pending.add(span)
            self.guided = self._run_step(span, tuple(sorted(w.slot for w in windows)))
        self.streams.throttle(LOOKAHEAD)
        for window in windows:
            window.position += 1
            window.advance()
        return {}

    def guided_logits(self, slot: int) -> torch.Tensor:
        """The guided logits [K, card] `slot`'s last token was drawn from (read by the proof)."""
        assert self.guided is not None, "no step has run"
        return self.guided[slot]

    def result(self, window: Window) -> torch.Tensor:
        """`window`'s filled sequence [1, K, S], copied out of its slot before the slot is reused;
        all UNKNOWN_TOKEN if its logits were ever not finite (read by the request, not the loop)."""
        assert self.state is not None
        slot = window.slot
        sequence = self.state.sequences[slot : slot + 1, :, : window.length]
        return torch.where(self.state.faults[slot], UNKNOWN_TOKEN, sequence)

    def vacate(self, window: Window) -> None:
        """`window` has left its slot: its rows go back to position 0 and stay there."""
        if self.state is not None:
            state = self.state.narrow(window.slot)
            state.advancing.fill_(0)
            state.positions.fill_(0)

    def span(self, furthest: int) -> int:
        """Cache positions a step reads when the furthest row is at `furthest`: the whole cache for
        the CUDA kernels (each row reads its own filled part: one graph serves every step), else
        whole buckets up to that row (how far the CPU's fold goes; SDPA's mask)."""
        decoder = self.decoder
        if decoder.attention == "rowwise" and self.graphs_enabled:
            return decoder.cache_length()
        return decoder.attended_length(furthest)

    def shapes(self) -> list[int]:
        """Every span a step can take with the cache as allocated."""
        return sorted({self.span(position) for position in range(0, self.decoder.cache_length(), KV_BUCKET)})

    def capture_all(self) -> int:
        """Capture the step for every shape (after a first request has allocated the cache), so
        that no request meets a capture; the loop calls it when no window decodes. Returns the
        graphs held; CaptureFailed once a capture has failed for a reason other than memory."""
        if self.graphs_enabled and self.state is not None:
            self.pending.update(span for span in self.shapes() if span not in self.graphs)
            self.capture_pending()
        if self.capture_failure is not None:  # this one, or one the loop tried when idle
            raise self.capture_failure
        return len(self.graphs)

    def capture_pending(self) -> None:
        """Capture the spans met without a graph. Called only when no window decodes (a capture
        synchronises the device), holding the default generators' lock (a capture registers them:
        another thread's draw meanwhile would fail it); if MBD holds it, next time. Out of memory:
        tried again next time; any other failure: graphs off for good, the step runs eagerly, and
        `capture_failure` says why."""
        if not self.pending or self.state is None:
            return
        state, device = self.state, self.state.tokens.device.type
        with holding_default_generators(blocking=False) as held:
            if not held:
                return
            for span in sorted(self.pending):
                saved: list[torch.Tensor] = []
                CAPTURING.set()
                try:
                    saved = [tensor.clone() for tensor in state.tensors()]  # capture's warm-up runs advance the state
                    step = partial(self._run_step, span)
                    self.graphs[span] = CudaGraphStep(step, device, self._pool, self.streams.capture())
                    self.pending.discard(span)
                except Exception as exc:
                    CAPTURING.clear()
                    if is_sticky(exc, device):
                        raise
                    if is_out_of_memory(exc):
                        release_cached_memory(device)
                        log.warning("CUDA graph capture ran out of memory; decoding eagerly, capturing later")
                        return
                    # a driver or kernel that cannot be captured: stay correct, run eagerly; whoever
                    # reads capture_failure judges the allocator, which may be left mid-capture
                    self.graphs_enabled = False
                    self.pending.clear()
                    self.capture_failure = CaptureFailed(f"CUDA graph capture failed ({type(exc).__name__}: {exc})")
                    return
                finally:
                    CAPTURING.clear()
                    for tensor, before in zip(state.tensors(), saved, strict=False):
                        tensor.copy_(before)

    @property
    def retry_safe(self) -> bool:
        """A step that ran out of memory can run again: the eager step writes its state after its
        last allocation (a compiled one may not: Inductor orders the writes)."""
        return self._compiled is None

    def release(self) -> None:
        self.graphs.clear()
        self.decoder.caches.clear()
        self.state = self.guided = None

    def _state(self, device: torch.device) -> SlotState:
        if self.state is None:
            lm = self.decoder.lm
            self.state = SlotState.empty(self.decoder.slots, lm.num_codebooks, self.sequence_length, device)
        return self.state

    def _run_step(self, span: int, busy: tuple[int, ...] | None = None) -> torch.Tensor:
        """The step, eagerly or compiled, giving its guided logits; `busy`: the slots in use, known
        to an eager step only (a graph or a compiled step runs every slot's rows)."""
        if self._compiled is None:
            return self._decode_step(span, busy)
        assert self.state is not None
        device = self.state.tokens.device.type
        try:
            with autocast_without_cache(device):  # as captures run it: one compiled variant, not two
                return self._compiled(span)
        except torch._dynamo.exc.TorchDynamoException as exc:  # Inductor or Triton could not build it
            log.warning("torch.compile of the decoding step failed (%s); running it eagerly from now on", exc)
            self._compiled = None
            return self._decode_step(span)

    def _decode_step(self, span: int, busy: tuple[int, ...] | None = None) -> torch.Tensor:
        """The step a graph captures: the logits of every slot's rows over `span` cache positions,
        then their next tokens chosen and written, the busy rows' positions and every offset
        advanced. Gives the guided logits the tokens were drawn from."""
        assert self.state is not None
        state, decoder = self.state, self.decoder
        # the whole caches: rows are written by index (torch.compile would copy a sliced cache)
        logits = decoder._forward(state.tokens, decoder.caches, state.positions, span, busy)[:, :, 0]
        guided = self._choose(state, logits)
        state.positions.add_(state.advancing).clamp_(max=decoder.cache_length() - 1)
        return guided

    def _choose(self, state: SlotState, logits: torch.Tensor) -> torch.Tensor:
        """Guide, sample and write each slot's tokens at its offset from logits [2S, K, card]
        (and remember which slots' logits were not finite: sampling never fails on a device);
        gives the guided logits [S, K, card].
        Everything is computed before the state is written, so a step that runs out of memory
        leaves it as it was (and can be run again)."""
        slots, codebooks, length = state.sequences.shape
        offsets = state.offsets.view(slots, 1, 1)
        at = offsets.expand(slots, codebooks, 1)
        uniforms = state.uniforms.gather(1, offsets.expand(slots, 1, codebooks)).view(slots, codebooks)
        logits = guided_rows(logits, state.rule.cfg_coef)
        not_finite = ~torch.isfinite(logits).flatten(1).all(dim=1)
        tokens = sample_rows(logits, state.rule, uniforms)
        tokens = torch.where(state.masks.gather(2, at), tokens, self.decoder.lm.special_token_id)
        current = state.sequences.gather(2, at)
        tokens = torch.where(current == UNKNOWN_TOKEN, tokens, current)
        inputs = tokens.repeat_interleave(2, dim=0)
        state.faults.logical_or_(not_finite)
        state.sequences.scatter_(2, at, tokens)
        state.tokens.copy_(inputs)
        state.offsets.add_(1).clamp_(max=length - 1)  # a finished slot's offset stays inside its sequence
        return logits


class CudaGraphStep:
    """A step with no inputs but device tensors, captured once in a CUDA graph; a replay gives the
    tensor the captured call returned, overwritten in place by each replay.

    It runs under the caller's autocast (audiocraft keeps the embeddings and output layers in
    fp32 and relies on it) with autocast's weight-cast cache off: a cached cast is freed when
    the caller's autocast exits, and a graph that captured it would read freed memory. Its
    warm-up runs and its capture go to `stream`: one stream for every capture.
    """

    def __init__(self, step: Callable[[], torch.Tensor], device: str, pool: tp.Any = None, stream: tp.Any = None):
        self.pool = pool
        with autocast_without_cache(device):
            self._capture(step, stream)

    def _capture(self, step: Callable[[], torch.Tensor], stream: tp.Any) -> None:
        """Two warm-up runs (cuBLAS workspaces, Triton's kernels), then the capture, all on
        `stream`: the loop's own, which only the loop's thread uses, idle meanwhile."""
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
            self.graph = torch.cuda.CUDAGraph()
            # thread_local: requests' threads keep running their own CUDA work (T5, stems, codec) meanwhile
            with torch.cuda.graph(self.graph, pool=self.pool, stream=stream, capture_error_mode="thread_local"):
                self.output = step()

    def replay(self) -> torch.Tensor:
        self.graph.replay()
        return self.output


def autocast_without_cache(device: str) -> torch.autocast:
    """The caller's autocast on `device` (on or off, its dtype) with the weight-cast cache off."""
    return torch.autocast(
        device,
        dtype=torch.get_autocast_dtype(device),
        enabled=torch.is_autocast_enabled(device),
        cache_enabled=False,
    )


Steps = PerSlotSteps | BatchedSteps


def steps_for(musicgen: MusicGen, slots: int, path: DecodingPath, streams: NoStreams | None = None) -> Steps:
    """Our steps for `musicgen`'s LM in `slots` slots, as `path` (batched or per slot) runs them."""
    decoder = SlotDecoder(musicgen.lm, slots, cache_positions(musicgen), attention=path.attention)
    if path.batched:
        sequence_length = window_steps(musicgen)
        return BatchedSteps(decoder, sequence_length, graphs=path.graphs, compile_as=path.compiled, streams=streams)
    return PerSlotSteps(decoder)


def window_steps(musicgen: MusicGen) -> int:
    """Steps of the longest window's pattern sequence (its delay pattern adds a step per codebook)."""
    return int(musicgen.max_duration * musicgen.frame_rate) + musicgen.lm.num_codebooks + 1


def cache_positions(musicgen: MusicGen) -> int:
    """Positions a slot needs at the most: the longest condition prefix, then a whole window."""
    return longest_prefix(musicgen.lm, musicgen.max_duration) + window_steps(musicgen)
