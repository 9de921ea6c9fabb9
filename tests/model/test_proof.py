"""The proof of the decoding path: a healthy path passes it on any random weights; each fault a
GPU path could hide is caught by the check named for it, and setup steps down to a path that
passes, says so in one WARNING, and serves.

CPU models on tiny weights. The GPU's ladder (graph rungs first) is run with graphs 'captured' as
ReplayedStep (tests/model/conftest.py).
"""

from __future__ import annotations

import logging
import math
import re
from typing import Any

import pytest
import torch

from musicgen_cog.model import attention, fast_decode, proof, steps
from musicgen_cog.model.decoding_path import BATCHED, PER_SLOT, descent
from musicgen_cog.model.fast_decode import SlotDecoder
from musicgen_cog.model.loading import LoadedModel, load_model, start_decoding_loop
from musicgen_cog.model.proof import Check, prove, settle_decoding_path
from musicgen_cog.model.sampling import Sampling, sample_rows
from tests.fault_injection import ranked_from_the_wrong_end
from tests.model.conftest import GRAPHS, ReplayedStep
from tests.model.test_decoding_loop import request, tokens

SLOTS = 3  # the twins in slots 0 and 2, another request between them
CHUNK = attention.CHUNK


@pytest.mark.parametrize("path", [PER_SLOT, BATCHED], ids=lambda path: path.name)
def test_a_healthy_path_passes_its_proof_on_twenty_draws_of_random_weights(tiny_weights, path):
    """No false alarm: flat logits and near-ties of random weights pass as real ones would. Each
    draw is audiocraft's own initialisation of the LM (as the tiny checkpoint's), from its seed."""
    model = load_model(tiny_weights, device="cpu", slots=SLOTS)
    start_decoding_loop(model, SLOTS, path)
    lm: Any = model.musicgen.lm  # audiocraft's modules are reached by attribute
    init = lm.cfg.transformer_lm
    proofs = []
    for seed in range(20):
        torch.manual_seed(seed)
        lm._init_weights(init.weight_init, init.depthwise_init, init.zero_bias_init)
        proofs.append(prove(model))
    names = {"per-slot": ["step", "company"], "batched-rowwise": ["attention fp32", "step", "company", "sampler"]}
    assert all([check.name for check in p.checks] == names[path.name] for p in proofs)
    steps_error = [check.figure for p in proofs for check in p.checks if check.name == "step"]
    assert len(set(steps_error)) == 20  # twenty different models
    assert max(steps_error) < proof.STEP_ERROR[torch.float32] / 100  # fp32 differs from audiocraft's in its last bits


@pytest.fixture
def batched_first(tiny_weights, monkeypatch):
    """A CPU model whose descent starts at the batched step, as a GPU's does."""
    monkeypatch.setenv("MUSICGEN_DECODER", "batched")
    model = load_model(tiny_weights, device="cpu", slots=SLOTS)
    assert model.path == BATCHED
    return model


@pytest.fixture
def graphs_first(tiny_weights, replayed, monkeypatch):
    """A CPU model on the GPU's ladder: the batched step in graphs first."""
    monkeypatch.setattr(proof, "descent", lambda device: descent("cuda"))
    model = load_model(tiny_weights, device="cpu", slots=SLOTS)
    start_decoding_loop(model, SLOTS, GRAPHS)
    return model


def settled(model: LoadedModel, logs) -> list[str]:
    """Settle `model`'s path as setup() does; its WARNING lines. A request then decodes on it."""
    settle_decoding_path(model)
    assert tokens(model, 5, request(1)).shape == (1, 4, 50)
    return [r.getMessage() for r in logs.records if r.levelno == logging.WARNING]


def scale_the_second_chunk(monkeypatch) -> None:
    """The attention's scores of positions 256-511 come out 1.01 times too large."""
    real = attention.folded_attention

    def scaled(query, keys, values, lengths, span):
        keys = keys.clone()
        keys[:, :, CHUNK : 2 * CHUNK] *= 1.01
        return real(query, keys, values, lengths, span)

    monkeypatch.setattr(fast_decode, "rowwise_attention", scaled)


def mask_one_short_at_a_chunk_boundary(monkeypatch) -> None:
    """A row filled one position into a new chunk attends as if that chunk were empty."""
    real = attention.folded_attention

    def short(query, keys, values, lengths, span):
        past_a_boundary = (lengths % CHUNK == 1) & (lengths > CHUNK)
        return real(query, keys, values, torch.where(past_a_boundary, lengths - 1, lengths), span)

    monkeypatch.setattr(fast_decode, "rowwise_attention", short)


def cross_two_slots(monkeypatch) -> None:
    """The batched step feeds slot 0's rows slot 1's tokens, and slot 1's rows slot 0's."""
    real = SlotDecoder._forward

    def crossed(self, sequence, caches, position, length=0, busy=None):
        if isinstance(position, torch.Tensor):
            sequence = sequence[[2, 3, 0, 1, *range(4, sequence.shape[0])]]
        return real(self, sequence, caches, position, length, busy)

    monkeypatch.setattr(SlotDecoder, "_forward", crossed)


