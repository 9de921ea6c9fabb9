"""Locust users for `python -m bench.load`: mixed predictions on the real server, 409s retried.

Each user sends one sync prediction at a time, the next kind in MIX each time (text, melody,
continuation, MBD; wav or mp3; 1 to 3 s), and on a 409 (every slot busy) waits and sends it
again with exponential backoff and jitter, as docs/deployment.md#what-a-client-must-do tells
clients to. A prediction counts once, from its first attempt to its answer. Totals go to
$LOAD_SUMMARY as JSON when the run stops.

Environment: LOAD_CLIP (a wav file for melody and continuation), LOAD_SUMMARY (where to write),
LOAD_MAX_PREDICTIONS (stop after this many; Locust's --run-time bounds the time).
"""

from __future__ import annotations

import base64
import itertools
import json
import os
import random
import statistics
import time
from pathlib import Path
from typing import Any

from locust import HttpUser, events, task

# (name, input beyond the prompt); the clip is filled in at start
MIX: list[tuple[str, dict[str, Any]]] = [
    ("text wav", {"duration": 2}),
    ("melody mp3", {"duration": 2, "input_audio": "clip", "output_format": "mp3"}),
    ("continuation wav", {"duration": 1, "input_audio": "clip", "continuation": True}),
    ("mbd wav", {"duration": 1, "multi_band_diffusion": True}),
    ("text mp3", {"duration": 3, "output_format": "mp3", "top_p": 0.9}),
    ("melody wav", {"duration": 1, "input_audio": "clip", "normalization_strategy": "peak"}),
]
# Seconds. coglet has no queue: a freed slot goes to whichever request comes next, so a client whose
# backoff has grown long loses nearly every race to those that retry soon. With an 8 s cap, 5 of
# 361 predictions still met 409s after 300 s; capped at 1 s, none of 231 did (docs/benchmarks.md).
BACKOFF_FIRST, BACKOFF_MAX, GIVE_UP_AFTER = 0.1, 1.0, 300.0
MIME = {"wav": "audio/wav", "mp3": "audio/mpeg"}
SMALLEST_FILE = 1000  # bytes: a second of mp3 at the lowest bitrate ffmpeg picks is larger

CLIP = "data:audio/wav;base64," + base64.b64encode(Path(os.environ["LOAD_CLIP"]).read_bytes()).decode()
MAX_PREDICTIONS = int(os.environ.get("LOAD_MAX_PREDICTIONS", "1000000"))
TOTALS: dict[str, Any] = {"predictions": 0, "succeeded": 0, "files": 0, "busy_409": 0, "failures": []}
LATENCIES: list[float] = []
BY_KIND: dict[str, int] = {}
USERS_STARTED = itertools.count()  # user i starts at MIX[i]: the first round covers every kind


class Client(HttpUser):
    """One client: a prediction at a time, each answered before the next is sent."""

    def on_start(self) -> None:
        self.turn = next(USERS_STARTED)

    @task
    def predict(self) -> None:
        name, extra = MIX[self.turn % len(MIX)]
        self.turn += 1
        prediction_input = {"prompt": name, **extra, "seed": random.randrange(2**31)}
        if "input_audio" in extra:
            prediction_input["input_audio"] = CLIP
        started = time.monotonic()
        body, problem = self._until_answered(name, prediction_input, started)
        latency = time.monotonic() - started
        TOTALS["predictions"] += 1
        BY_KIND[name] = BY_KIND.get(name, 0) + 1
        if problem is None and body is not None:
            TOTALS["succeeded"] += 1
            LATENCIES.append(latency)
            problem = file_problem(body["output"], prediction_input.get("output_format", "wav"))
            if problem is None:
                TOTALS["files"] += 1
        if problem is not None:
            TOTALS["failures"].append(f"{name}: {problem}")
        self.environment.events.request.fire(
            request_type="PREDICT",
            name=name,
            response_time=latency * 1000,
            response_length=len(body.get("output") or "") if body else 0,
            exception=RuntimeError(problem) if problem else None,
            context={},
        )
        if TOTALS["predictions"] >= MAX_PREDICTIONS and self.environment.runner is not None:
            self.environment.runner.quit()

    def _until_answered(self, name: str, prediction_input: dict, started: float) -> tuple[dict | None, str | None]:
        """POST until an answer other than 409; (body, None) when it succeeded, else (None, why)."""
        backoff = BACKOFF_FIRST
        while True:
            with self.client.post(
                "/predictions", json={"input": prediction_input}, name="POST /predictions", catch_response=True
            ) as response:
                if response.status_code == 409:
                    response.success()  # a full server, not a failure: the client retries
                    TOTALS["busy_409"] += 1
                elif response.status_code != 200:
                    response.failure(f"HTTP {response.status_code}")
                    return None, f"HTTP {response.status_code}: {response.text[:200]}"
                else:
                    body = response.json()
                    if body.get("status") != "succeeded":
                        response.failure(body.get("error"))
                        return None, f"status {body.get('status')}: {body.get('error')}"
                    return body, None
            if time.monotonic() - started > GIVE_UP_AFTER:
                return None, f"still 409 after {GIVE_UP_AFTER:g} s"
            time.sleep(random.uniform(0, backoff))  # full jitter: clients that met a full server spread out
            backoff = min(2 * backoff, BACKOFF_MAX)


def file_problem(output: str, output_format: str) -> str | None:
    """What is wrong with an output data URI for `output_format`, or None for a real file."""
    header, _, payload = output.partition(",")
    if header != f"data:{MIME[output_format]};base64":
        return f"output is {header[:40]!r}, not {output_format}"
    content = base64.b64decode(payload)
    if len(content) < SMALLEST_FILE:
        return f"a {len(content)}-byte file"
    if output_format == "wav" and not content.startswith(b"RIFF"):
        return "a wav without its RIFF header"
    return None


@events.test_stop.add_listener
def write_summary(environment: Any, **kwargs: Any) -> None:
    """The run's totals and latency percentiles (seconds, first attempt to answer) as JSON."""
    cuts = statistics.quantiles(LATENCIES, n=100, method="inclusive") if len(LATENCIES) > 1 else LATENCIES * 99
    summary = {
        **TOTALS,
        "http_requests": environment.stats.get("POST /predictions", "POST").num_requests,
        "by_kind": BY_KIND,
        "latency_p50": cuts[49] if cuts else None,
        "latency_p95": cuts[94] if cuts else None,
        "latency_max": max(LATENCIES, default=None),
    }
    Path(os.environ["LOAD_SUMMARY"]).write_text(json.dumps(summary, indent=1))
