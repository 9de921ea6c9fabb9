"""How the decoding loop takes a step: slot by slot (CPU), or every slot in one captured graph (GPU).

- `PerSlotSteps`: each slot's CFG pair runs alone at its filled length, then samples with its
  request's generator: exactly audiocraft's numbers and draws (oneDNN picks other kernels for
  other row counts, so rows of several requests are not stacked on a CPU).
- `BatchedSteps`: one fixed-shape function runs the rows of the first slots (a power of two
  covering every slot in use: requests take the lowest free slot), guides, samples and writes
  each slot's next tokens, all from device tensors (tokens, positions, offsets, sequences,
  sampling rules, uniforms drawn at admission from the request's generator). On a GPU it is one
  CUDA graph replay per step, one graph per (slots run, attended bucket of the cache), and the
  host only counts: it never reads a step's numbers, and runs at most LOOKAHEAD steps ahead.
  Running only the slots in use matters: every row reads the attended part of its cache, about
  0.3 MB per position per row at melody size, as much as the weights for 8 idle slots at 30 s.
"""

from __future__ import annotations

import logging
import os
import typing as tp
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, fields

import torch

from .fast_decode import KV_BUCKET, TYPICAL_PREFIX, SlotDecoder, decoder_choice, unsupported_reason
from .sampling import RowSampling, guided, guided_rows, sample, sample_rows
from .window import UNKNOWN_TOKEN, Window

if tp.TYPE_CHECKING:
    from audiocraft.models import MusicGen

log = logging.getLogger(__name__)
COMPILE_ENV = "MUSICGEN_COMPILE"
# torch.compile modes for the batched step; those that capture CUDA graphs of their own are left
# out (the step is captured here, per shape). Off by default: see compile_mode().
COMPILE_MODES = ("default", "max-autotune-no-cudagraphs")
# Steps the host may launch before the device has finished them: enough to keep the device fed,
# few enough that progress (counted on the host) is at most this far ahead of the music.
LOOKAHEAD = 4


class PerSlotSteps:
    """Steps that reproduce audiocraft's arithmetic exactly, one slot at a time."""

    def __init__(self, decoder: SlotDecoder):
        self.decoder = decoder

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

    def _sample_into(self, window: Window, pair: torch.Tensor) -> None:
        tokens = sample(guided(pair, window.sampling.cfg_coef), window.sampling, window.generator)
        window.write(tokens)

    def release(self) -> None:
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
            self.rule.narrow(first, count),
        )

    def tensors(self) -> list[torch.Tensor]:
        values = [getattr(self, f.name) for f in fields(self) if f.name != "rule"]
        return values + [getattr(self.rule, f.name) for f in fields(self.rule)]


