"""Choosing the seed: none or -1 is random, any other value (0 included) is used as is.

Each request draws from its own streams started from it: musicgen_cog/model/randomness.py.
"""

from __future__ import annotations

import secrets

from .inputs import SEED_RANGE


def resolve_seed(seed: int | None) -> int:
    """The seed a request runs with: `seed` itself, or a fresh random one for None and -1."""
    if seed is None or seed == -1:
        return secrets.randbelow(SEED_RANGE[1] + 1)
    return seed
