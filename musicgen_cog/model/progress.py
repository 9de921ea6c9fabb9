"""Progress of token decoding in the logs: steps done out of the total, with a rate.

audiocraft reports steps per 30 s window; the total over all windows is computed here from
the same window arithmetic `MusicGen._generate_tokens` uses, with audiocraft's own patterns.
"""

from __future__ import annotations

import logging
import time

from audiocraft.models import MusicGen

log = logging.getLogger(__name__)


def planned_steps(musicgen: MusicGen, duration: float, prompt_frames: int, extend_stride: float) -> int:
    """Decoder steps for `duration` seconds after a prompt of `prompt_frames`, windows `extend_stride` apart."""
    rate, window = musicgen.frame_rate, musicgen.max_duration
    total_frames = int(duration * rate)
    if duration <= window:
        return _window_steps(musicgen, prompt_frames, total_frames)
    stride = int(rate * extend_stride)
    steps, offset = 0, 0
    while offset + prompt_frames < total_frames:
        frames = int(min(duration - offset / rate, window) * rate)
        steps += _window_steps(musicgen, prompt_frames, frames)
        prompt_frames = frames - stride
        offset += stride
    return steps


def _window_steps(musicgen: MusicGen, prompt_frames: int, frames: int) -> int:
    pattern = musicgen.lm.pattern_provider.get_pattern(frames)
    first_step = pattern.get_first_step_with_timesteps(prompt_frames)
    assert first_step is not None, "audiocraft's generate asserts the same of every prompt it takes"
    return len(pattern.layout) - first_step


class StepProgress:
    """Counts decoded steps (`advance`, from whichever thread decodes) and logs them at most every
    `interval` s (`report`, from the request's own thread, so that the line reaches its logs)."""

    def __init__(self, total_steps: int, interval: float = 2.0):
        self.total = total_steps
        self.done = 0
        self.interval = interval
        self.started: float | None = None  # set at the first step: conditioning time is not decoding time
        self.last_report = 0.0
        self.reported = 0

    def advance(self) -> None:
        if self.started is None:
            self.started = self.last_report = time.monotonic()
        self.done += 1

    def report(self) -> None:
        """Log the steps done if `interval` has passed since the last line, or the last step is done."""
        now, done = time.monotonic(), self.done
        if self.started is None or done == self.reported:
            return
        if done >= self.total or now - self.last_report >= self.interval:
            self.last_report, self.reported = now, done
            log.info(
                "generation: %d/%d steps (%d%%), %.1f steps/s",
                done,
                self.total,
                100 * done // max(self.total, 1),
                done / max(now - self.started, 1e-9),
            )

    def finish(self) -> None:
        """Log the steps actually decoded and the overall rate."""
        self.report()
        elapsed = time.monotonic() - (self.started or time.monotonic())
        log.info("decoded %d steps in %.1f s (%.1f steps/s)", self.done, elapsed, self.done / max(elapsed, 1e-9))
