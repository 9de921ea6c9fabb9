"""The real server under load: Locust clients (bench/locustfile.py), 3x as many as slots, for minutes.

    python -m bench.load [--users N] [--seconds S] [--max-predictions P]   (defaults: 3 x slots, 300 s)

The server runs as `make serve` runs it (tini, coglet, tiny random weights on this machine: it
measures the serving machinery, not the model) on a loopback port. Prints one row: predictions,
HTTP requests, 409s, failures, latency p50/p95/max (first attempt to answer, retries included),
files against successes, and the resident memory of tini, coglet and its worker before and after.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from musicgen_cog.api.cog_schema import write_schema
from musicgen_cog.api.concurrency import DEFAULT_CONCURRENCY
from musicgen_cog.weights import random_weights
from tests.cog_server import VENV_BIN, CogServer
from tests.helpers import process_tree_memory_mb, write_tone

LOCUSTFILE = Path(__file__).with_name("locustfile.py")
ROOT = LOCUSTFILE.parent.parent


def run_load(server: CogServer, users: int, seconds: int, max_predictions: int, folder: Path) -> dict[str, Any]:
    """Drive `server` with `users` Locust clients for `seconds` (or `max_predictions`); the summary."""
    clip = write_tone(folder / "clip.wav", seconds=3.0, sample_rate=16000)
    summary_path = folder / "summary.json"
    memory_before = process_tree_memory_mb(server.process.pid)["VmRSS"]
    done = subprocess.run(
        [
            str(VENV_BIN / "locust"),
            *("-f", str(LOCUSTFILE), "--headless", "--host", server.url),
            *("--users", str(users), "--spawn-rate", str(users), "--run-time", f"{seconds}s"),
            *("--stop-timeout", "300", "--only-summary", "--loglevel", "WARNING"),
        ],
        cwd=ROOT,
        env={
            **os.environ,
            "LOAD_CLIP": str(clip),
            "LOAD_SUMMARY": str(summary_path),
            "LOAD_MAX_PREDICTIONS": str(max_predictions),
        },
        capture_output=True,
        text=True,
        timeout=seconds + 600,
    )
    if not summary_path.exists():
        raise RuntimeError(f"locust wrote no summary (exit {done.returncode}):\n{done.stderr[-3000:]}")
    summary = json.loads(summary_path.read_text())
    summary.update(
        users=users,
        locust_exit=done.returncode,
        rss_mb_before=memory_before,
        rss_mb_after=process_tree_memory_mb(server.process.pid)["VmRSS"],
    )
    return summary


def table(summary: dict[str, Any], seconds: int, slots: int) -> str:
    """The summary as docs/benchmarks.md's table: a header and one row."""
    return "\n".join(
        [
            "| clients | run | predictions | HTTP requests | 409s | failures | p50 | p95 | max "
            "| files / successes | server RSS before -> after |",
            "|---|---|---|---|---|---|---|---|---|---|---|",
            f"| {summary['users']} ({summary['users'] / slots:g}x {slots} slots) | {seconds} s "
            f"| {summary['predictions']} | {summary['http_requests']} | {summary['busy_409']} "
            f"| {len(summary['failures'])} | {summary['latency_p50']:.2f} s | {summary['latency_p95']:.2f} s "
            f"| {summary['latency_max']:.2f} s | {summary['files']} / {summary['succeeded']} "
            f"| {summary['rss_mb_before']:.0f} -> {summary['rss_mb_after']:.0f} MB |",
        ]
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--users", type=int, default=3 * DEFAULT_CONCURRENCY)
    parser.add_argument("--seconds", type=int, default=300)
    parser.add_argument("--max-predictions", type=int, default=5000)
    args = parser.parse_args()
    weights = random_weights.ensure_weights_folder(random_weights.cached_tiny_folder())
    write_schema()
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        server = CogServer.as_deployed(weights, folder / "server.log")
        try:
            server.wait_for("READY")
            summary = run_load(server, args.users, args.seconds, args.max_predictions, folder)
        finally:
            server.stop()
    print(json.dumps({k: v for k, v in summary.items() if k != "failures"}))
    for failure in summary["failures"][:20]:
        print("failure:", failure, file=sys.stderr)
    print(table(summary, args.seconds, DEFAULT_CONCURRENCY))


if __name__ == "__main__":
    main()
