"""Choosing each request's next tokens from its logits, with its own random generator.

audiocraft's sampling functions draw from torch's global generator, which concurrent requests
would share. These are the same operations in the same order (`audiocraft.utils.utils`),
drawing from the request's generator: a request alone samples exactly what audiocraft would
after `torch.manual_seed(seed)`, and in company exactly the same.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from audiocraft.utils.utils import multinomial


@dataclass(frozen=True)
class Sampling:
    top_k: int
    top_p: float
    temperature: float
    cfg_coef: float


def guided(pair: torch.Tensor, cfg_coef: float) -> torch.Tensor:
    """Classifier-free guidance over a CFG pair of logits [2, ...] (conditional first): [1, ...]."""
    conditional, unconditional = pair.split(1, dim=0)
    return unconditional + (conditional - unconditional) * cfg_coef


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator) -> torch.Tensor:
    """Next tokens [B, K, 1] from logits [B, K, card], as `LMModel._sample_next_token` samples."""
    if sampling.temperature <= 0.0:
        return torch.argmax(logits, dim=-1, keepdim=True)
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p > 0.0:
        probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
        probs_sum = torch.cumsum(probs_sort, dim=-1)
        probs_sort *= (~(probs_sum - probs_sort > sampling.top_p)).float()
        probs_sort.div_(probs_sort.sum(dim=-1, keepdim=True))
        return torch.gather(probs_idx, -1, multinomial(probs_sort, num_samples=1, generator=generator))
    if sampling.top_k > 0:
        top_k_value, _ = torch.topk(probs, sampling.top_k, dim=-1)
        probs *= (probs >= top_k_value[..., [-1]]).float()
        probs.div_(probs.sum(dim=-1, keepdim=True))
    return multinomial(probs, num_samples=1, generator=generator)
