"""Finding coglet's port, its worker and the worker's handlers from their process ids, and asking it to stop."""

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from musicgen_cog.serving.coglet_control import catches, child_pids, listening_address, stop_coglet
from tests.helpers import with_default_stop_signals

# A stand-in for coglet's server process: it listens on a port the kernel picks (as PORT=0 does),
# prints it, and reports the first POST it gets.
LISTENER = textwrap.dedent(
    """
    import http.server
    class Handler(http.server.BaseHTTPRequestHandler):
        def do_POST(self):
            print("POST", self.path, flush=True)
            self.send_response(200)
            self.send_header("Content-Length", "0")
            self.end_headers()
        def log_message(self, *args):
            pass
    server = http.server.HTTPServer(("127.0.0.1", 0), Handler)
    print(server.server_address[1], flush=True)
    server.handle_request()
    """
)


@pytest.fixture
def listener():
    process = subprocess.Popen(
        [sys.executable, "-c", LISTENER],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        text=True,
        preexec_fn=with_default_stop_signals,  # a Python process then catches SIGINT, whoever started the tests
    )
    assert process.stdout is not None
    port = int(process.stdout.readline())
    yield process, port
    process.kill()
    process.wait()


def test_the_address_is_read_from_the_processes_listening_socket(listener):
    process, port = listener
    assert listening_address(process.pid) == ("127.0.0.1", port)


def test_a_process_that_listens_nowhere_has_no_address():
    child = subprocess.Popen(["sleep", "30"])
    try:
        with pytest.raises(LookupError, match=f"process {child.pid} listens on no IPv4 TCP port"):
            listening_address(child.pid)
    finally:
        child.kill()
        child.wait()


def test_a_file_closed_between_listing_and_reading_is_skipped(listener, monkeypatch):
    process, port = listener
    real_readlink = os.readlink
    closed = Path(f"/proc/{process.pid}/fd/0")
    skipped = []

    def readlink(path):
        if Path(path) == closed:
            skipped.append(path)
            raise FileNotFoundError(2, "No such file or directory", str(path))
        return real_readlink(path)

    monkeypatch.setattr(os, "readlink", readlink)
    assert listening_address(process.pid) == ("127.0.0.1", port)
    assert skipped, "the listener has no fd 0 to close"


def test_stopping_posts_to_shutdown_on_that_port(listener):
    process, _ = listener
    stop_coglet(process.pid)
    assert process.stdout is not None
    assert process.stdout.readline() == "POST /shutdown\n"
    assert process.wait(timeout=30) == 0


def test_a_server_that_cannot_be_reached_is_sent_sigint():
    child = subprocess.Popen(["sleep", "30"], preexec_fn=with_default_stop_signals)
    stop_coglet(child.pid)
    assert child.wait(timeout=30) == -signal.SIGINT


def test_the_children_and_the_signals_they_catch_are_read_from_proc(listener):
    process, _ = listener  # a Python process: it catches SIGINT (KeyboardInterrupt), not SIGUSR1
    assert process.pid in child_pids(os.getpid())
    assert catches(process.pid, signal.SIGINT) and not catches(process.pid, signal.SIGUSR1)
    process.kill()
    process.wait()
    assert process.pid not in child_pids(os.getpid()) and not catches(process.pid, signal.SIGINT)
