"""Sampling from a request's own generator draws exactly what audiocraft draws from the global one."""

import pytest
import torch
from audiocraft.utils import utils

from musicgen_cog.model.sampling import RowSampling, Sampling, guided, guided_rows, sample, sample_rows

RULES = {
    "top_k": (Sampling(top_k=50, top_p=0.0, temperature=0.7, cfg_coef=3.0), lambda p: utils.sample_top_k(p, k=50)),
    "top_p": (Sampling(top_k=250, top_p=0.8, temperature=1.2, cfg_coef=3.0), lambda p: utils.sample_top_p(p, p=0.8)),
    "plain": (Sampling(top_k=0, top_p=0.0, temperature=1.0, cfg_coef=3.0), lambda p: utils.multinomial(p, 1)),
}


@pytest.mark.parametrize("rule", RULES)
def test_each_rule_draws_what_audiocraft_draws_after_manual_seed(rule):
    sampling, audiocrafts = RULES[rule]
    logits = torch.randn(1, 4, 2048)
    torch.manual_seed(11)
    reference = audiocrafts(torch.softmax(logits / sampling.temperature, dim=-1))
    mine = sample(logits, sampling, torch.Generator().manual_seed(11))
    assert mine.shape == (1, 4, 1) and torch.equal(mine, reference)


def test_temperature_zero_is_argmax_and_draws_nothing():
    logits = torch.randn(1, 4, 2048)
    generator = torch.Generator().manual_seed(1)
    state = generator.get_state()
    assert torch.equal(sample(logits, Sampling(250, 0.0, 0.0, 3.0), generator), logits.argmax(-1, keepdim=True))
    assert torch.equal(generator.get_state(), state)


def test_guidance_moves_from_the_unconditional_towards_the_conditional_logits():
    pair = torch.tensor([[[2.0]], [[1.0]]])
    assert guided(pair, 3.0).item() == 1.0 + (2.0 - 1.0) * 3.0


def audiocrafts_distribution(logits: torch.Tensor, sampling: Sampling) -> torch.Tensor:
    """The probabilities audiocraft's sampling draws from, after its top-k or top-p cut."""
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    if sampling.top_p > 0.0:
        probs_sort, probs_idx = torch.sort(probs, dim=-1, descending=True)
        probs_sort *= (~(torch.cumsum(probs_sort, dim=-1) - probs_sort > sampling.top_p)).float()
        probs = torch.zeros_like(probs).scatter(-1, probs_idx, probs_sort)
    elif sampling.top_k > 0:
        probs *= (probs >= torch.topk(probs, sampling.top_k, dim=-1)[0][..., [-1]]).float()
    return probs / probs.sum(dim=-1, keepdim=True)


def rows_of(*rules: Sampling) -> RowSampling:
    rows = RowSampling.zeros(len(rules), "cpu")
    for slot, rule in enumerate(rules):
        rows.set(slot, rule)
    return rows


@pytest.mark.parametrize("rule", RULES)
def test_the_graphable_sampler_draws_from_audiocrafts_distribution(rule):
    """Sweeping its uniform over [0, 1) evenly, each token comes up in the share of the sweep
    that audiocraft's distribution gives it (the quantile function: the draws differ, the law does not)."""
    sampling, _ = RULES[rule]
    draws = 20_000
    logits = torch.randn(1, 1, 2048).expand(draws, 1, 2048)
    uniforms = ((torch.arange(draws) + 0.5) / draws).view(draws, 1)
    tokens = sample_rows(logits, rows_of(*[sampling] * draws), uniforms)
    shares = torch.bincount(tokens.flatten(), minlength=2048).double() / draws
    expected = audiocrafts_distribution(logits[0, 0].double(), sampling)
    assert (shares[expected == 0] == 0).all()  # nothing outside the top-k or the nucleus
    assert torch.allclose(shares, expected, atol=2 / draws)


def test_the_graphable_sampler_gives_each_row_its_own_rule_and_argmax_at_temperature_zero():
    logits = torch.randn(3, 4, 2048)
    greedy, narrow, plain = Sampling(250, 0.0, 0.0, 3.0), Sampling(1, 0.0, 1.0, 3.0), Sampling(0, 0.0, 1.0, 3.0)
    tokens = sample_rows(logits, rows_of(greedy, narrow, plain), torch.rand(3, 4))
    assert tokens.shape == (3, 4, 1)
    assert torch.equal(tokens[:2], logits[:2].argmax(-1, keepdim=True))  # top-k 1 is argmax too
    highest_uniform = sample_rows(logits[2:], rows_of(plain), torch.full((1, 4), 1 - 2**-24))
    assert torch.equal(highest_uniform, logits[2:].argmin(-1, keepdim=True))  # the last of the sorted tokens


def test_guidance_of_every_slot_at_once_is_each_pairs_guidance():
    logits, cfg = torch.randn(6, 4, 16), torch.tensor([3.0, 1.0, 0.5])
    expected = torch.cat([guided(logits[2 * s : 2 * s + 2], cfg[s].item()) for s in range(3)])
    assert torch.equal(guided_rows(logits, cfg), expected)
