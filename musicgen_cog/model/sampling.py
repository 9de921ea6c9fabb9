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


@dataclass
class RowSampling:
    """Each slot's sampling rule as tensors [slots] on the model's device, so that one captured
    step serves any mix of rules and a new value needs no new capture."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    cfg_coef: torch.Tensor

    @classmethod
    def zeros(cls, slots: int, device: torch.device | str) -> RowSampling:
        def values(dtype: torch.dtype) -> torch.Tensor:
            return torch.zeros(slots, dtype=dtype, device=device)

        return cls(values(torch.float32), values(torch.long), values(torch.float32), values(torch.float32))

    def set(self, slot: int, sampling: Sampling) -> None:
        """Give `slot` the rule `sampling`. `fill_` takes the number as a kernel argument, where
        `tensor[slot] = number` would copy it from host memory, which waits for the stream."""
        rule = self.narrow(slot)
        rule.temperature.fill_(sampling.temperature)
        rule.top_k.fill_(sampling.top_k)
        rule.top_p.fill_(sampling.top_p)
        rule.cfg_coef.fill_(sampling.cfg_coef)

    def narrow(self, first: int, count: int = 1) -> RowSampling:
        """Views of the rules of slots first .. first + count - 1."""
        slots = slice(first, first + count)
        return RowSampling(self.temperature[slots], self.top_k[slots], self.top_p[slots], self.cfg_coef[slots])


def guided_rows(logits: torch.Tensor, cfg_coef: torch.Tensor) -> torch.Tensor:
    """`guided` for every slot at once: CFG pairs [2S, K, card] (rows 2s, 2s+1) -> [S, K, card]."""
    pairs = logits.view(-1, 2, *logits.shape[1:])
    conditional, unconditional = pairs[:, 0], pairs[:, 1]
    return unconditional + (conditional - unconditional) * cfg_coef.to(logits.dtype).view(-1, 1, 1)  # as rounded


def sample_rows(logits: torch.Tensor, rule: RowSampling, uniforms: torch.Tensor) -> torch.Tensor:
    """Next tokens [S, K, 1] from logits [S, K, card], each slot by its own rule, with shapes and
    no host reads that a CUDA graph can capture.

    The probabilities are audiocraft's (softmax at the temperature; top-p when top_p > 0, else
    top-k when top_k > 0, else all), but the draw is by inverse CDF: the token where the running
    sum of the kept probabilities, in descending order, first passes `uniforms` [S, K] (drawn in
    [0, 1) from each request's own generator) times their total. Same distribution as
    `torch.multinomial`, other draws. Temperature 0 is argmax. The top-k cut keeps exactly k
    tokens where audiocraft keeps ties with the k-th too.
    """
    logits = logits.float()
    card = logits.shape[-1]
    greedy = (rule.temperature <= 0).view(-1, 1, 1)
    temperature = torch.where(greedy, 1.0, rule.temperature.view(-1, 1, 1))
    probs = torch.softmax(logits / temperature, dim=-1)
    sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    cumulative = torch.cumsum(sorted_probs, dim=-1)
    top_p, top_k = rule.top_p.view(-1, 1, 1), rule.top_k.view(-1, 1, 1)
    nucleus = cumulative - sorted_probs <= top_p
    first_k = torch.arange(card, device=logits.device) < top_k
    keep = torch.where(top_p > 0, nucleus, first_k | (top_k <= 0))
    cdf = torch.cumsum(sorted_probs * keep, dim=-1)
    target = uniforms.unsqueeze(-1).float() * cdf[..., -1:]
    choice = torch.searchsorted(cdf, target.contiguous(), right=True)
    # the kept tokens lead the sorted order; a parallel cumsum may round the total past the last
    # kept sum, so a draw near 1 is held to the last kept token rather than one that was cut
    choice = torch.minimum(choice, (keep.sum(dim=-1, keepdim=True) - 1).clamp_(min=0))  # 0 kept: NaN logits
    return torch.where(greedy, logits.argmax(dim=-1, keepdim=True), order.gather(-1, choice))
