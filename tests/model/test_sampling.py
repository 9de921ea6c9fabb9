"""Sampling from a request's own generator draws exactly what audiocraft draws from the global one."""

import math
from collections.abc import Callable

import pytest
import torch
from audiocraft.utils import utils

from musicgen_cog.model.sampling import RowSampling, Sampling, guided, guided_rows, sample, sample_rows

Rule = tuple[Sampling, Callable[[torch.Tensor], torch.Tensor]]  # ours, and audiocraft's draw
RULES: dict[str, Rule] = {
    "top_k": (Sampling(top_k=50, top_p=0.0, temperature=0.7, cfg_coef=3.0), lambda p: utils.sample_top_k(p, k=50)),
    "top_p": (Sampling(top_k=250, top_p=0.8, temperature=1.2, cfg_coef=3.0), lambda p: utils.sample_top_p(p, p=0.8)),
    "plain": (Sampling(top_k=0, top_p=0.0, temperature=1.0, cfg_coef=3.0), lambda p: utils.multinomial(p, 1)),
}


# the top-k cut at its narrowest: one token (argmax), and two (the second one kept)
TOP_K_EDGES: dict[str, Rule] = {
    "top_k 1": (Sampling(top_k=1, top_p=0.0, temperature=0.9, cfg_coef=3.0), lambda p: utils.sample_top_k(p, k=1)),
    "top_k 2": (Sampling(top_k=2, top_p=0.0, temperature=1.1, cfg_coef=3.0), lambda p: utils.sample_top_k(p, k=2)),
}


EVERY_RULE: dict[str, Rule] = RULES | TOP_K_EDGES


@pytest.mark.parametrize("rule", EVERY_RULE)
def test_each_rule_draws_what_audiocraft_draws_after_manual_seed(rule):
    """64 requests' worth of draws over 4 codebooks, each the token audiocraft draws."""
    sampling, audiocrafts = EVERY_RULE[rule]
    logits = torch.randn(64, 4, 2048)
    torch.manual_seed(11)
    reference = audiocrafts(torch.softmax(logits / sampling.temperature, dim=-1))
    mine = sample(logits, sampling, torch.Generator().manual_seed(11))
    assert mine.shape == (64, 4, 1) and torch.equal(mine, reference)


# probabilities 1/2, 1/4, 1/4, exactly: with top_p 3/4 the third token sits on the nucleus's edge
EDGE_LOGITS = torch.tensor([math.log(2.0), 0.0, 0.0])


def test_a_token_on_the_edge_of_the_nucleus_is_kept_as_audiocraft_keeps_it():
    """audiocraft keeps a token while the probability before it is at most top_p; so do both samplers."""
    edge = Sampling(top_k=0, top_p=0.75, temperature=1.0, cfg_coef=3.0)
    logits = EDGE_LOGITS.expand(1000, 1, 3)
    assert torch.equal(torch.softmax(EDGE_LOGITS, dim=-1), torch.tensor([0.5, 0.25, 0.25]))
    torch.manual_seed(12)
    reference = utils.sample_top_p(torch.softmax(logits, dim=-1), p=0.75)
    assert torch.equal(sample(logits, edge, torch.Generator().manual_seed(12)), reference)
    sweep = ((torch.arange(1000) + 0.5) / 1000).view(1000, 1)
    shares = torch.bincount(sample_rows(logits, rows_of(*[edge] * 1000), sweep).flatten(), minlength=3) / 1000
    assert shares.tolist() == [0.5, 0.25, 0.25]


def test_the_graphable_sampler_gives_each_token_the_draws_from_where_its_share_begins():
    """The quantile function: a draw exactly on the border between two tokens' shares of [0, 1)
    goes to the later one (a share holds its start, not its end)."""
    plain = rows_of(*[Sampling(top_k=0, top_p=0.0, temperature=1.0, cfg_coef=3.0)] * 4)
    borders = torch.tensor([[0.0], [0.5], [0.75], [0.5 - 2**-24]])
    assert sample_rows(EDGE_LOGITS.expand(4, 1, 3), plain, borders).flatten().tolist() == [0, 1, 2, 0]


def test_the_graphable_sampler_works_on_the_logits_device_whatever_torchs_default():
    """On a GPU torch's default device stays the CPU; here the default is `meta`, the logits a CPU's."""
    logits, rules, uniforms = torch.randn(3, 4, 2048), rows_of(*[r for r, _ in RULES.values()]), torch.rand(3, 4)
    expected = sample_rows(logits, rules, uniforms)
    with torch.device("meta"):
        assert torch.equal(sample_rows(logits, rules, uniforms), expected)


def test_each_slots_rule_is_kept_as_tensors_written_one_slot_at_a_time():
    """RowSampling: zeros of each field's type on the device given (whatever torch's default);
    `set` writes one slot's rule and no other, through `narrow`'s views."""
    with torch.device("meta"):
        rows = RowSampling.zeros(3, "cpu")
    fields = [rows.temperature, rows.top_k, rows.top_p, rows.cfg_coef]
    assert [(t.dtype, t.device.type, t.tolist()) for t in fields] == [
        (torch.float32, "cpu", [0.0] * 3),
        (torch.long, "cpu", [0] * 3),
        (torch.float32, "cpu", [0.0] * 3),
        (torch.float32, "cpu", [0.0] * 3),
    ]
    rows.set(2, Sampling(top_k=250, top_p=0.5, temperature=1.5, cfg_coef=3.0))
    rows.set(0, Sampling(top_k=40, top_p=0.0, temperature=0.5, cfg_coef=1.0))
    assert [t.tolist() for t in fields] == [[0.5, 0.0, 1.5], [40, 0, 250], [0.0, 0.0, 0.5], [1.0, 0.0, 3.0]]


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


def test_a_draw_at_the_top_of_the_cdf_takes_the_last_kept_token_never_one_that_was_cut():
    """A GPU's parallel cumsum may round the total past the last kept token's running sum, so that
    a draw near 1 lands beyond it; a uniform of exactly 1 stands in for that here. Each row keeps
    its own count: one token for top-k 1, two for top-k 2, the nucleus's for top-p."""
    probs = torch.tensor([0.4, 0.3, 0.2, 0.1])
    logits = probs.log().expand(3, 1, 4)
    rules = rows_of(Sampling(1, 0.0, 1.0, 3.0), Sampling(2, 0.0, 1.0, 3.0), Sampling(250, 0.75, 1.0, 3.0))
    tokens = sample_rows(logits, rules, torch.ones(3, 1))
    assert tokens.flatten().tolist() == [0, 1, 2]  # top-p 0.75 keeps 0.4, 0.3 and 0.2 (0.7 came before it)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_guidance_of_every_slot_at_once_is_each_pairs_guidance(dtype):
    """In the logits' own precision too (bf16 under a GPU's autocast), rounded as audiocraft rounds."""
    logits, cfg = torch.randn(6, 4, 16, dtype=dtype), torch.tensor([3.0, 1.0, 0.5])
    expected = torch.cat([guided(logits[2 * s : 2 * s + 2], cfg[s].item()) for s in range(3)])
    got = guided_rows(logits, cfg)
    assert got.dtype == dtype and torch.equal(got, expected)
