"""`make mutants` asks a reason in docs/mutants.md for each survivor, in its own module's section, and
ends a test that hangs on a mutant once it has run several times its usual time."""

import json

from tests import hang_guard
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


def test_a_test_hangs_past_five_times_its_own_clean_time_and_a_floor_for_its_fixtures(tmp_path, monkeypatch):
    quick, slow = "tests/model/test_x.py::test_quick", "tests/model/test_x.py::test_slow"
    (tmp_path / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": {quick: 0.2, slow: 3.0}}))
    monkeypatch.chdir(tmp_path)  # mutmut runs the tests beside its stats
    hang_guard.usual_seconds.cache_clear()
    try:
        bounds = [hang_guard.hang_seconds(test) for test in (quick, slow, "tests/model/test_x.py::test_new")]
    finally:
        hang_guard.usual_seconds.cache_clear()
    assert bounds == [9.0, 23.0, 60.0]  # a test the clean run did not time gets a minute
