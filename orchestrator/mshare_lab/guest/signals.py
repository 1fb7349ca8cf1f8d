"""Signals: turn SIGTERM into KeyboardInterrupt and keep cleanup from being interrupted.

A run stopped by Ctrl-C or by ``kill`` must leave nothing behind. Python raises
KeyboardInterrupt for SIGINT only; ``terminate_as_interrupt`` makes SIGTERM take the same
path through every ``finally``. ``deferred`` blocks both signals while a short critical
section (create a domain and remember it; destroy it and delete its files) runs, so a
second Ctrl-C cannot cut a cleanup in half; the signal is delivered right after.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager
from typing import Iterator

_SIGNALS = {signal.SIGINT, signal.SIGTERM}


def _raise_interrupt(signum, frame):  # noqa: ARG001 - signal handler signature
    raise KeyboardInterrupt(f"signal {signal.Signals(signum).name}")


@contextmanager
def terminate_as_interrupt() -> Iterator[None]:
    """Within the block SIGTERM raises KeyboardInterrupt (main thread only)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def deferred() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block ends (they are delivered, not lost)."""
    if threading.current_thread() is not threading.main_thread():
        # Python handles signals in the main thread only: nothing to hold here
        yield
        return
    old = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
