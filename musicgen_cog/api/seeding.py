"""Choosing and applying the seed: none or -1 is random, any other value (0 included) is used as is."""

from __future__ import annotations

import random
import secrets

import numpy as np
import torch

from .inputs import SEED_RANGE


def resolve_seed(seed: int | None) -> int:
    """The seed a request runs with: `seed` itself, or a fresh random one for None and -1."""
    if seed is None or seed == -1:
        return secrets.randbelow(SEED_RANGE[1] + 1)
    return seed


def seed_everything(seed: int) -> None:
    """Seed every generator generation draws from (python, numpy, torch CPU and CUDA)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)  # also seeds every CUDA device
    torch.backends.cudnn.deterministic = True
