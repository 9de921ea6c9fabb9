"""One decoding loop shared by every request in flight (continuous batching).

Requests hand in one window at a time (conditions computed, pattern sequence built) and wait.
The loop's thread admits a window into a free slot at the next step boundary (its prefix runs
audiocraft's forward), then every step decodes one token for every admitted window, each with
its own sampling parameters and random generator; a window leaves when its last token is
written, when its request is cancelled, or when it fails (alone: the others go on).
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import torch

from .fast_decode import SlotDecoder
from .sampling import Sampling, guided, sample

log = logging.getLogger(__name__)
UNKNOWN_TOKEN = -1  # audiocraft's marker for tokens not generated yet


class GenerationCancelled(Exception):
    """The request was cancelled; its window left the batch."""


@dataclass(eq=False)
class Window:
    """One window of one request: its pattern sequence to fill and what decoding it needs.

    `sequence` [1, K, S] holds the prompt's tokens and UNKNOWN_TOKEN elsewhere; `mask` [K, S]
    is the pattern's validity; steps from `first_step` on are generated (audiocraft's
    `LMModel.generate` arithmetic). `conditions` are the condition tensors of the CFG pair.
    """

    sequence: torch.Tensor
    mask: torch.Tensor
    first_step: int
    conditions: dict
    sampling: Sampling
    generator: torch.Generator
    special_token: int
    on_step: Callable[[], None] = lambda: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: Future = field(default_factory=Future)
    slot: int = -1
    offset: int = 0  # the sequence step the next token fills
    position: int = 0  # the cache position of the next step's input

    def write(self, tokens: torch.Tensor) -> None:
        """Write sampled tokens [1, K, 1] at `offset`, as audiocraft does: masked places get the
        special token, prompt tokens are never overwritten."""
        offset = self.offset
        tokens = torch.where(self.mask[None, :, offset : offset + 1], tokens, self.special_token)  # no host sync
        current = self.sequence[..., offset : offset + 1]
        self.sequence[..., offset : offset + 1] = torch.where(current == UNKNOWN_TOKEN, tokens, current)
        self.offset += 1
        self.on_step()

    @property
    def finished(self) -> bool:
        return self.offset >= self.sequence.shape[-1]

    def last_tokens(self) -> torch.Tensor:
        """The step's input: the column just written, for both rows of the CFG pair [2, K, 1]."""
        column = self.sequence[..., self.offset - 1 : self.offset]
        return torch.cat([column, column], dim=0)


class DecodingLoop:
    """Runs `decoder` over the windows handed to `submit`, on a thread of its own."""

    def __init__(self, decoder: SlotDecoder, autocast: Callable[[], contextlib.AbstractContextManager]):
        self.decoder = decoder
        self.autocast = autocast  # a fresh autocast context per use: autocast state is per thread
        self._incoming: queue.SimpleQueue[Window | None] = queue.SimpleQueue()  # None: close
        self._waiting: list[Window] = []
        self._active: list[Window] = []
        self._free_slots = list(range(decoder.slots))
        self._tokens: torch.Tensor | None = None  # every row's input of the batched step
        self._positions = torch.zeros(0, dtype=torch.long)  # and its cache position (host side)
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="decoding-loop", daemon=True)
        self._thread.start()

    @property
    def slots(self) -> int:
        return self.decoder.slots

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, window: Window) -> Future:
        """Queue `window`; the future gives its filled sequence, or the reason it failed."""
        if self._closed or not self.alive:
            raise RuntimeError("the decoding loop is closed")
        self._incoming.put(window)
        return window.done

    def close(self) -> None:
        """Stop the loop's thread (windows still in it fail) and free the cache."""
        self._incoming.put(None)
        self._thread.join()

    def _run(self) -> None:
        with torch.no_grad():
            while not self._closed:
                try:
                    self._take_incoming(block=not self._active and not self._waiting)
                    self._drop_cancelled()
                    self._admit()
                    if self._active:
                        with self.autocast():
                            self._step()
                except Exception as exc:  # a fault of the loop itself: fail what it holds, never hang a request
                    log.exception("the decoding loop failed")
                    for window in self._active + self._waiting:
                        self._leave(window, exc)
        for window in self._active + self._waiting:
            self._leave(window, RuntimeError("the decoding loop was closed"))
        self.decoder.caches.clear()
        self.decoder.graphs.clear()

    def _take_incoming(self, block: bool) -> None:
        taken = [self._incoming.get()] if block else []
        while True:
            try:
                taken.append(self._incoming.get_nowait())
            except queue.Empty:
                break
        self._closed = None in taken
        self._waiting.extend(window for window in taken if window is not None)

    def _drop_cancelled(self) -> None:
        for window in [w for w in self._waiting + self._active if w.cancelled.is_set()]:
            self._leave(window, GenerationCancelled())

    def _leave(self, window: Window, error: BaseException | None = None) -> None:
        if window in self._active:
            self._active.remove(window)
            self._free_slots.append(window.slot)
        elif window in self._waiting:
            self._waiting.remove(window)
        if error is None:
            window.done.set_result(window.sequence)
        else:
            window.done.set_exception(error)

    def _admit(self) -> None:
        while self._waiting and self._free_slots:
            window = self._waiting.pop(0)
            window.slot = self._free_slots.pop(0)
            self._active.append(window)
            try:
                with self.autocast():  # sampling too: audiocraft samples under autocast
                    prefix = window.sequence[..., : window.first_step]
                    steps = window.sequence.shape[-1] - window.first_step
                    pair = torch.cat([prefix, prefix])
                    logits, filled = self.decoder.prefill(window.slot, pair, window.conditions, steps)
                    window.offset, window.position = window.first_step, filled
                    self._sample_into(window, logits)
            except Exception as exc:  # this request's prefix or numbers: it fails alone
                log.exception("a request failed while joining the batch")
                self._leave(window, exc)

    def _step(self) -> None:
        try:
            logits = self._forward()
        except Exception as exc:  # the shared step itself: every window in it has failed
            log.exception("a decoding step failed")
            for window in list(self._active):
                self._leave(window, exc)
            return
        for window in list(self._active):
            window.position += 1
            try:
                self._sample_into(window, logits[window.slot])
            except Exception as exc:
                log.exception("a request failed while sampling")
                self._leave(window, exc)

    def _forward(self) -> dict[int, torch.Tensor]:
        """Logits [2, K, card] by slot for every active window's last tokens."""
        decoder = self.decoder
        if not decoder.batched:
            return {w.slot: decoder.step_slot(w.slot, w.last_tokens(), w.position) for w in self._active}
        first = self._active[0].sequence
        if self._tokens is None:
            self._tokens = first.new_zeros(decoder.rows, first.shape[1], 1)
            self._positions = torch.zeros(decoder.rows, dtype=torch.long, pin_memory=first.is_cuda)
        for window in self._active:
            rows = slice(2 * window.slot, 2 * window.slot + 2)
            self._tokens[rows] = window.last_tokens()
            self._positions[rows] = window.position
        furthest = max(window.position for window in self._active)
        logits = decoder.step_all(self._tokens, self._positions.to(first.device, non_blocking=True), furthest)
        return {w.slot: logits[2 * w.slot : 2 * w.slot + 2] for w in self._active}

    def _sample_into(self, window: Window, pair: torch.Tensor) -> None:
        tokens = sample(guided(pair, window.sampling.cfg_coef), window.sampling, window.generator)
        window.write(tokens)
        if window.finished:
            self._leave(window)
