"""A window's sequence is filled as audiocraft's `LMModel.generate` fills it."""

from types import SimpleNamespace

import torch
from audiocraft.modules.codebooks_patterns import DelayedPatternProvider

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


def test_a_window_is_laid_out_in_audiocrafts_delay_pattern_and_read_back_as_codes():
    """Codebook k runs k steps behind, after an empty first step (audiocraft's delay pattern): the
    prompt's frames in place, UNKNOWN_TOKEN where frames are to come, the special token elsewhere.
    Decoding starts at the first step with a frame past the prompt; each write lands at its offset,
    and the filled sequence reads back as the prompt's codes followed by the new ones."""
    lm = SimpleNamespace(pattern_provider=DelayedPatternProvider(n_q=4), num_codebooks=4, special_token_id=SPECIAL)
    codes = [[10, 20], [30, 40], [50, 60], [70, 80]]  # [K, T]: the first 2 frames of 5
    conditions = {"description": (torch.ones(1, 3), torch.zeros(1, 3)), "self_wav": (torch.ones(2), None)}
    generator, sampling = torch.Generator(), Sampling(250, 0.0, 1.0, 3.0)
    laid = Window.laid_out(lm, torch.tensor([codes]), 5, conditions, sampling, generator=generator)

    def expected(k: int, step: int) -> int:
        frame = step - 1 - k
        return codes[k][frame] if 0 <= frame < 2 else UNKNOWN_TOKEN if 0 <= frame < 5 else SPECIAL

    assert laid.sequence.tolist() == [[[expected(k, step) for step in range(9)] for k in range(4)]]
    assert laid.mask.tolist() == [[0 <= step - 1 - k < 5 for step in range(9)] for k in range(4)]
    assert laid.first_step == 3 and laid.generator is generator and laid.special_token == SPECIAL
    assert laid.sampling is sampling  # the request's own top-k, top-p, temperature and guidance
    description, self_wav = conditions["description"], conditions["self_wav"]
    assert [id(t) for t in laid.tensors()] == [id(t) for t in (laid.sequence, laid.mask, *description, self_wav[0])]
    laid.offset = laid.first_step
    while not laid.finished:  # step s writes s, 2s, 3s, 4s: codebook k's frame f comes at step f + 1 + k
        laid.write(torch.tensor([[[1], [2], [3], [4]]]) * laid.offset)
    new = [[(k + 1) * (frame + 1 + k) for frame in range(2, 5)] for k in range(4)]
    assert laid.tokens(laid.sequence).tolist() == [[codes[k] + new[k] for k in range(4)]]


def test_a_window_is_laid_out_on_its_prompts_device_in_long_tokens():
    """The sequence lives where the prompt's codes do (a GPU's window never crosses to the host),
    shown on the meta device, which any machine has."""
    lm = SimpleNamespace(pattern_provider=DelayedPatternProvider(n_q=4), num_codebooks=4, special_token_id=SPECIAL)
    prompt = torch.zeros(1, 4, 2, dtype=torch.long, device="meta")
    laid = Window.laid_out(lm, prompt, 5, {}, Sampling(250, 0.0, 1.0, 3.0), generator=None)
    assert laid.sequence.device == prompt.device and laid.mask.device == prompt.device
    assert laid.sequence.dtype == torch.long
