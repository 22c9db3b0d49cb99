"""What the CLI shows on stderr while a request runs: model loads, sampling steps, log lines."""

from __future__ import annotations

import contextlib
import logging
import sys
from typing import TYPE_CHECKING, TextIO

from rich import progress as rp
from rich.console import Console

if TYPE_CHECKING:
    from genserve.services.base import ProgressEvent


def route_logs(stream: TextIO) -> list[tuple[logging.StreamHandler[TextIO], TextIO]]:
    """Point genserve's console log handlers at ``stream``; returns the old streams to restore.

    A handler keeps the stderr it was made with, but a live progress display swaps stderr for a
    proxy that prints above the bars (and a test runner swaps stderr on every call).
    """
    handlers = [h for h in logging.getLogger("genserve").handlers if type(h) is logging.StreamHandler]
    previous: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []
    for handler in handlers:
        with handler.lock or contextlib.nullcontext():
            previous.append((handler, handler.stream))
            handler.stream = stream  # not setStream(): it flushes the old stream, which may be closed
    return previous


def restore_logs(previous: list[tuple[logging.StreamHandler[TextIO], TextIO]]) -> None:
    """Undo ``route_logs``. A stream that has been closed meanwhile (a test runner's stderr, once
    its command ended) gives way to the process's own stderr, so no later line is lost."""
    for handler, stream in previous:
        with handler.lock or contextlib.nullcontext():
            handler.stream = sys.__stderr__ if getattr(stream, "closed", False) else stream


class ProgressView:
    """Progress on stderr: a spinner line per model load, a bar for the sampling steps.

    The engine calls it on this (the caller's) thread; with no console it does nothing, so a
    pipe or ``--quiet`` gets no progress output at all.
    """

    def __init__(self, console: Console | None) -> None:
        self._progress = (
            rp.Progress(
                rp.SpinnerColumn(finished_text="[green]✓"),
                rp.TextColumn("{task.description}"),
                rp.BarColumn(),
                rp.MofNCompleteColumn(),
                rp.TimeElapsedColumn(),
                console=console,
            )
            if console is not None
            else None
        )
        self._load: rp.TaskID | None = None
        self._stages: dict[str, rp.TaskID] = {}
        self._restore: list[tuple[logging.StreamHandler[TextIO], TextIO]] = []

    def __enter__(self) -> ProgressView:
        if self._progress is not None:
            self._progress.start()
            self._restore = route_logs(sys.stderr)  # now rich's proxy: log lines print above the bars
        return self

    def __exit__(self, *_: object) -> None:
        if self._progress is not None:
            restore_logs(self._restore)
            self._progress.stop()

    def __call__(self, event: ProgressEvent) -> None:
        progress = self._progress
        if progress is None:
            return
        if event.stage == "load":
            # Loads arrive as pairs (0/1 "loading X", then 1/1 "loaded X") and never overlap in a run.
            if self._load is None:
                self._load = progress.add_task(event.message or "loading model", total=None)
            if event.step >= event.total:
                progress.update(self._load, description=event.message, total=1, completed=1)
                self._load = None
            return
        label = "sampling" if event.stage == "step" else event.stage
        task = self._stages.get(event.stage)
        if task is None:
            task = self._stages[event.stage] = progress.add_task(label, total=event.total or None)
        progress.update(task, total=event.total or None, completed=event.step)