def numbers_that_depend_on_the_slot(monkeypatch) -> None:
    """The batched step's logits come out a little different in each slot (as a kernel whose
    reduction order follows a row's place would make them): no request's tokens need change."""
    real = SlotDecoder._forward

    def placed(self, sequence, caches, position, length=0, busy=None):
        logits = real(self, sequence, caches, position, length, busy)
        if isinstance(position, torch.Tensor):
            rows = torch.arange(logits.shape[0], dtype=logits.dtype).view(-1, 1, 1, 1)
            logits = logits * (1 + 1e-6 * rows)
        return logits

    monkeypatch.setattr(SlotDecoder, "_forward", placed)


def no_c_compiler(monkeypatch) -> None:
    """What Triton raises when it launches a kernel the first time and finds no C compiler."""

    def launch(*args):
        raise RuntimeError("Failed to find C compiler. Please specify via CC environment variable.")

    monkeypatch.setattr(fast_decode, "rowwise_attention", launch)


def sampler_from_the_wrong_end(monkeypatch) -> None:
    """The batched step's sampler ranks the tokens least probable first."""
    wrong = ranked_from_the_wrong_end(sample_rows)
    monkeypatch.setattr(steps, "sample_rows", wrong)
    monkeypatch.setattr(proof, "sample_rows", wrong)


def nan_from_the_step(monkeypatch) -> None:
    """The batched step's logits are NaN."""
    real = SlotDecoder._forward

    def nan(self, sequence, caches, position, length=0, busy=None):
        logits = real(self, sequence, caches, position, length, busy)
        return logits * math.nan if isinstance(position, torch.Tensor) else logits

    monkeypatch.setattr(SlotDecoder, "_forward", nan)


# fault: (where the descent ends, what each WARNING says, after "failed its proof: ")
FAULTS = {
    "attention scaled in one chunk": (scale_the_second_chunk, "batched-sdpa", [r"attention fp32 0\.00\d+ > 2e-05"]),
    "mask one short at a boundary": (
        mask_one_short_at_a_chunk_boundary, "batched-sdpa", [r"attention fp32 0\.0\d+ > 2e-05"]
    ),
    "two slots' rows crossed": (cross_two_slots, "per-slot", [r"step \d\.\d+ > 0\.001"] * 2),
    # SDPA promises no batch invariance: it serves
    "numbers that depend on the slot": (numbers_that_depend_on_the_slot, "batched-sdpa", [r"company \d+ > 0"]),
    "no C compiler for Triton": (
        no_c_compiler, "batched-sdpa", [r"warm-up raised RuntimeError: Failed to find C compiler\. .*"]
    ),
    "sampler from the wrong end": (sampler_from_the_wrong_end, "per-slot", [r"sampler \d+ > 0"] * 2),
    "NaN out of the step": (  # the warm-up's own requests meet it first
        nan_from_the_step, "per-slot", [r"warm-up raised RuntimeError: the model produced NaN", r"step inf > 0\.001"]
    ),
}  # fmt: skip


@pytest.mark.parametrize("fault", FAULTS)
def test_a_fault_on_the_batched_path_is_caught_by_its_check_and_setup_steps_down_to_a_path_that_passes(
    batched_first, fault, monkeypatch, logs
):
    install, expected, failures = FAULTS[fault]
    install(monkeypatch)
    warnings = settled(batched_first, logs)
    assert batched_first.path.name == expected
    rungs = ["batched, row-wise attention", "batched, SDPA", "per slot"]
    assert len(warnings) == len(failures)
    for warning, failure, path, below in zip(warnings, failures, rungs, rungs[1:], strict=False):
        assert warning.startswith(f"decoding path {path} failed its proof: ")
        assert warning.endswith(f"; trying {below}")
        assert re.search(failure, warning), warning


def test_a_capture_that_fails_in_setup_steps_down_to_the_same_step_without_graphs(graphs_first, monkeypatch, logs):
    def uncapturable(*args):
        raise RuntimeError("CUDA error: operation failed due to a previous error during capture")

    monkeypatch.setattr(steps, "CudaGraphStep", uncapturable)
    warnings = settled(graphs_first, logs)
    assert graphs_first.path.name == "batched-rowwise"
    assert warnings == [
        "decoding path batched, row-wise attention, in CUDA graphs failed its proof: warm-up raised CaptureFailed: "
        "CUDA graph capture failed (RuntimeError: CUDA error: operation failed due to a previous error during "
        "capture); trying batched, row-wise attention"
    ]
    assert graphs_first.healthy()  # set up afresh without graphs: nothing left mid-capture to replace it for


