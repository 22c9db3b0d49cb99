"""A pytest plugin: the run fails when a process it started is still running at its end.

Every process the suite starts inherits ``PYTEST_GENSERVE_RUN`` (set at configure time, before
any test runs); whatever still carries this run's value once every fixture is torn down was
never stopped. Such processes are listed, killed, and the run's exit status is set to failure,
so a test that forgets a server (or only stops it on success) cannot pass unnoticed. The name
avoids the ``GENSERVE_`` prefix that tests strip from the environments they hand to servers.
"""

from __future__ import annotations

import contextlib
import os
import time
import uuid

import psutil
import pytest

MARK = "PYTEST_GENSERVE_RUN"
GRACE_S = 3.0
# Python's own helpers that a library in the test process may start (multiprocessing's resource
# tracker, its fork server): they read a pipe from this process and end with it, by design.
ENDS_WITH_US = ("multiprocessing.resource_tracker", "multiprocessing.forkserver")
_KEY = pytest.StashKey[list[str]]()


def pytest_configure(config: pytest.Config) -> None:
    os.environ[MARK] = uuid.uuid4().hex
    config.stash[_KEY] = []


def alive(process: psutil.Process) -> bool:
    try:
        return process.is_running() and process.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


def ends_with_us(process: psutil.Process, me: int) -> bool:
    return process.ppid() == me and any(helper in " ".join(process.cmdline()) for helper in ENDS_WITH_US)


def started_by_this_run() -> list[psutil.Process]:
    mark, me = os.environ.get(MARK), os.getpid()
    found = []
    for process in psutil.process_iter():
        try:
            if process.pid == me or not alive(process) or process.environ().get(MARK) != mark:
                continue
            if not ends_with_us(process, me):
                found.append(process)
        except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
            continue
    return found


def describe(process: psutil.Process) -> str:
    try:
        return f"pid {process.pid} (parent {process.ppid()}): {' '.join(process.cmdline())[:200]}"
    except psutil.Error:
        return f"pid {process.pid}"


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    deadline = time.monotonic() + GRACE_S
    left = started_by_this_run()
    while left and time.monotonic() < deadline:
        time.sleep(0.1)
        left = [p for p in left if alive(p)]
    if not left:
        return
    session.config.stash[_KEY] = [describe(p) for p in left]
    for process in left:
        with contextlib.suppress(psutil.Error):
            process.kill()
    session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, config: pytest.Config) -> None:  # type: ignore[no-untyped-def]
    left = config.stash.get(_KEY, [])
    if left:
        terminalreporter.section("processes left running", red=True)
        terminalreporter.write_line(f"{len(left)} process(es) started by this run outlived it (now killed):")
        for line in left:
            terminalreporter.write_line("  " + line)
