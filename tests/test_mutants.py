"""`make mutants` asks a reason in docs/mutants.md for each survivor, in its own module's section."""

import json
import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT
from tests.mutants import unexplained

SAMPLING = "musicgen_cog.model.sampling."


def test_a_survivor_is_explained_only_by_its_own_name_in_its_own_modules_section():
    listed, unlisted, later = (
        SAMPLING + "x_guided__mutmut_5",
        SAMPLING + "x_guided__mutmut_6",
        SAMPLING + "x_guided__mutmut_50",
    )
    survivors = [f"{listed}: survived", f"{unlisted}: survived", f"{later}: survived"]
    assert unexplained("sampling", survivors) == survivors[1:]  # `..._5` explains neither 6 nor 50
    assert unexplained("attention", survivors[:1]) == survivors[:1]  # another module's reason is no reason


def test_a_survivor_the_page_lists_as_left_not_equivalent_is_not_explained():
    step = "xǁDecodingLoopǁ_step__mutmut_"
    page = f"### `model/decoding_loop.py`\n\n`{step}16`: why\n\nLeft, not equivalent:\n\n`{step}17`: why not\n"
    equivalent, left = (f"musicgen_cog.model.decoding_loop.{step}{n}: survived" for n in (16, 17))
    assert unexplained("decoding_loop", [equivalent, left], page) == [left]


def test_a_timeout_was_caught_and_needs_no_reason():
    assert unexplained("sampling", [SAMPLING + "x_guided__mutmut_6: timeout"]) == []


# a module-scoped fixture with two instances, and a test without it; the times mutmut's stats run kept
SAMPLE = """
import pytest

@pytest.fixture(scope="module", params=["a", "b"])
def shared(request):
    print(f"built {request.param}")
    return request.param

def test_slow(shared):
    print(f"ran slow[{shared}]")

def test_fast(shared):
    print(f"ran fast[{shared}]")

def test_alone():
    print("ran alone")
"""
SECONDS = {"slow[a]": 5.0, "fast[a]": 1.0, "slow[b]": 3.0, "fast[b]": 0.5, "alone": 2.0}


def order_run(tmp_path: Path, mutant: str) -> list[str]:
    (tmp_path / "test_sample.py").write_text(SAMPLE)
    seconds = {f"test_sample.py::test_{name}": time for name, time in SECONDS.items()}
    (tmp_path / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": seconds}))
    done = subprocess.run(
        [sys.executable, "-m", "pytest", "-p", "tests.fastest_first", "-s", "-q", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT), "MUTANT_UNDER_TEST": mutant},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = [line.lstrip(".") for line in done.stdout.splitlines()]  # after the progress dots
    return [line for line in lines if line.startswith(("built", "ran"))]


def test_a_mutants_tests_run_fastest_first_each_shared_instance_built_once(tmp_path):
    """mutmut stops at a mutant's first failing test: the quick ones first judge most mutants in seconds."""
    assert order_run(tmp_path, "x_step__mutmut_3") == [
        "built b", "ran fast[b]", "ran slow[b]", "built a", "ran fast[a]", "ran slow[a]", "ran alone",
    ]  # fmt: skip


def test_mutmuts_own_runs_keep_pytests_order(tmp_path):
    assert order_run(tmp_path, "")[:3] == ["built a", "ran slow[a]", "ran fast[a]"]
