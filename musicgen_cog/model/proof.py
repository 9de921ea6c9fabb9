"""The proof of the decoding path: before the server says READY, the path it is about to serve
with, in its real form, is checked against audiocraft's own arithmetic on this checkpoint and card.

Each check gives a figure and passes when it is at most its threshold (a NaN never passes):
- attention: the batched step's attention (row-wise kernels, or SDPA under a mask) against a plain
  fp64 reference over exactly each row's filled positions, on random data at every length around
  every chunk boundary up to the cache's length, rows of different lengths in one call: the
  largest error of a row relative to its largest value, with fp32 inputs (where a scale off by
  1e-3 shows) and with the cache's own dtype (where its loads and stores are used).
- step: windows decoded through the loop's steps (graph replays where graphs are on, the compiled
  step where compile is on), then audiocraft's own forward over the same sequences (eager, the
  same autocast): the relative RMS error of the guided logits each token was drawn from, centred
  (a softmax ignores a shift), worst step and codebook. Relative to the logits' own spread, it
  holds for flat logits (random tiny weights) as for peaked ones (real weights).
- company (paths that promise it): the same seeded request in the lowest slot and, joining two
  steps later, in the highest, beside different requests in every slot between: sequence steps
  whose tokens or logits are not bitwise the same.
- sampler (the batched step's own): its tokens for fixed uniforms against an fp64 inverse CDF over
  the same probabilities, for greedy, top-k and top-p rules, flat and peaked logits: tokens that
  rounding cannot explain.
`settle_decoding_path` warms up and proves each rung of the descent (decoding_path.py) until one
passes; audiocraft's own loop, the reference itself, needs no proof.
"""

from __future__ import annotations

import functools
import logging
import math
import time
import typing as tp
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from .decoding_path import AUDIOCRAFT, DecodingPath, descent, proof_wanted
from .faults import is_sticky
from .generation import condition_tensors
from .loading import LoadedModel, start_decoding_loop
from .sampling import RowSampling, Sampling, sample_rows
from .steps import BatchedSteps, Steps
from .warm_up import warm_up
from .window import Window

log = logging.getLogger(__name__)
CHUNK = 256  # the attention's chunk (attention.CHUNK): where a masking slip would hide
# Thresholds. attention: fp32 inputs err by the accumulation's rounding, about 1e-6 of a row's
# largest value over 2,304 positions (measured on CPU: docs); a half-precision output is rounded
# once more, by at most eps/2 of a value.
ATTENTION_FP32 = 2e-5
ATTENTION_ROUNDINGS = 4  # a half-precision output may differ by this many of its dtype's eps
# step: fp32 paths differ from audiocraft's forward by the order of their sums, about 1e-6 of the
# logits' spread; half-precision paths by fp16's rounding carried through every layer (bf16,
# 8x coarser than fp16, measured on CPU at full size: docs)
STEP_ERROR = {torch.float32: 1e-3, torch.float16: 5e-2, torch.bfloat16: 1.5e-1}
SAMPLER_TOLERANCE = 2.5e-4  # of the kept total: fp32 cumsum of 2,048 probabilities errs by at most ~n*eps
PROMPT = "proof of the decoding path"
SEED = 1234
STEPS = {"cuda": 64, "cpu": 8}  # decoding steps of the step and company checks
JOIN_LATER = 2  # steps the highest slot's twin joins after the lowest's
SAMPLING = Sampling(top_k=250, top_p=0.0, temperature=1.0, cfg_coef=3.0)
OTHER_RULES = (  # what the requests between the twins sample with
    Sampling(top_k=0, top_p=0.9, temperature=1.0, cfg_coef=3.0),
    Sampling(top_k=250, top_p=0.0, temperature=0.0, cfg_coef=3.0),
    Sampling(top_k=0, top_p=0.0, temperature=1.2, cfg_coef=1.0),
    Sampling(top_k=20, top_p=0.0, temperature=0.7, cfg_coef=5.0),
)
SAMPLER_RULES = (*OTHER_RULES, SAMPLING, Sampling(1, 0.0, 1.0, 3.0), Sampling(0, 0.3, 1.5, 3.0))
SAMPLER_SCALES = (0.3, 3.0, 12.0)  # logits' spread: flat to peaked
SAMPLER_DRAWS = 8  # uniforms per rule and spread