class BatchedSteps:
    """Every slot's rows in one fixed-shape step that also chooses and writes their next tokens."""

    def __init__(self, decoder: SlotDecoder, sequence_length: int, graphs: bool = False, compile_as: str | None = None):
        self.decoder = decoder
        # torch.compile (Inductor: fused kernels) of the step; dynamic shapes: one compile for one
        # slot, one for any other count, each serving every cache bucket
        self._compiled = torch.compile(self._decode_step, dynamic=True, mode=compile_as) if compile_as else None
        self.sequence_length = sequence_length  # the longest window's pattern sequence
        self.graphs_enabled = graphs  # replay captured steps (CUDA); turned off for good if a capture fails
        self.graphs: dict[tuple[int, int], CudaGraphStep] = {}  # by (slots run, attended length), for `_graphs_caches`
        self._graphs_caches: list | None = None
        self.state: SlotState | None = None
        self._in_flight: deque[torch.cuda.Event] = deque()
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
        state.faults.fill_(False)
        self._choose(state, logits)
        window.offset, window.position = window.first_step, filled
        window.advance()

    def step(self, windows: list[Window]) -> dict[Window, Exception]:
        """One token for every window; their host counters follow. A failure fails all (raised)."""
        shape = (
            self.slots_run(max(w.slot for w in windows) + 1),
            self.decoder.attended_length(max(w.position for w in windows)),
        )
        graph = self._graph(*shape) if self.graphs_enabled else None
        if graph is not None:
            graph.replay()
        else:
            self._run_step(*shape)
        self._keep_up()
        for window in windows:
            window.position += 1
            window.advance()
        return {}

    def result(self, window: Window) -> torch.Tensor:
        """`window`'s filled sequence [1, K, S], copied out of its slot before the slot is reused;
        all UNKNOWN_TOKEN if its logits were ever not finite (read by the request, not the loop)."""
        assert self.state is not None
        slot = window.slot
        sequence = self.state.sequences[slot : slot + 1, :, : window.length]
        return torch.where(self.state.faults[slot], UNKNOWN_TOKEN, sequence)

    def slots_run(self, in_use: int) -> int:
        """The slots a step runs when the highest in use is `in_use` - 1: a power of two, or all."""
        return min(self.decoder.slots, 1 << (in_use - 1).bit_length())

    def shapes(self) -> list[tuple[int, int]]:
        """Every (slots run, attended length) a step can take with the cache as allocated."""
        counts = sorted({self.slots_run(n) for n in range(1, self.decoder.slots + 1)})
        lengths = range(KV_BUCKET, self.decoder.cache_length() + 1, KV_BUCKET)
        return [(count, length) for count in counts for length in lengths]

    def capture_all(self) -> int:
        """Capture the step for every shape (after a first request has allocated the cache), so
        that no request pays for a capture. Returns the graphs held."""
        if self.graphs_enabled and self.state is not None:
            for shape in self.shapes():
                self._graph(*shape)
        return len(self.graphs)

    def release(self) -> None:
        self.graphs.clear()
        self.decoder.caches.clear()
        self.state = None

    def _state(self, device: torch.device) -> SlotState:
        if self.state is None:
            lm = self.decoder.lm
            self.state = SlotState.empty(self.decoder.slots, lm.num_codebooks, self.sequence_length, device)
        return self.state

    def _run_step(self, slots: int, length: int) -> None:
        if self._compiled is None:
            self._decode_step(slots, length)
            return
        assert self.state is not None
        device = self.state.tokens.device.type
        try:
            with autocast_without_cache(device):  # as captures run it: one compiled variant, not two
                self._compiled(slots, length)
        except torch._dynamo.exc.TorchDynamoException as exc:  # Inductor or Triton could not build it
            log.warning("torch.compile of the decoding step failed (%s); running it eagerly from now on", exc)
            self._compiled = None
            self._decode_step(slots, length)

    def _decode_step(self, slots: int, length: int) -> None:
        """The step a graph captures: the logits of the first `slots` slots' rows over `length`
        cache positions, then their next tokens chosen and written, positions and offsets advanced."""
        assert self.state is not None
        state, decoder = self.state.narrow(0, slots), self.decoder
        # the whole caches: rows are written by index (torch.compile would copy a sliced cache)
        logits = decoder._forward(state.tokens, decoder.caches, state.positions, length)[:, :, 0]
        state.positions.add_(1).clamp_(max=decoder.cache_length() - 1)  # free slots' rows stay in the cache
        self._choose(state, logits)

    def _choose(self, state: SlotState, logits: torch.Tensor) -> None:
        """Guide, sample and write each slot's tokens at its offset from logits [2S, K, card]
        (and remember which slots' logits were not finite: sampling never fails on a device)."""
        slots, codebooks, length = state.sequences.shape
        offsets = state.offsets.view(slots, 1, 1)
        at = offsets.expand(slots, codebooks, 1)
        uniforms = state.uniforms.gather(1, offsets.expand(slots, 1, codebooks)).view(slots, codebooks)
        logits = guided_rows(logits, state.rule.cfg_coef)
        state.faults.logical_or_(~torch.isfinite(logits).flatten(1).all(dim=1))
        tokens = sample_rows(logits, state.rule, uniforms)
        tokens = torch.where(state.masks.gather(2, at), tokens, self.decoder.lm.special_token_id)
        current = state.sequences.gather(2, at)
        tokens = torch.where(current == UNKNOWN_TOKEN, tokens, current)
        state.sequences.scatter_(2, at, tokens)
        state.tokens.copy_(tokens.repeat_interleave(2, dim=0))
        state.offsets.add_(1).clamp_(max=length - 1)  # a finished slot's offset stays inside its sequence

    def _graph(self, slots: int, length: int) -> CudaGraphStep | None:
        if self._graphs_caches is not self.decoder.caches:  # the cache was reallocated: old graphs read freed memory
            self.graphs.clear()
            self._graphs_caches = self.decoder.caches
        if (slots, length) not in self.graphs:
            state = self.state
            assert state is not None
            saved = [tensor.clone() for tensor in state.tensors()]  # capture's warm-up runs advance the state
            try:
                self.graphs[slots, length] = CudaGraphStep(
                    lambda: self._run_step(slots, length), state.tokens.device.type, self._pool
                )
            except RuntimeError as exc:  # a driver or kernel that cannot be captured: stay correct, run eagerly
                log.warning("CUDA graph capture failed (%s); decoding without graphs from now on", exc)
                self.graphs_enabled = False
                return None
            finally:
                for tensor, before in zip(state.tensors(), saved, strict=True):
                    tensor.copy_(before)
        return self.graphs[slots, length]

    def _keep_up(self) -> None:
        """Wait, if needed, for the step launched LOOKAHEAD steps ago: never for this one."""
        if self.state is None or not self.state.tokens.is_cuda:
            return
        event = torch.cuda.Event()
        event.record()
        self._in_flight.append(event)
        if len(self._in_flight) > LOOKAHEAD:
            self._in_flight.popleft().synchronize()


