"""Sampling from a request's own generator draws exactly what audiocraft draws from the global one."""

import pytest
import torch
from audiocraft.utils import utils

from musicgen_cog.model.sampling import Sampling, guided, sample

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
