"""One window of one request, as the decoding loop takes it: a pattern sequence to fill.

The arithmetic is audiocraft's `LMModel.generate`: the sequence holds the prompt's tokens and
UNKNOWN_TOKEN elsewhere; steps from `first_step` on are generated; places the delay pattern
marks invalid get the special token; prompt tokens are never overwritten.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import torch

from .sampling import Sampling

UNKNOWN_TOKEN = -1  # audiocraft's marker for tokens not generated yet


@dataclass(eq=False)
class Window:
    """`sequence` [1, K, S] to fill, `mask` [K, S] the pattern's validity, `conditions` the
    condition tensors of the CFG pair; `offset` and `position` are kept by the host, step by step."""

    sequence: torch.Tensor
    mask: torch.Tensor
    first_step: int
    conditions: dict
    sampling: Sampling
    generator: torch.Generator
    special_token: int
    pattern: Any = None  # audiocraft's delay pattern the sequence is laid out in
    on_step: Callable[[], None] = lambda: None
    cancelled: threading.Event = field(default_factory=threading.Event)
    done: Future = field(default_factory=Future)
    submitted_at: float = field(default_factory=time.monotonic)
    admitted_at: float | None = None  # when it took a slot
    tensors_ready: Any = None  # a CUDA event: its tensors are written (on the request's stream); None on a CPU
    result_ready: Any = None  # a CUDA event: its result is written (on the loop's stream)
    slot: int = -1
    offset: int = 0  # the sequence step the next token fills
    position: int = 0  # the cache position of the next step's input

    @classmethod
    def laid_out(
        cls, lm: Any, prompt: torch.Tensor, frames: int, conditions: dict, sampling: Sampling, **fields: Any
    ) -> Window:
        """The window of `frames` frames of `lm`'s codes that starts with `prompt` [1, K, T], laid out
        in its delay pattern as audiocraft's `LMModel.generate` lays it out: steps before the first
        step with a frame to generate are the prefix."""
        pattern = lm.pattern_provider.get_pattern(frames)
        codes = torch.full((1, lm.num_codebooks, frames), UNKNOWN_TOKEN, dtype=torch.long, device=prompt.device)
        codes[..., : prompt.shape[-1]] = prompt
        sequence, _, mask = pattern.build_pattern_sequence(codes, lm.special_token_id)
        first_step = pattern.get_first_step_with_timesteps(prompt.shape[-1])
        assert first_step is not None, "audiocraft's generate asserts the same of every prompt it takes"
        return cls(
            sequence,
            mask,
            first_step,
            conditions,
            sampling,
            special_token=lm.special_token_id,
            pattern=pattern,
            **fields,
        )

    def tokens(self, filled: torch.Tensor) -> torch.Tensor:
        """The codes [1, K, frames] of `filled`, this window's sequence as decoded."""
        codes, _, _ = self.pattern.revert_pattern_sequence(filled, special_token=UNKNOWN_TOKEN)
        return codes

    @property
    def length(self) -> int:
        return self.sequence.shape[-1]

    @property
    def finished(self) -> bool:
        return self.offset >= self.length

    def advance(self) -> None:
        """The token at `offset` has been written (or its writing launched)."""
        self.offset += 1
        self.on_step()

    def write(self, tokens: torch.Tensor) -> None:
        """Write sampled tokens [1, K, 1] at `offset` into `sequence`, then advance."""
        offset = self.offset
        tokens = torch.where(self.mask[None, :, offset : offset + 1], tokens, self.special_token)  # no host sync
        current = self.sequence[..., offset : offset + 1]
        self.sequence[..., offset : offset + 1] = torch.where(current == UNKNOWN_TOKEN, tokens, current)
        self.advance()

    def tensors(self) -> list[torch.Tensor]:
        """Every tensor the loop reads of this window (made on the request's stream)."""
        conditions = [t for pair in self.conditions.values() for t in pair if isinstance(t, torch.Tensor)]
        return [self.sequence, self.mask, *conditions]

    def last_tokens(self) -> torch.Tensor:
        """The step's input: the column just written, for both rows of the CFG pair [2, K, 1]."""
        column = self.sequence[..., self.offset - 1 : self.offset]
        return torch.cat([column, column], dim=0)
