"""Every entry point stops on the signals its supervisors send, in every state, and leaves nothing behind."""

from __future__ import annotations

import signal
from pathlib import Path

import pytest

from tests.process_tree import Command

pytestmark = pytest.mark.slow  # processes of their own

# Every process of the tree gone, counted from the signal. Where nothing drains, the stop takes about
# 2 s here; the bound is well above that so that a loaded CI machine does not fail it, and well below
# the 20 s after which a harness would send SIGKILL (and the "forever" that the old code took).
STOP_BOUND = 30.0


def make(*arguments: str) -> list[str]:
    return ["make", "--no-print-directory", *arguments]


def corrupt_checkpoint(folder: Path) -> Path:
    """A COG_WEIGHTS file that is not a checkpoint: setup fails on it, and the server says SETUP_FAILED."""
    path = folder / "corrupt.tar"
    path.write_bytes(b"not a checkpoint" * 64)
    return path


def test_make_playground_stopped_by_sigterm_takes_its_server_with_it(tiny_weights, schema_file, tmp_path):
    playground = Command(make("playground", f"WEIGHTS_DIR={tiny_weights}", "PLAYGROUND_PORT=0"), tmp_path / "out.log")
    try:
        playground.wait_for(r"playground on \S+ for the Cog server")
        playground.wait_for("Setup complete, now accepting requests")  # its server is READY
        playground.tree.refresh()
        playground.process.send_signal(signal.SIGTERM)  # to make, as `kill` does
        playground.tree.wait_gone(STOP_BOUND)
    finally:
        playground.kill()


def test_a_server_whose_setup_failed_stops_on_sigterm(tiny_weights, schema_file, tmp_path):
    server = Command(
        make("serve", "PORT=0", f"WEIGHTS_DIR={tiny_weights}"),
        tmp_path / "out.log",
        env={"COG_WEIGHTS": str(corrupt_checkpoint(tmp_path))},
    )
    try:
        server.wait_for("Worker initialization failed")  # SETUP_FAILED
        server.tree.refresh()
        server.process.send_signal(signal.SIGTERM)
        server.tree.wait_gone(STOP_BOUND)
    finally:
        server.kill()
