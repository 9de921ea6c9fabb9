"""Signals noticed by a thread while the main thread is elsewhere, kept from child processes, and a
parent's end noticed by its child."""

import signal
import subprocess
import sys
import textwrap
import threading

from musicgen_cog.serving.signals import STOP_SIGNALS, keep_stop_signals_from_child_processes, on_process_exit
from tests.conftest import ROOT

# In a process of its own: handlers and the wakeup fd are process-wide. The main thread blocks the
# signals and waits in C, as coglet's worker waits in Rust, so only the C-level handler can see them.
WATCHED = textwrap.dedent(
    """
    import os, signal, threading
    from musicgen_cog.serving.signals import on_signals
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)  # replaced, as coglet's dispositions are
    taken = threading.Event()
    def first():
        print("USR2 in", threading.current_thread().name, flush=True)
        taken.set()
    def second():
        print("USR1", flush=True)
        os._exit(0)
    on_signals({signal.SIGUSR2: first, signal.SIGUSR1: second})
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR1, signal.SIGUSR2})
    os.kill(os.getpid(), signal.SIGUSR2)
    taken.wait(30)  # two pending signals are delivered lowest number first: send one at a time
    os.kill(os.getpid(), signal.SIGUSR1)
    never, _ = os.pipe()
    os.read(never, 1)
    """
)

# A parent that starts a child watching it, then dies of SIGKILL, which it cannot catch.
ORPHANED = textwrap.dedent(
    """
    import os, signal, subprocess, sys
    child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=sys.stdout)
    assert sys.stdin.readline() == "watching\\n"
    os.kill(os.getpid(), signal.SIGKILL)
    """
)
WATCHER = textwrap.dedent(
    """
    import os, sys
    from musicgen_cog.serving.signals import on_parent_exit
    on_parent_exit(lambda: (print("parent gone", flush=True), os._exit(0)))
    print("watching", flush=True)
    never, _ = os.pipe()
    os.read(never, 1)
    """
)


def test_each_signal_calls_back_in_the_watcher_thread_in_order():
    done = subprocess.run([sys.executable, "-c", WATCHED], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout == "USR2 in signal-watch\nUSR1\n"


def test_a_child_notices_that_its_parent_was_killed():
    watcher = subprocess.Popen(
        [sys.executable, "-c", ORPHANED, WATCHER], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert watcher.stdin is not None and watcher.stdout is not None
    relay = watcher.stdout.readline()  # the child's first line, through the parent's stdout
    watcher.stdin.write(relay)
    watcher.stdin.close()
    assert watcher.wait(timeout=60) == -signal.SIGKILL
    assert watcher.stdout.readline() == "parent gone\n"  # the orphan's own line, from its watcher thread


def test_processes_started_by_a_prediction_thread_do_not_die_of_a_stop_signal():
    outcome: dict[int, int | str] = {}

    def prediction_thread() -> None:
        keep_stop_signals_from_child_processes()
        for signum in sorted(STOP_SIGNALS):
            child = subprocess.Popen(["sleep", "30"])
            child.send_signal(signum)
            try:
                outcome[signum] = child.wait(timeout=1)
            except subprocess.TimeoutExpired:
                outcome[signum] = "still running"
            child.kill()
            child.wait()

    thread = threading.Thread(target=prediction_thread)
    thread.start()
    thread.join()
    assert outcome == dict.fromkeys(sorted(STOP_SIGNALS), "still running")
    assert not STOP_SIGNALS & signal.pthread_sigmask(signal.SIG_BLOCK, set())  # this thread is untouched


def test_the_end_of_a_watched_process_is_noticed_and_one_already_gone_at_once():
    child = subprocess.Popen(["sleep", "30"])
    ended = threading.Event()
    on_process_exit(child.pid, ended.set)
    assert not ended.wait(0.5)
    child.kill()
    assert ended.wait(30)
    child.wait()
    gone = threading.Event()
    on_process_exit(child.pid, gone.set)  # reaped: no such process any more
    assert gone.wait(30)