def test_the_graph_rung_is_proven_on_its_replays(graphs_first, replayed, monkeypatch, logs):
    """A healthy path in graphs: proven as served, by replaying what warm-up captured."""
    replays = []
    real = ReplayedStep.replay

    def counted(self):
        replays.append(1)
        return real(self)

    monkeypatch.setattr(ReplayedStep, "replay", counted)
    settle_decoding_path(graphs_first)
    assert graphs_first.path.name == "batched-rowwise-graphs" and len(replayed) == 1
    assert len(replays) >= proof.STEPS["cpu"]  # the proof's steps were replays of the captured step
    lines = [r.getMessage() for r in logs.records if r.getMessage().startswith("decoding path: ")]
    assert len(lines) == 1
    assert lines[0].startswith("decoding path: batched, row-wise attention, in CUDA graphs, proven in ")
    for check in ("attention fp32", "step", "company 0 <= 0", "sampler 0 <= 0"):
        assert check in lines[0]


def test_with_the_proof_off_the_starting_path_serves_unproven(batched_first, monkeypatch, logs):
    """MUSICGEN_PROOF=off: a second saved at boot, and a faulty path is not noticed (off by choice)."""
    monkeypatch.setenv("MUSICGEN_PROOF", "off")
    sampler_from_the_wrong_end(monkeypatch)
    assert settle_decoding_path(batched_first) is None
    assert batched_first.path == BATCHED
    assert "decoding path: batched, row-wise attention, unproven (MUSICGEN_PROOF=off)" in logs.text


def test_audiocrafts_loop_is_the_reference_and_needs_no_proof(tiny_weights, monkeypatch, logs):
    monkeypatch.setenv("MUSICGEN_DECODER", "audiocraft")
    model = load_model(tiny_weights, device="cpu")
    done = settle_decoding_path(model)
    assert done is not None and done.checks == () and model.loop is None
    assert "decoding path: audiocraft's own loop (the reference itself: nothing to prove)" in logs.text


def test_a_check_that_raises_fails_and_says_what_it_raised():
    raised = Check("step", math.nan, 1e-3, "RuntimeError: boom")
    assert not raised.passed and str(raised) == "step raised RuntimeError: boom"
    assert not Check("step", math.nan, 1e-3).passed  # NaN is never within a threshold
    assert str(Check("sampler", 3.0, 0)) == "sampler 3 > 0"


def test_when_every_path_of_ours_fails_the_descent_ends_on_audiocrafts_own_loop(batched_first, monkeypatch, logs):
    """The batched step's logits NaN, and per slot's skewed: audiocraft's loop, the reference, serves."""
    real = SlotDecoder.step_slot
    monkeypatch.setattr(SlotDecoder, "step_slot", lambda *args: real(*args) + torch.arange(2048.0))
    nan_from_the_step(monkeypatch)
    warnings = settled(batched_first, logs)
    assert batched_first.path.name == "audiocraft" and batched_first.loop is None
    assert re.search(
        r"^decoding path per slot failed its proof: step \d+(\.\d+)? > 0\.001; trying audiocraft", warnings[-1]
    )


def test_the_attention_check_covers_every_chunk_boundary_of_the_cache():
    assert proof.boundary_lengths(3 * CHUNK + 40) == [1, 2, 255, 256, 257, 511, 512, 513, 767, 768, 769, 807, 808]


def test_an_inverse_cdf_in_fp64_explains_its_own_draws_and_no_other():
    """The sampler's reference: its own draws, a tie's partner and a draw at a rounding's distance
    from a CDF boundary are explained; a token from elsewhere in the distribution is not."""
    logits = torch.tensor([[2.0, 1.0, 1.0, 0.0, -1.0]]).double()
    probs = torch.softmax(logits, dim=-1)[0]
    rule = Sampling(top_k=0, top_p=0.0, temperature=1.0, cfg_coef=3.0)
    first_two = float(probs[0] + probs[1])  # the CDF after tokens 0 and 1 (ties of 1 and 2 by probability)
    cases = {
        (0.10, 0): True,
        (first_two - 0.01, 1): True,
        (first_two - 0.01, 2): True,  # a tie: the same probability as token 1
        (first_two + 1e-5, 1): True,  # within SAMPLER_TOLERANCE of the boundary
        (0.10, 4): False,
        (0.99, 0): False,
    }
    for (uniform, token), expected in cases.items():
        explained = proof.explained_draws(logits, rule, torch.tensor([uniform]).double(), torch.tensor([token]))
        assert bool(explained[0]) is expected, (uniform, token)


def test_a_top_p_cut_is_taken_either_side_of_a_rounding():
    """Token 1 sits exactly at the top-p cut: an fp32 sum may keep it or not, so either is explained."""
    probs = torch.tensor([[0.5, 0.3, 0.2]]).double()
    rule = Sampling(top_k=0, top_p=0.5, temperature=1.0, cfg_coef=3.0)
    logits = probs.log()
    for token in (0, 1):
        assert proof.explained_draws(logits, rule, torch.tensor([0.9]).double(), torch.tensor([token]))[0]
    assert not proof.explained_draws(logits, rule, torch.tensor([0.9]).double(), torch.tensor([2]))[0]
