"""A server the playground starts that never comes up: the reason, with its last lines, instead of a hang.

The case where it does come up is tests/playground/test_main.py's, through the command itself."""

import pytest

from playground.cog_process import CogProcess


def test_a_server_that_exits_before_listening(tmp_path):
    process = CogProcess(tmp_path, make="false")  # `make` failing at once, as a broken setup would
    with pytest.raises(RuntimeError, match="the Cog server did not start"):
        process.wait_for_port(timeout=30)
    exited = process.exited()
    assert exited is not None and exited.startswith("The Cog server this playground started has exited (status 1)")
    process.stop()