class CudaGraphStep:
    """A step with no inputs or outputs but device tensors, captured once in a CUDA graph.

    It runs under the caller's autocast (audiocraft keeps the embeddings and output layers in
    fp32 and relies on it) with autocast's weight-cast cache off: a cached cast is freed when
    the caller's autocast exits, and a graph that captured it would read freed memory.
    """

    def __init__(self, step: Callable[[], None], device: str, pool: tp.Any = None):
        self.pool = pool
        with autocast_without_cache(device):
            self._capture(step)

    def _capture(self, step: Callable[[], None]) -> None:
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                step()
        torch.cuda.current_stream().wait_stream(stream)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: requests' threads keep running their own CUDA work (T5, stems, codec) meanwhile
        with torch.cuda.graph(self.graph, pool=self.pool, capture_error_mode="thread_local"):
            step()

    def replay(self) -> None:
        self.graph.replay()


def autocast_without_cache(device: str) -> torch.autocast:
    """The caller's autocast on `device` (on or off, its dtype) with the weight-cast cache off."""
    return torch.autocast(
        device,
        dtype=torch.get_autocast_dtype(device),
        enabled=torch.is_autocast_enabled(device),
        cache_enabled=False,
    )


Steps = PerSlotSteps | BatchedSteps


def steps_for(musicgen: MusicGen, slots: int, batched: bool | None = None) -> Steps | None:
    """Our steps for `musicgen`'s LM in `slots` slots, or None for audiocraft's own loop
    (MUSICGEN_DECODER=audiocraft, or an architecture the step does not reproduce). `batched`:
    all slots in one step (default: on a GPU, with graphs; a CPU can run it to compare)."""
    lm = musicgen.lm
    reason = unsupported_reason(lm)
    compile_as = compile_mode()  # checked on every machine, used on the batched step only
    if decoder_choice() == "audiocraft" or reason:
        log.info("decoding with audiocraft's own loop, one request at a time%s", f" ({reason})" if reason else "")
        return None
    cuda = next(lm.parameters()).is_cuda
    window_steps = int(musicgen.max_duration * musicgen.frame_rate) + lm.num_codebooks + 1
    decoder = SlotDecoder(lm, slots, min_length=window_steps + TYPICAL_PREFIX)
    if cuda if batched is None else batched:
        return BatchedSteps(decoder, sequence_length=window_steps, graphs=cuda, compile_as=compile_as)
    return PerSlotSteps(decoder)


def compile_mode() -> str | None:
    """MUSICGEN_COMPILE: a torch.compile mode for the GPU's step, or off (default, or "off").

    Off by default because the choice is not measured yet: the project's H100 profile put a
    compiled step at 3.11 ms against 4.36 eager in a graph, but 75 s to compile one static shape;
    compiled here with dynamic shapes, once for all, at warm-up, with Inductor's cache beside the
    weights (`environment.configure`) so that a second boot reuses it."""
    mode = os.environ.get(COMPILE_ENV, "off")
    if mode == "off":
        return None
    if mode not in COMPILE_MODES:
        accepted = ", ".join(repr(m) for m in ("off", *COMPILE_MODES))
        raise ValueError(f"{COMPILE_ENV} must be one of {accepted}, got {mode!r}")
    return mode
