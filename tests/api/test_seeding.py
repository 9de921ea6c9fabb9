"""Seeds: none and -1 are random, any other value (0 included) is used as given."""

from musicgen_cog.api.seeding import resolve_seed


def test_explicit_seeds_are_kept_including_zero():
    assert resolve_seed(0) == 0 and resolve_seed(1234) == 1234 and resolve_seed(2**32 - 1) == 2**32 - 1


def test_none_and_minus_one_draw_a_fresh_seed_in_range():
    seeds = {resolve_seed(None) for _ in range(5)} | {resolve_seed(-1) for _ in range(5)}
    assert len(seeds) > 1 and all(0 <= s < 2**32 for s in seeds)