@dataclass(frozen=True)
class Check:
    name: str
    figure: float
    threshold: float
    error: str | None = None  # what it raised, if it raised

    @property
    def passed(self) -> bool:
        return self.error is None and self.figure <= self.threshold  # False for NaN

    def __str__(self) -> str:
        if self.error is not None:
            return f"{self.name} raised {self.error}"
        return f"{self.name} {self.figure:.3g} {'<=' if self.passed else '>'} {self.threshold:.3g}"


class ProofFailed(RuntimeError):
    """A check of a path failed, or raised: its message names the path and the check."""


@dataclass(frozen=True)
class Proof:
    """What a path's proof found: every check, and the seconds it took."""

    path: DecodingPath
    checks: tuple[Check, ...]
    seconds: float

    def __str__(self) -> str:
        if self.path == AUDIOCRAFT:
            return f"{self.path} (the reference itself: nothing to prove)"
        return f"{self.path}, proven in {self.seconds:.1f} s ({', '.join(str(check) for check in self.checks)})"


def settle_decoding_path(model: LoadedModel) -> Proof | None:
    """Warm `model` up, then prove its path; on a failure, one WARNING and the next rung down,
    proven in turn, until a path passes. None: MUSICGEN_PROOF=off. A lower rung is warmed up
    again on a GPU (its own kernels, its graphs); on a CPU the first warm-up serves them all."""
    rungs = descent(model.device)
    rungs = rungs[rungs.index(model.path) :] if model.path in rungs else [model.path]
    for path, below in zip(rungs, [*rungs[1:], None], strict=True):
        if path != model.path:
            assert model.plan is not None  # a rung above audiocraft's loop had a loop
            start_decoding_loop(model, model.plan.limit, path)
        try:
            proof = _warm_up_and_prove(model, warm=path == rungs[0] or model.device == "cuda" or path.graphs)
        except ProofFailed as failed:
            if below is None:
                raise
            log.warning("decoding path %s failed its proof: %s; trying %s", path, failed, below)
            continue
        if proof is None:
            log.info("decoding path: %s, unproven (MUSICGEN_PROOF=off)", path)
        else:
            log.info("decoding path: %s", proof)
        return proof
    raise AssertionError("the descent ends on audiocraft's own loop, which passes by definition")


def _warm_up_and_prove(model: LoadedModel, warm: bool) -> Proof | None:
    """The warm-up (where `warm`), then the proof unless MUSICGEN_PROOF=off; ProofFailed when the
    warm-up raises (a sticky device error is raised as it is: the device is gone) or a check fails."""
    if warm:
        try:
            warm_up(model)
        except Exception as exc:
            if is_sticky(exc, model.device):
                raise
            raise ProofFailed(f"warm-up raised {type(exc).__name__}: {exc}") from exc
    return prove(model) if proof_wanted() else None


def prove(model: LoadedModel) -> Proof:
    """Every check that applies to `model`'s path (module docstring), in the loop's thread when
    it is idle; ProofFailed names the first that fails."""
    started, loop = time.perf_counter(), model.loop
    if loop is None:
        return Proof(model.path, (), 0.0)
    checks: list[Check] = loop.call(lambda: _checks(model), when_idle=True).result()
    if not checks[-1].passed:
        raise ProofFailed(str(checks[-1]))
    return Proof(model.path, tuple(checks), time.perf_counter() - started)


