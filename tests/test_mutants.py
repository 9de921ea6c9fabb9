"""`make mutants` asks a reason in docs/mutants.md for each survivor, in its own module's section."""

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
