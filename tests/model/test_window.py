"""A window's sequence is filled as audiocraft's `LMModel.generate` fills it."""

import torch

from musicgen_cog.model.sampling import Sampling
from musicgen_cog.model.window import UNKNOWN_TOKEN, Window

SPECIAL = 2048


def window(sequence: list[list[int]], mask: list[list[bool]]) -> Window:
    return Window(
        sequence=torch.tensor([sequence]),
        mask=torch.tensor(mask),
        first_step=0,
        conditions={},
        sampling=Sampling(250, 0.0, 1.0, 3.0),
        generator=torch.Generator(),
        special_token=SPECIAL,
    )


def test_a_write_keeps_prompt_tokens_marks_invalid_places_and_advances():
    steps = []
    filled = window([[UNKNOWN_TOKEN, 5], [7, 6], [UNKNOWN_TOKEN, 9]], [[True, True], [True, True], [False, True]])
    filled.on_step = lambda: steps.append(filled.offset)
    filled.write(torch.tensor([[[11], [12], [13]]]))
    assert filled.sequence[0, :, 0].tolist() == [11, 7, SPECIAL]  # new, prompt kept, invalid in the pattern
    assert steps == [1] and not filled.finished
    assert torch.equal(filled.last_tokens(), torch.tensor([[[11], [7], [SPECIAL]]] * 2))  # the CFG pair's input
    filled.write(torch.tensor([[[1], [2], [3]]]))
    assert filled.sequence[0, :, 1].tolist() == [5, 6, 9] and filled.finished  # all prompt: nothing overwritten
