"""The KV cache is sized once for the longest prefix an accepted request can bring: the prompt
is bounded in T5 tokens, the melody's chroma by the window. The tiny checkpoint's chroma
conditioner has the real one's rate and hop, so its frame counts are the real model's."""

from __future__ import annotations

import pytest
import torch

from musicgen_cog.audio.decoding import Audio
from musicgen_cog.errors import InputError
from musicgen_cog.model.conditions import MAX_TEXT_TOKENS, check_prompt_tokens, longest_prefix
from musicgen_cog.model.generation import GenerationRequest, generate_tokens
from musicgen_cog.model.loading import load_model
from musicgen_cog.model.randomness import RequestRandomness
from musicgen_cog.model.sampling import Sampling
from musicgen_cog.model.steps import cache_positions, window_steps
from tests.helpers import tone

CHROMA_FRAMES_OF_30_S = 30 * 32000 // 4096 + 1  # a centred STFT with a 4,096-sample hop


@pytest.fixture(scope="module")
def model(tiny_weights):
    return load_model(tiny_weights, device="cpu", slots=1)


def t5_tokens(model, prompt: str) -> int:
    conditioner = model.musicgen.lm.condition_provider.conditioners["description"]
    return int(conditioner.tokenize([prompt])["input_ids"].shape[1])


def prompt_of(model, tokens: int) -> str:
    """A prompt that T5's tokenizer cuts into exactly `tokens` tokens (its end token included):
    a word of one token, repeated."""
    word = next(w for w in "abcdefghijklmnopqrstuvwxyz" if t5_tokens(model, f"{w} {w}") == t5_tokens(model, w) + 1)
    prompt = " ".join([word] * (tokens - t5_tokens(model, word) + 1))
    assert t5_tokens(model, prompt) == tokens
    return prompt


def test_the_longest_prefix_is_the_text_bound_and_a_windows_chroma(model):
    musicgen = model.musicgen
    assert longest_prefix(musicgen.lm, 30.0) == MAX_TEXT_TOKENS + CHROMA_FRAMES_OF_30_S == 747
    assert window_steps(musicgen) == 1505
    assert model.loop.decoder.length == 2304 >= cache_positions(musicgen) == 2252  # whole buckets of 256


@pytest.mark.slow  # a whole 30 s window
def test_the_longest_prompt_and_a_30_s_melody_fit_the_cache_as_allocated(model, monkeypatch):
    decoder = model.loop.decoder
    prefills: list[int] = []
    prefill = decoder.prefill
    monkeypatch.setattr(decoder, "prefill", lambda window: _recorded(prefill, window, prefills))
    melody = Audio(torch.from_numpy(tone(30.0, 32000, 1)).T.contiguous(), 32000)
    request = GenerationRequest(prompt_of(model, MAX_TEXT_TOKENS), 30.0, Sampling(250, 0.0, 0.0, 3.0), melody=melody)
    generate_tokens(model, request, RequestRandomness(1, "cpu"))  # the cache exists from here on
    cache = [keys.data_ptr() for keys, _ in decoder.caches]
    generated = generate_tokens(model, request, RequestRandomness(2, "cpu"))
    # the prefill covers the conditions and the sequence's first step (its start token)
    assert generated.shape[-1] == 30 * 50 and prefills == [MAX_TEXT_TOKENS + CHROMA_FRAMES_OF_30_S + 1] * 2
    assert [keys.data_ptr() for keys, _ in decoder.caches] == cache and decoder.cache_length() == 2304


def _recorded(prefill, window, filled: list[int]):
    logits, positions = prefill(window)
    filled.append(positions)
    return logits, positions


def test_a_prompt_past_the_token_bound_is_refused_before_any_work(model, monkeypatch):
    longest = prompt_of(model, MAX_TEXT_TOKENS)
    check_prompt_tokens(model.musicgen.lm, longest)  # accepted
    provider = model.musicgen.lm.condition_provider
    monkeypatch.setattr(provider, "forward", lambda *a: pytest.fail("conditioned a refused prompt"))
    request = GenerationRequest(longest + longest[-2:], 1.0, Sampling(250, 0.0, 1.0, 3.0))  # one word more
    with pytest.raises(InputError) as refused:
        generate_tokens(model, request, RequestRandomness(1, "cpu"))
    assert refused.value.input_name == "prompt"
    assert str(refused.value) == (
        f"prompt is {MAX_TEXT_TOKENS + 1} T5 tokens long ({len(longest) + 2} characters); at most "
        f"{MAX_TEXT_TOKENS} tokens fit. Shorten the description."
    )
