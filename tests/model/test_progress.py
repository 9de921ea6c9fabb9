"""The planned step total equals the decoding steps audiocraft actually runs, in every window layout."""

import pytest
import torch

from musicgen_cog.model.progress import StepProgress, planned_steps


@pytest.mark.parametrize(
    "duration, prompt_seconds",
    [
        (1, 0),
        (30, 0),
        (3, 2),
        *(pytest.param(*case, marks=pytest.mark.slow) for case in [(31, 0), (45, 0), (33, 3), (40, 2.5)]),
    ],
)
def test_planned_steps_match_the_callbacks_audiocraft_makes(predictor, duration, prompt_seconds):
    musicgen = predictor.model.musicgen
    calls = []
    total = duration + prompt_seconds
    musicgen.set_generation_params(duration=total, extend_stride=18, top_k=250)
    musicgen.set_custom_progress_callback(lambda done, of: calls.append(done))
    try:
        if prompt_seconds:
            prompt = torch.zeros(1, 1, int(prompt_seconds * musicgen.sample_rate))
            tokens = musicgen.compression_model.encode(prompt)[0]
            musicgen._generate_tokens(musicgen._prepare_tokens_and_attributes(["x"], None)[0], tokens, progress=True)
            prompt_frames = tokens.shape[-1]
        else:
            musicgen._generate_tokens(musicgen._prepare_tokens_and_attributes(["x"], None)[0], None, progress=True)
            prompt_frames = 0
    finally:
        musicgen.set_custom_progress_callback(None)
    assert planned_steps(musicgen, total, prompt_frames, extend_stride=18) == len(calls)


def test_the_reporter_logs_the_final_step_once_and_counts_every_step(logs):
    progress = StepProgress(total_steps=3, interval=3600)
    progress.report()  # nothing decoded yet: nothing to say
    for _ in range(3):
        progress.advance()
        progress.report()
    progress.report()
    assert progress.done == 3
    assert [r.getMessage().split(",")[0] for r in logs.records] == ["generation: 3/3 steps (100%)"]


def test_the_reporter_logs_at_most_once_per_interval(logs, monkeypatch):
    clock = iter([0.0, 0.5, 2.5, 3.0])  # the first step, then three reports
    monkeypatch.setattr("musicgen_cog.model.progress.time.monotonic", lambda: next(clock))
    progress = StepProgress(total_steps=10, interval=2.0)
    progress.advance()
    for _ in range(3):
        progress.advance()
        progress.report()
    assert [r.getMessage().split(",")[0] for r in logs.records] == ["generation: 3/10 steps (30%)"]
