"""The ladder of decoding paths: its order, where each setting starts the descent, and that every
setting is checked, whichever path it would choose."""

from __future__ import annotations

import pytest

from musicgen_cog.model import decoding_path
from musicgen_cog.model.decoding_path import descent


def names(device: str) -> list[str]:
    return [path.name for path in descent(device)]


BELOW_BATCHED = ["per-slot", "audiocraft"]
GPU_LADDER = ["batched-rowwise-graphs", "batched-rowwise", "batched-sdpa-graphs", "batched-sdpa", *BELOW_BATCHED]


@pytest.mark.parametrize(
    "settings, device, expected",
    [
        ({}, "cuda", GPU_LADDER),
        ({}, "cpu", BELOW_BATCHED),  # a CPU's default: audiocraft's exact numbers
        ({"MUSICGEN_DECODER": "batched"}, "cpu", ["batched-rowwise", "batched-sdpa", *BELOW_BATCHED]),
        ({"MUSICGEN_ATTENTION": "sdpa"}, "cuda", ["batched-sdpa-graphs", "batched-sdpa", *BELOW_BATCHED]),
        ({"MUSICGEN_COMPILE": "default"}, "cuda", ["batched-rowwise-compiled-graphs", *GPU_LADDER]),
        ({"MUSICGEN_COMPILE": "default", "MUSICGEN_DECODER": "per-slot"}, "cuda", BELOW_BATCHED),
        ({"MUSICGEN_DECODER": "per-slot"}, "cuda", BELOW_BATCHED),
        ({"MUSICGEN_DECODER": "audiocraft"}, "cuda", ["audiocraft"]),
    ],
)
def test_the_settings_say_where_the_descent_starts_and_it_goes_down_the_ladder(settings, device, expected, monkeypatch):
    for name, value in settings.items():
        monkeypatch.setenv(name, value)
    assert names(device) == expected


def test_each_path_says_what_it_is():
    graphs, compiled = decoding_path.LADDER[0], decoding_path.batched_start("cuda")
    assert str(graphs) == "batched, row-wise attention, in CUDA graphs"
    assert str(decoding_path.LADDER[3]) == "batched, SDPA"
    assert str(decoding_path.PER_SLOT) == "per slot" and str(decoding_path.AUDIOCRAFT) == "audiocraft's own loop"
    assert compiled == graphs  # no compile mode set: the same rung


def test_only_the_paths_that_promise_it_are_held_to_batch_invariance():
    promised = [path.name for path in decoding_path.LADDER if path.batch_invariant]
    assert promised == ["batched-rowwise-graphs", "batched-rowwise", "per-slot"]


@pytest.mark.parametrize(
    "name, value, accepted",
    [
        ("MUSICGEN_DECODER", "turbo", "'auto', 'batched', 'per-slot', 'audiocraft'"),
        ("MUSICGEN_ATTENTION", "flash", "'rowwise', 'sdpa'"),
        ("MUSICGEN_COMPILE", "reduce-overhead", "'off', 'default', 'max-autotune-no-cudagraphs'"),
    ],
)
@pytest.mark.parametrize("decoder", ["per-slot", "audiocraft", "auto"])
def test_every_setting_is_checked_on_every_machine_whichever_path_is_taken(name, value, accepted, decoder, monkeypatch):
    monkeypatch.setenv("MUSICGEN_DECODER", decoder)
    monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"{name} must be one of {accepted}, got '{value}'"):
        descent("cpu")


def test_the_proof_setting_is_checked(monkeypatch):
    assert decoding_path.proof_wanted()
    monkeypatch.setenv("MUSICGEN_PROOF", "off")
    assert not decoding_path.proof_wanted()
    monkeypatch.setenv("MUSICGEN_PROOF", "no")
    with pytest.raises(ValueError, match="MUSICGEN_PROOF must be one of 'on', 'off', got 'no'"):
        decoding_path.proof_wanted()