def _checks(model: LoadedModel) -> list[Check]:
    """The checks of `model`'s path, each run once the one before it has passed; on the loop's
    thread (its stream, under the model's autocast). A check that raises fails (a sticky device
    error is raised: the device is gone)."""
    assert model.loop is not None
    steps, device, dtype = model.loop.steps, model.device, model.cache_dtype()
    planned: list[tuple[str, float, Callable[[], float]]] = []
    if isinstance(steps, BatchedSteps):
        decoder = steps.decoder
        planned.append(("attention fp32", ATTENTION_FP32, lambda: attention_error(decoder, torch.float32)))
        if dtype != torch.float32:
            threshold = ATTENTION_ROUNDINGS * torch.finfo(dtype).eps
            planned.append((f"attention {_short(dtype)}", threshold, lambda: attention_error(decoder, dtype)))
    decoded = functools.cache(lambda: decode_and_compare(model, steps))
    planned.append(("step", STEP_ERROR[dtype], lambda: decoded()[0]))
    if model.path.batch_invariant and model.loop.slots > 1:
        planned.append(("company", 0, lambda: decoded()[1]))
    if isinstance(steps, BatchedSteps):
        planned.append(("sampler", 0, lambda: float(sampler_misses(device, dtype, model.codebook_size))))
    done: list[Check] = []
    for name, threshold, measure in planned:
        try:
            done.append(Check(name, measure(), threshold))
        except Exception as exc:
            if is_sticky(exc, device):
                raise
            done.append(Check(name, math.nan, threshold, f"{type(exc).__name__}: {exc}"))
        if not done[-1].passed:
            break
    return done


def attention_error(decoder: tp.Any, dtype: torch.dtype) -> float:
    """The largest error of `decoder.attend` against `reference_attention` (absolute up to 1,
    relative beyond: values are standard normal), at every length around every chunk boundary of
    `decoder`'s cache, in calls of `decoder.rows` rows of different lengths, inputs in `dtype`."""
    attn = decoder.lm.transformer.layers[0].self_attn
    heads, dim, rows, length = attn.num_heads, attn.embed_dim // attn.num_heads, decoder.rows, decoder.length
    device = next(decoder.lm.parameters()).device
    generator = torch.Generator(device).manual_seed(SEED)
    lengths = boundary_lengths(length)
    lengths += lengths[: -len(lengths) % rows]  # whole calls: every row in use
    errors = []
    for first in range(0, len(lengths), rows):
        group = lengths[first : first + rows]
        query = torch.randn((rows, heads, 1, dim), generator=generator, device=device).to(dtype)
        keys, values = (
            torch.randn((rows, heads, length, dim), generator=generator, device=device).to(dtype) for _ in range(2)
        )
        got = decoder.attend(query, keys, values, torch.tensor(group, device=device), length)
        expected = reference_attention(query, keys, values, group)
        errors.append(((got.double() - expected).abs() / expected.abs().clamp(min=1)).flatten(1).amax(dim=1))
    return _worst(torch.cat(errors))


def boundary_lengths(length: int) -> list[int]:
    """Filled lengths 1, 2, each chunk boundary and its neighbours, and the whole cache."""
    around = {n for boundary in range(CHUNK, length, CHUNK) for n in (boundary - 1, boundary, boundary + 1)}
    return sorted({1, 2, length - 1, length} | around)


def reference_attention(
    query: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lengths: list[int]
) -> torch.Tensor:
    """Each row's softmax attention over exactly its first `lengths[row]` positions, in fp64."""
    dim = query.shape[-1]
    rows = []
    for row, filled in enumerate(lengths):
        q, k, v = (t[row].double() for t in (query, keys[:, :, :filled], values[:, :, :filled]))
        weights = torch.softmax(q @ k.transpose(-1, -2) * dim**-0.5, dim=-1)
        rows.append(weights @ v)
    return torch.stack(rows)


