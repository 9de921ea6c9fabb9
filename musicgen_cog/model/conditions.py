"""The longest prefix of condition tokens a request can bring, so the KV cache is sized once.

A melody-size MusicGen prepends its conditions to the sequence: the prompt's T5 tokens, then
the chroma frames of the window's melody. The prompt is bounded in T5 tokens (T5 was trained on
512), the chroma by the window's length, so every accepted request fits the cache allocated at
setup and no request ever reallocates it while others decode.
"""

from __future__ import annotations

import typing as tp

import torch
from audiocraft.modules.conditioners import ChromaStemConditioner, T5Conditioner

from ..errors import InputError

MAX_TEXT_TOKENS = 512  # T5's training length; about 1,500 to 2,000 characters of English


def unbounded_conditioner(lm: tp.Any) -> str | None:
    """The name of a conditioner whose length this module cannot bound, or None."""
    for name, conditioner in lm.condition_provider.conditioners.items():
        if not isinstance(conditioner, T5Conditioner | ChromaStemConditioner):
            return f"{name} ({type(conditioner).__name__})"
    return None


def longest_prefix(lm: tp.Any, window_seconds: float) -> int:
    """Condition tokens before a window's sequence at the most: MAX_TEXT_TOKENS per text
    conditioner, and the chroma frames of a window of melody."""
    total = 0
    for conditioner in lm.condition_provider.conditioners.values():
        if isinstance(conditioner, T5Conditioner):
            total += MAX_TEXT_TOKENS
        elif isinstance(conditioner, ChromaStemConditioner):
            total += chroma_frames(conditioner, window_seconds)
    return total


def chroma_frames(conditioner: ChromaStemConditioner, seconds: float) -> int:
    """Chroma frames of `seconds` of melody, as the conditioner computes them (audiocraft's own
    `_get_chroma_len` arithmetic), at least the training length it pads to when it matches it."""
    with torch.no_grad():
        silence = torch.zeros((1, int(conditioner.sample_rate * seconds)), device=conditioner.device)
        frames = conditioner.chroma(silence).shape[1]
    return max(frames, conditioner.chroma_len) if conditioner.match_len_on_eval else frames


def check_prompt_tokens(lm: tp.Any, prompt: str | None) -> None:
    """InputError when `prompt` is longer than MAX_TEXT_TOKENS for a text conditioner (its own
    tokenizer, end-of-text token included); run in the request's thread, before it decodes."""
    if not prompt:
        return
    for conditioner in lm.condition_provider.conditioners.values():
        if isinstance(conditioner, T5Conditioner):
            tokens = int(conditioner.tokenize([prompt])["input_ids"].shape[1])
            if tokens > MAX_TEXT_TOKENS:
                raise InputError(
                    "prompt",
                    f"is {tokens} T5 tokens long ({len(prompt)} characters); at most {MAX_TEXT_TOKENS} "
                    "tokens fit. Shorten the description.",
                )
