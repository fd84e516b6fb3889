"""StopRequest: a stop asked for from a signal handler never hangs the main thread that waits on it."""

from __future__ import annotations

import os
import resource
import subprocess
import sys
import threading
import time

from pybatch.schedule.scheduler import StopRequest

# Round after round, the main thread waits on a fresh request while a forked child fires SIGUSR1
# at it, and the handler asks that round's request to stop. A handler that takes a lock the main
# thread holds for a moment inside wait() (threading.Event.set does) deadlocks within a second or
# so here: the child then never prints "done" and the timeout below fails the test.
BOMBARD = """
import os, signal, time
from pybatch.schedule.scheduler import StopRequest

ROUNDS = 20000
current = StopRequest()
signal.signal(signal.SIGUSR1, lambda signum, frame: current.set("SIGUSR1"))
parent = os.getpid()
firer = os.fork()
if firer == 0:
    while True:
        os.kill(parent, signal.SIGUSR1)
        time.sleep(0.0001)
try:
    for _ in range(ROUNDS):
        while not current.is_set():
            current.wait(0.00001)
        finished, current = current, StopRequest()
        finished.close()
finally:
    os.kill(firer, signal.SIGKILL)
    os.waitpid(firer, 0)
print("done", ROUNDS)
"""


def test_a_signal_handler_can_ask_to_stop_while_the_main_thread_waits() -> None:
    child = subprocess.run([sys.executable, "-c", BOMBARD], capture_output=True, text=True, timeout=60)
    assert child.returncode == 0, child.stderr
    assert child.stdout.split() == ["done", "20000"]


def test_wait_wakes_as_soon_as_another_thread_asks() -> None:
    request = StopRequest()
    try:
        threading.Timer(0.2, request.set, args=("requested",)).start()
        started = time.monotonic()
        request.wait(30)
        assert request.is_set() and request.reason == "requested"
        assert time.monotonic() - started < 10  # not the 30 s timeout
        assert request.wait(30) is False and time.monotonic() - started < 10  # stays set: returns at once
    finally:
        request.close()


def test_the_first_reason_is_kept_and_a_closed_request_can_still_be_asked() -> None:
    request = StopRequest()
    request.close()
    request.set("SIGTERM")
    request.set("SIGINT")
    assert request.reason == "SIGTERM"


def test_wait_works_past_file_descriptor_1024() -> None:
    """An application with many open files may embed a scheduler: select() would refuse its fds."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 4096), hard))  # a normal user's soft limit is 1,024
    held: list[int] = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        request = StopRequest()
        assert request._wake_reader.fileno() > 1024
        started = time.monotonic()
        assert request.wait(0.3) is False and not request.is_set()
        assert time.monotonic() - started >= 0.25  # it waited: no error cut it short
        threading.Timer(0.1, request.set, args=("requested",)).start()
        request.wait(30)
        assert request.reason == "requested" and time.monotonic() - started < 10
        request.close()
    finally:
        for fd in held:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