def decode_and_compare(model: LoadedModel, steps: Steps) -> tuple[float, float]:
    """Decode the twins and the requests between them through `steps` (module docstring); the
    step figure (the worst of the lowest twin's and one other's, against audiocraft's forward) and
    the company figure (0 with one slot: a twin alone)."""
    musicgen, lm, device, slots = model.musicgen, model.musicgen.lm, model.device, steps.decoder.slots
    attributes, _ = musicgen._prepare_tokens_and_attributes([PROMPT], None)
    conditions = condition_tensors(lm, attributes)
    prefix = sum(tensor.shape[1] for tensor, _ in conditions.values())
    count = STEPS[device]
    # on a GPU the windows start far enough in to cross the first chunk boundary while decoding
    prompt_frames = max(1, CHUNK - count // 2 - prefix) if device == "cuda" else 1
    codes = torch.Generator().manual_seed(SEED)
    shape = (1, lm.num_codebooks, prompt_frames)
    prompts = [torch.randint(0, lm.card, shape, generator=codes).to(device) for _ in range(slots)]
    prompts[-1] = prompts[0]  # the twins: one request in the lowest slot and the highest
    decoded = []
    for slot, prompt in enumerate(prompts):
        twin = slot in (0, slots - 1)
        sampling = SAMPLING if twin else OTHER_RULES[(slot - 1) % len(OTHER_RULES)]
        generator = torch.Generator(device).manual_seed(SEED if twin else SEED + slot)
        window = Window.laid_out(lm, prompt, prompt_frames + count, conditions, sampling, generator=generator)
        window.slot = slot
        decoded.append(_Decoded(window, join=JOIN_LATER if slot and twin else 0))
    _decode(steps, decoded)
    compared = [decoded[0], *decoded[1 : min(2, slots - 1)]]  # the lowest twin, and the request beside it
    error = _worst(torch.tensor([_step_error(lm, conditions, one) for one in compared]))
    return error, float(_differences(decoded[0], decoded[-1]))


@dataclass
class _Decoded:
    window: Window
    join: int  # the loop step it joins at
    sequence: torch.Tensor | None = None  # once it has finished
    logits: dict[int, torch.Tensor] = field(default_factory=dict)  # by sequence step: those its token was drawn from


def _decode(steps: Steps, decoded: list[_Decoded]) -> None:
    """Run the windows through `steps` as the loop does, each joining at its step, recording the
    guided logits of every step and each window's sequence; their slots are left free."""
    waiting, active, tick = list(decoded), list[_Decoded](), 0
    while waiting or active:
        for one in [one for one in waiting if one.join <= tick]:
            steps.admit(one.window)
            waiting.remove(one)
            active.append(one)
        if active:
            failed = steps.step([one.window for one in active])
            if failed:
                raise next(iter(failed.values()))
            for one in active:
                one.logits[one.window.offset - 1] = steps.guided_logits(one.window.slot).float().clone()
            for one in [one for one in active if one.window.finished]:
                one.sequence = steps.result(one.window).clone()
                steps.vacate(one.window)
                active.remove(one)
        tick += 1


def _step_error(lm: tp.Any, conditions: dict, decoded: _Decoded) -> float:
    """The worst relative RMS error of `decoded`'s guided logits against audiocraft's forward over
    its sequence with its conditions (`lm(...)`, as `LMModel.generate`'s steps compute them)."""
    assert decoded.sequence is not None
    if (decoded.sequence < 0).any():  # the batched step marks a slot whose logits were not finite
        return math.inf
    sequence = decoded.sequence
    conditional, unconditional = lm(torch.cat([sequence, sequence]), [], condition_tensors=conditions).float()
    expected = unconditional + (conditional - unconditional) * decoded.window.sampling.cfg_coef  # [K, S, card]
    steps = sorted(decoded.logits)
    got = torch.stack([decoded.logits[step] for step in steps], dim=1)  # [K, steps, card]
    reference = expected[:, [step - 1 for step in steps]]  # the logits at step - 1 predict step's tokens
    return _worst(_centred_rms(got - reference) / _centred_rms(reference).clamp(min=1e-12))


def _centred_rms(logits: torch.Tensor) -> torch.Tensor:
    """The RMS over the last axis of `logits` less their mean: their spread, blind to a shift."""
    return (logits - logits.mean(-1, keepdim=True)).square().mean(-1).sqrt()


def _differences(lowest: _Decoded, highest: _Decoded) -> int:
    """Sequence steps where the twins' tokens or guided logits are not bitwise the same."""
    assert lowest.sequence is not None and highest.sequence is not None
    tokens = (lowest.sequence != highest.sequence).any(dim=1)[0]
    steps = set(tokens.nonzero().flatten().tolist())
    steps |= {step for step, got in lowest.logits.items() if not torch.equal(got, highest.logits[step])}
    return len(steps)


def sampler_misses(device: str, dtype: torch.dtype, card: int) -> int:
    """Tokens `sample_rows` draws for fixed uniforms that the fp64 inverse CDF over the same
    probabilities does not explain (SAMPLER_* rules, spreads and draws, 4 codebooks)."""
    generator = torch.Generator(device).manual_seed(SEED)
    per_rule = len(SAMPLER_SCALES) * SAMPLER_DRAWS
    rows, codebooks = len(SAMPLER_RULES) * per_rule, 4
    scales = torch.tensor(SAMPLER_SCALES, device=device).repeat_interleave(SAMPLER_DRAWS).repeat(len(SAMPLER_RULES))
    logits = torch.randn((rows, codebooks, card), generator=generator, device=device)
    logits = (logits * scales.view(-1, 1, 1)).to(dtype)
    uniforms = torch.rand((rows, codebooks), generator=generator, device=device)
    rule = RowSampling.zeros(rows, device)
    for row in range(rows):
        rule.set(row, SAMPLER_RULES[row // per_rule])
    tokens = sample_rows(logits, rule, uniforms).squeeze(-1).cpu()
    logits64, uniforms64 = logits.cpu().double(), uniforms.cpu().double()
    misses = 0
    for index, sampling in enumerate(SAMPLER_RULES):
        mine = slice(index * per_rule, (index + 1) * per_rule)
        misses += int((~explained_draws(logits64[mine], sampling, uniforms64[mine], tokens[mine])).sum())
    return misses


def explained_draws(
    logits: torch.Tensor, sampling: Sampling, uniforms: torch.Tensor, tokens: torch.Tensor
) -> torch.Tensor:
    """Whether each token [...] is what an inverse CDF in fp64 draws for its uniform from `logits`
    [..., card] under `sampling`: the same token, one of equal probability, or a token whose interval
    of the CDF lies within SAMPLER_TOLERANCE of the draw (a rounding apart); a top-p cut is taken
    SAMPLER_TOLERANCE either side."""
    chosen = tokens.unsqueeze(-1)
    if sampling.temperature <= 0:
        return (logits.gather(-1, chosen) == logits.amax(dim=-1, keepdim=True)).squeeze(-1)
    probs = torch.softmax(logits / sampling.temperature, dim=-1)
    ordered, order = torch.sort(probs, dim=-1, descending=True, stable=True)
    places = torch.arange(probs.shape[-1]).expand(probs.shape)
    rank = torch.empty_like(order).scatter_(-1, order, places).gather(-1, chosen)  # the token's place in order
    running = ordered.cumsum(dim=-1)
    if sampling.top_p > 0:
        cuts = (sampling.top_p - SAMPLER_TOLERANCE, sampling.top_p + SAMPLER_TOLERANCE)
        keeps = [running - ordered <= cut for cut in cuts]
    else:
        first = torch.arange(probs.shape[-1]) < sampling.top_k
        keeps = [(first | (sampling.top_k <= 0)).expand(probs.shape)]
    explained = torch.zeros(tokens.shape, dtype=torch.bool)
    for keep in keeps:
        cdf = (ordered * keep).cumsum(dim=-1)
        total = cdf[..., -1:]
        target = uniforms.unsqueeze(-1) * total
        drawn = torch.searchsorted(cdf, target, right=True).clamp(max=keep.sum(-1, keepdim=True) - 1)
        low = torch.where(rank > 0, cdf.gather(-1, (rank - 1).clamp(min=0)), 0.0)
        slack = SAMPLER_TOLERANCE * total
        within = keep.gather(-1, rank) & (low - slack <= target) & (target <= cdf.gather(-1, rank) + slack)
        tie = probs.gather(-1, chosen) == ordered.gather(-1, drawn)
        explained |= (within | tie).squeeze(-1)
    return explained


def _worst(values: torch.Tensor) -> float:
    """The largest of `values`; NaN if any is NaN (so that the check fails)."""
    if torch.isnan(values).any():
        return math.nan
    return float(values.max()) if values.numel() else 0.0


def _short(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype))
