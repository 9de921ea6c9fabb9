"""SIGTERM noticed by a thread while the main thread is elsewhere, and kept from child processes."""

import signal
import subprocess
import sys
import textwrap
import threading

from musicgen_cog.serving.signals import keep_sigterm_from_child_processes
from tests.conftest import ROOT

# In a process of its own: handlers and the wakeup fd are process-wide. The main thread blocks
# SIGTERM and waits in C, as coglet's worker waits in Rust, so only the C-level handler can see it.
WATCHED = textwrap.dedent(
    """
    import os, signal, threading
    from musicgen_cog.serving.signals import on_sigterm
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # what coglet's worker inherits
    def drain():
        print("drain in", threading.current_thread().name, flush=True)
        os._exit(0)
    on_sigterm(drain)
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    os.kill(os.getpid(), signal.SIGTERM)
    never, _ = os.pipe()
    os.read(never, 1)
    """
)


def test_sigterm_calls_back_in_the_watcher_thread_although_coglet_left_it_ignored():
    done = subprocess.run(
        [sys.executable, "-c", WATCHED],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == "drain in sigterm-watch\n"


def test_processes_started_by_a_prediction_thread_do_not_die_of_sigterm():
    outcome: dict[str, int | str] = {}

    def prediction_thread() -> None:
        keep_sigterm_from_child_processes()
        child = subprocess.Popen(["sleep", "30"])
        child.send_signal(signal.SIGTERM)
        try:
            outcome["after SIGTERM"] = child.wait(timeout=1)
        except subprocess.TimeoutExpired:
            outcome["after SIGTERM"] = "still running"
        child.kill()
        child.wait()

    thread = threading.Thread(target=prediction_thread)
    thread.start()
    thread.join()
    assert outcome == {"after SIGTERM": "still running"}
    assert signal.SIGTERM not in signal.pthread_sigmask(signal.SIG_BLOCK, set())  # this thread is untouched
