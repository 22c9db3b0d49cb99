"""Finished outputs waiting for ``GET /history``: one folder per job under ``bridge.results_dir``,
one row per output in the JobStore.

Handing out is two steps, so that a client whose connection breaks mid-answer loses nothing:
``pending`` reads a client's results and leaves them in place, and ``forget`` deletes the ones an
answer delivered to its end (and only those: a result stored meanwhile waits for the next
answer; one another answer already delivered is skipped). Results nobody collects are deleted
past the retention (``purge``).
"""

from __future__ import annotations

import contextlib
import logging
import shutil
from collections.abc import Sequence
from pathlib import Path

from genserve.bridge.backends import Output
from genserve.storage.artifacts import write_bytes
from genserve.storage.jobs import Job, JobStore, Result, ResultFile

log = logging.getLogger("genserve.workflows.bridge")


class ResultShelf:
    """Blocking (files and SQLite); the bridge calls it through ``asyncio.to_thread``."""

    def __init__(self, store: JobStore, folder: Path) -> None:
        self.store = store
        self.folder = folder

    def keep(self, job: Job, outputs: Sequence[Output]) -> bool:
        """Write the outputs under <folder>/<job>/ and record them; False if the job was
        interrupted meanwhile (then the files are removed again)."""
        folder = self.folder / job.id
        results = []
        for index, output in enumerate(outputs):
            path = folder / f"{index:02d}_{Path(output.filename).name}"
            write_bytes(path, output.data, durable=True)
            meta = {"node": output.node, "filename": output.filename, **dict(output.metadata)}
            results.append(ResultFile(output.filename, output.content_type, path=str(path), metadata=meta))
        stored = self.store.mark_done(job.id, results)
        if not stored:
            shutil.rmtree(folder, ignore_errors=True)
        return stored

    def pending(self, client_id: str) -> tuple[list[Result], list[Result]]:
        """The client's results, oldest first, and apart those whose file is gone from disk (they
        can never be delivered: the caller forgets them)."""
        found, missing = [], []
        for result in self.store.results_for(client_id):
            if result.path is not None and not Path(result.path).is_file():
                log.warning("result %s of job %s is gone from disk", result.name, result.job_id)
                missing.append(result)
            else:
                found.append(result)
        return found, missing

    def forget(self, results: Sequence[Result]) -> list[Result]:
        """Delete these results and their files; returns those that were still stored."""
        gone = self.store.forget_results([result.seq for result in results])
        for result in gone:
            self._delete(result)
        return gone

    def purge(self, retention_s: float) -> None:
        """Forget results and finished jobs older than the retention."""
        for result in self.store.purge_older_than(retention_s).results:
            self._delete(result)

    @staticmethod
    def _delete(result: Result) -> None:
        if result.path is None:
            return
        path = Path(result.path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        with contextlib.suppress(OSError):
            path.parent.rmdir()  # the job's folder, once empty
