"""Signals during a run: SIGTERM / SIGHUP unwound like Ctrl-C (so temp files are removed), signals held while a commit
renames its files, and the fault-injection hook the fault tests stop a run with. Part of the commit protocol described
in :mod:`sschsr_deploy.io.atomic`."""

from __future__ import annotations

import contextlib
import os
import signal
import threading
from collections.abc import Iterator, Sequence
from typing import Any

__all__ = ["FAULT_POINT_ENV", "TERMINATING_SIGNALS", "Terminated", "deferred_signals", "fault_point",
           "terminate_on_signals"]


class Terminated(SystemExit):
    """SIGTERM or SIGHUP raised as an exception in the main thread, so ``finally`` blocks and context managers remove
    temp files. A ``SystemExit``: ``except Exception`` does not swallow it, and uncaught it ends the process with
    status 128 + the signal number (what a shell reports for a process killed by that signal)."""

    def __init__(self, signum: int) -> None:
        super().__init__(128 + int(signum))
        self.signum = int(signum)

    @property
    def signal_name(self) -> str:
        return signal.Signals(self.signum).name

    def __str__(self) -> str:
        return f"terminated by {self.signal_name}"


TERMINATING_SIGNALS = (signal.SIGTERM, signal.SIGHUP)
_HELD_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)


def _raise_terminated(signum: int, frame: Any) -> None:
    raise Terminated(signum)


def _in_main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def terminate_on_signals(signals: Sequence[int] = TERMINATING_SIGNALS, *, default_only: bool = True) -> Iterator[None]:
    """Inside the block, ``signals`` raise :class:`Terminated` (main thread only; elsewhere nothing changes). With
    ``default_only`` only signals still at their default action are taken over: an application's handlers stay."""
    installed: dict[int, Any] = {}
    if _in_main_thread():
        for s in signals:
            current = signal.getsignal(s)
            if default_only and current is not signal.SIG_DFL:
                continue
            with contextlib.suppress(ValueError, OSError):
                installed[s] = signal.signal(s, _raise_terminated)
    try:
        yield
    finally:
        for s, old in installed.items():
            with contextlib.suppress(ValueError, OSError, TypeError):
                signal.signal(s, old)


_held = threading.local()


@contextlib.contextmanager
def deferred_signals() -> Iterator[None]:
    """Hold SIGINT / SIGTERM / SIGHUP until the block ends, then act on the first that came (its own handler, or its
    default action): the renames of a commit are never cut in half by them. Main thread only; nests."""
    if not _in_main_thread() or getattr(_held, "active", False):
        yield
        return
    pending: list[int] = []

    def hold(signum: int, frame: Any) -> None:
        pending.append(signum)

    saved: dict[int, Any] = {}
    for s in _HELD_SIGNALS:
        current = signal.getsignal(s)
        if current is None or current is signal.SIG_IGN:
            continue
        with contextlib.suppress(ValueError, OSError):
            saved[s] = signal.signal(s, hold)
    _held.active = True
    try:
        yield
    finally:
        _held.active = False
        for s, old in saved.items():
            signal.signal(s, old)
        if pending:
            signal.raise_signal(pending[0])


FAULT_POINT_ENV = "SSCHSR_DEPLOY_FAULT_POINT"


def fault_point(name: str) -> None:
    """Testing hook: stop this process (SIGSTOP) when ``$SSCHSR_DEPLOY_FAULT_POINT`` is ``name`` (module docstring)."""
    if os.environ.get(FAULT_POINT_ENV) == name:
        os.kill(os.getpid(), signal.SIGSTOP)
