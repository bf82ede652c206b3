"""pytest plugin loaded by ``scripts/gpu_suite.py`` (``-p gpu_suite_pytest``): a per-test time bound and a progress log.

Why not pytest-timeout: the lent GPU machines have no network and may not have it installed. Two bounds instead:

- soft: after ``--suite-test-timeout`` seconds a SIGALRM handler dumps every thread's stack and fails the test
  (``pytest.fail``), so a slow or hung Python-level test costs one failure and the stage goes on;
- hard: faulthandler's watchdog thread dumps the stacks and exits the process ``--suite-test-grace`` seconds later. It
  fires even when the main thread is blocked inside C (a CUDA synchronise on a hung kernel), where no signal handler
  can run; the stage then ends early instead of spending its whole wall-clock allowance.

Why the progress log: junit XML is written only when pytest ends normally. ``--suite-progress`` appends one JSON line
per test start, per report phase and per collection problem, flushed at once, so the suite can tell what passed and
which test was running when the process died. Stack dumps go to ``<progress>.stacks`` (pytest captures fd 2 during a
test, so a dump to stderr would be lost with the process).
"""

from __future__ import annotations

import faulthandler
import json
import signal
import time
from pathlib import Path
from typing import IO, Any

import pytest

_STATE: dict[str, Any] = {"progress": None, "stacks": None}


def pytest_addoption(parser: pytest.Parser) -> None:
    group = parser.getgroup("gpu_suite", "scripts/gpu_suite.py bounds and progress")
    group.addoption("--suite-test-timeout", type=float, default=0.0,
                    help="fail a test after this many seconds (0: no bound)")
    group.addoption("--suite-test-grace", type=float, default=30.0,
                    help="exit the process this many seconds after the soft bound if the test is still stuck")
    group.addoption("--suite-progress", default=None, help="append JSON lines of test progress to this file")


def pytest_configure(config: pytest.Config) -> None:
    path = config.getoption("suite_progress")
    if path:
        p = Path(path)
        p.parent.mkdir(parents=True, exist_ok=True)
        _STATE["progress"] = p.open("a", buffering=1, encoding="utf-8")
        _STATE["stacks"] = p.with_name(p.name + ".stacks").open("a", buffering=1, encoding="utf-8")
        _write({"event": "session", "time": time.time()})


def pytest_unconfigure(config: pytest.Config) -> None:
    for key in ("progress", "stacks"):
        f = _STATE.get(key)
        if f is not None:
            f.close()
            _STATE[key] = None


def _write(record: dict[str, Any]) -> None:
    f: IO[str] | None = _STATE.get("progress")
    if f is not None:
        f.write(json.dumps(record) + "\n")
        f.flush()


def _stack_file() -> IO[str] | None:
    return _STATE.get("stacks")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None):
    config = item.config
    timeout = float(config.getoption("suite_test_timeout") or 0.0)
    grace = float(config.getoption("suite_test_grace") or 0.0)
    _write({"event": "start", "nodeid": item.nodeid, "time": time.time()})
    armed = timeout > 0 and hasattr(signal, "SIGALRM")
    previous = None
    if armed:
        stacks = _stack_file()

        def on_alarm(signum: int, frame: Any) -> None:
            if stacks is not None:
                stacks.write(f"--- soft timeout ({timeout:g} s) in {item.nodeid}\n")
                faulthandler.dump_traceback(file=stacks, all_threads=True)
            pytest.fail(f"gpu_suite: per-test timeout of {timeout:g} s exceeded", pytrace=False)

        previous = signal.signal(signal.SIGALRM, on_alarm)
        signal.setitimer(signal.ITIMER_REAL, timeout)
        if stacks is not None:
            stacks.write(f"--- armed hard bound {timeout + grace:g} s for {item.nodeid}\n")
            faulthandler.dump_traceback_later(timeout + grace, exit=True, file=stacks)
        else:
            faulthandler.dump_traceback_later(timeout + grace, exit=True)
    try:
        yield
    finally:
        if armed:
            signal.setitimer(signal.ITIMER_REAL, 0)
            signal.signal(signal.SIGALRM, previous)
            faulthandler.cancel_dump_traceback_later()
        _write({"event": "finish", "nodeid": item.nodeid, "time": time.time()})


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    record: dict[str, Any] = {"event": "report", "nodeid": report.nodeid, "when": report.when,
                              "outcome": report.outcome, "duration": round(report.duration, 3)}
    if hasattr(report, "wasxfail"):
        record["xfail"] = True
    if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
        record["reason"] = str(report.longrepr[2]).removeprefix("Skipped: ")
    elif report.failed:
        record["reason"] = str(getattr(report, "longreprtext", "") or "")[-2000:]
    _write(record)


def pytest_collectreport(report: pytest.CollectReport) -> None:
    if report.failed or report.skipped:
        reason = ""
        if report.skipped and isinstance(report.longrepr, tuple) and len(report.longrepr) == 3:
            reason = str(report.longrepr[2]).removeprefix("Skipped: ")
        elif report.failed:
            reason = str(getattr(report, "longreprtext", "") or "")[-2000:]
        _write({"event": "collect", "nodeid": report.nodeid, "outcome": report.outcome, "reason": reason})
