"""The workflow bridge's durable queue: jobs, their results and counters in one SQLite file.

The bridge promises that a server killed with queued jobs runs them after a restart, that finished
results wait for ``GET /history`` (which reads them once) until a retention runs out, and that
``GET /generation-count`` keeps counting across restarts. All three live here, so a restart is
"open the file, ``requeue_running()``, go on".

A job moves ``queued -> running -> done | failed``; ``cancel`` turns a queued job ``cancelled``
(it never runs) and a running one ``interrupted`` (its backend is told separately, and a result
that arrives afterwards is dropped). ``requeue_running`` puts running jobs back in the queue at
their old place, for start-up recovery and for jobs of a backend found dead. Queue order is the
insertion sequence (``seq``), never a clock, so it is FIFO even when two jobs share a timestamp.

Storage follows ``responses.py``: WAL (other processes, a CLI say, may read the same file),
``busy_timeout``, a retried WAL switch for two processes creating one new file at once, one
connection behind a lock for the threads of a process, and ``BEGIN IMMEDIATE`` around
read-then-write steps so two dispatchers never claim the same job. Result bytes may be stored
inline (small images) or as a path to a file the caller wrote; paths handed back by
``take_results`` and ``purge_older_than`` are the caller's to delete.
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from genserve.storage.job_records import Job, JobState, Purged, Result, ResultFile
from genserve.storage.sqlite import open_shared

__all__ = ["GENERATION_COUNT", "Job", "JobState", "JobStore", "Purged", "Result", "ResultFile"]

GENERATION_COUNT = "generation-count"

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, id TEXT NOT NULL UNIQUE, client_id TEXT NOT NULL,
    alias TEXT NOT NULL, graph TEXT NOT NULL, state TEXT NOT NULL, backend TEXT,
    created_at REAL NOT NULL, started_at REAL, finished_at REAL, error TEXT
);
CREATE INDEX IF NOT EXISTS jobs_state ON jobs (state, seq);
CREATE INDEX IF NOT EXISTS jobs_client ON jobs (client_id, seq);
CREATE TABLE IF NOT EXISTS results (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, client_id TEXT NOT NULL,
    name TEXT NOT NULL, content_type TEXT NOT NULL, path TEXT, data BLOB, metadata TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS results_client ON results (client_id, seq);
CREATE TABLE IF NOT EXISTS counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL) WITHOUT ROWID;
"""
_JOB_COLUMNS = "seq, id, client_id, alias, graph, state, backend, created_at, started_at, finished_at, error"
_RESULT_COLUMNS = "name, content_type, data, path, metadata, seq, job_id, client_id, created_at"


def _job(row: Sequence[Any]) -> Job:
    return Job(*row[:4], json.loads(row[4]), JobState(row[5]), *row[6:])


def _result(row: Sequence[Any]) -> Result:
    data = bytes(row[2]) if row[2] is not None else None
    return Result(row[0], row[1], data, row[3], json.loads(row[4]), *row[5:])


def _fetch(db: sqlite3.Connection, job_id: str) -> Job:
    return _job(db.execute(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,)).fetchone())


def _states(states: Iterable[JobState | str] | None) -> list[str]:
    return [JobState(s).value for s in (states if states is not None else JobState)]


class JobStore:
    """Blocking and thread-safe; async doors call it through ``asyncio.to_thread``."""

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()
        self._db = open_shared(self.path, _SCHEMA, busy_timeout_s)

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction, taken before reading so read-then-write steps are atomic."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def _read(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def _jobs(self, where: str, args: Sequence[Any] = ()) -> list[Job]:
        return [_job(r) for r in self._read(f"SELECT {_JOB_COLUMNS} FROM jobs WHERE {where}", args)]

    def enqueue(self, client_id: str, alias: str, graph: Mapping[str, Any]) -> Job:
        """Add a job at the end of the queue."""
        job_id = uuid.uuid4().hex
        text = json.dumps(graph, separators=(",", ":"), ensure_ascii=False)
        with self._write() as db:
            db.execute(
                "INSERT INTO jobs (id, client_id, alias, graph, state, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                (job_id, client_id, alias, text, JobState.QUEUED.value, time.time()),
            )
            return _fetch(db, job_id)

    def get(self, job_id: str) -> Job | None:
        found = self._jobs("id = ?", (job_id,))
        return found[0] if found else None

    def next_queued(self) -> Job | None:
        """The oldest queued job, without taking it (``claim`` takes it)."""
        found = self._jobs("state = 'queued' ORDER BY seq LIMIT 1")
        return found[0] if found else None

    def queued(self, limit: int | None = None) -> list[Job]:
        """Queued jobs in queue order: all of them, or the first ``limit`` (a dispatcher's free slots)."""
        if limit is None:
            return self._jobs("state = 'queued' ORDER BY seq")
        return self._jobs("state = 'queued' ORDER BY seq LIMIT ?", (max(limit, 0),))

    def claim(self, job_id: str, backend: str) -> Job | None:
        """Queued -> running on ``backend``; None when the job is no longer queued (taken, cancelled)."""
        with self._write() as db:
            return self._claim(db, job_id, backend)

    def claim_next(self, backend: str) -> Job | None:
        """Take the oldest queued job for ``backend`` in one step (safe across threads and processes)."""
        with self._write() as db:
            row = db.execute("SELECT id FROM jobs WHERE state = 'queued' ORDER BY seq LIMIT 1").fetchone()
            return None if row is None else self._claim(db, row[0], backend)

    @staticmethod
    def _claim(db: sqlite3.Connection, job_id: str, backend: str) -> Job | None:
        cursor = db.execute(
            "UPDATE jobs SET state = 'running', backend = ?, started_at = ? "
            "WHERE id = ? AND state = 'queued'",
            (backend, time.time(), job_id),
        )
        return _fetch(db, job_id) if cursor.rowcount else None

    def mark_done(self, job_id: str, results: Sequence[ResultFile] = (), *, count: bool = True) -> bool:
        """Running -> done, storing its results and (``count``) adding one to the generation count,
        all in one transaction. False (and nothing stored) when the job is not running any more:
        an interrupted job's late result is not wanted."""
        now = time.time()
        with self._write() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'done', finished_at = ? WHERE id = ? AND state = 'running'",
                (now, job_id),
            )
            if cursor.rowcount == 0:
                return False
            client_id = db.execute("SELECT client_id FROM jobs WHERE id = ?", (job_id,)).fetchone()[0]
            rows = [(r.name, r.content_type, r.path, r.data, json.dumps(dict(r.metadata))) for r in results]
            db.executemany(
                "INSERT INTO results (job_id, client_id, created_at, name, content_type, path, data, "
                "metadata) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                [(job_id, client_id, now, *row) for row in rows],
            )
            if count:
                self._add(db, GENERATION_COUNT, 1)
        return True

    def mark_failed(self, job_id: str, error: str) -> bool:
        """Queued or running -> failed with ``error``; False when the job had already finished."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'failed', finished_at = ?, error = ? "
                "WHERE id = ? AND state IN ('queued', 'running')",
                (time.time(), error, job_id),
            )
        return cursor.rowcount > 0

    def cancel(self, job_id: str) -> JobState | None:
        """Queued -> cancelled, running -> interrupted; the new state, or None if already finished.

        For a running job the caller must also interrupt its backend (the store only records it).
        """
        with self._write() as db:
            row = db.execute("SELECT state FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None or JobState(row[0]).finished:
                return None
            new = JobState.CANCELLED if row[0] == JobState.QUEUED else JobState.INTERRUPTED
            db.execute(
                "UPDATE jobs SET state = ?, finished_at = ? WHERE id = ?", (new.value, time.time(), job_id)
            )
        return new

    def cancel_client(self, client_id: str) -> list[Job]:
        """Cancel every queued or running job of one client (``/interrupt``, a closed WebSocket);
        returns them as they are now, so the caller interrupts the running ones' backends."""
        with self._write() as db:
            where = "client_id = ? AND state IN ('queued', 'running')"
            ids = [r[0] for r in db.execute(f"SELECT id FROM jobs WHERE {where} ORDER BY seq", (client_id,))]
            db.execute(
                "UPDATE jobs SET state = CASE state WHEN 'queued' THEN 'cancelled' ELSE 'interrupted' END, "
                f"finished_at = ? WHERE {where}",
                (time.time(), client_id),
            )
            return [_fetch(db, i) for i in ids]

    def requeue_running(self, backend: str | None = None) -> list[Job]:
        """Running -> queued (all, or those on ``backend``), keeping their place in the queue.

        At start-up every running job was cut off by the restart; later, a dead backend's jobs go
        back for another backend to take.
        """
        where = "state = 'running'" + (" AND backend = ?" if backend is not None else "")
        args: tuple[Any, ...] = (backend,) if backend is not None else ()
        with self._write() as db:
            ids = [r[0] for r in db.execute(f"SELECT id FROM jobs WHERE {where} ORDER BY seq", args)]
            db.execute(
                f"UPDATE jobs SET state = 'queued', backend = NULL, started_at = NULL WHERE {where}", args
            )
            return [_fetch(db, i) for i in ids]

    def requeue(self, job_id: str) -> bool:
        """One running job back to the queue at its old place (its backend was lost mid-run)."""
        with self._write() as db:
            cursor = db.execute(
                "UPDATE jobs SET state = 'queued', backend = NULL, started_at = NULL "
                "WHERE id = ? AND state = 'running'",
                (job_id,),
            )
        return cursor.rowcount > 0

    def jobs_for_client(self, client_id: str, states: Iterable[JobState | str] | None = None) -> list[Job]:
        """A client's jobs in queue order, optionally only in some states."""
        wanted = _states(states)
        marks = ", ".join("?" * len(wanted))
        return self._jobs(f"client_id = ? AND state IN ({marks}) ORDER BY seq", (client_id, *wanted))

    def known_client(self, client_id: str) -> bool:
        """Whether this client ever submitted a job still on record (``/history``'s two 204 answers)."""
        return bool(self._read("SELECT 1 FROM jobs WHERE client_id = ? LIMIT 1", (client_id,)))

    def queue_position(self, job_id: str) -> int | None:
        """1 for the next job to run; None when the job is not queued."""
        rows = self._read(
            "SELECT COUNT(*) FROM jobs WHERE state = 'queued' AND seq <= "
            "(SELECT seq FROM jobs WHERE id = ? AND state = 'queued')",
            (job_id,),
        )
        return int(rows[0][0]) or None

    def queue_length(self) -> int:
        """Queued jobs (the N of ``{"detail": "queued / N"}``)."""
        return int(self._read("SELECT COUNT(*) FROM jobs WHERE state = 'queued'")[0][0])

    def take_results(self, client_id: str) -> list[Result]:
        """A client's stored results, oldest first, deleted in the same transaction: history is read
        once. Files named by ``path`` are the caller's to send and then delete."""
        with self._write() as db:
            rows = db.execute(
                f"SELECT {_RESULT_COLUMNS} FROM results WHERE client_id = ? ORDER BY seq", (client_id,)
            ).fetchall()
            db.execute("DELETE FROM results WHERE client_id = ?", (client_id,))
        return [_result(r) for r in rows]

    def results_for(self, client_id: str) -> list[Result]:
        """A client's stored results, oldest first, left in place: a reader that must first
        deliver them deletes them afterwards with ``forget_results``."""
        rows = self._read(
            f"SELECT {_RESULT_COLUMNS} FROM results WHERE client_id = ? ORDER BY seq", (client_id,)
        )
        return [_result(r) for r in rows]

    def forget_results(self, seqs: Sequence[int]) -> list[Result]:
        """Delete these results; returns those still there, whose files are the caller's to delete."""
        if not seqs:
            return []
        marks = ", ".join("?" * len(seqs))
        with self._write() as db:
            rows = db.execute(
                f"SELECT {_RESULT_COLUMNS} FROM results WHERE seq IN ({marks})", seqs
            ).fetchall()
            db.execute(f"DELETE FROM results WHERE seq IN ({marks})", seqs)
        return [_result(r) for r in rows]

    def has_results(self, client_id: str) -> bool:
        """Whether ``take_results`` would return anything (without taking it)."""
        return bool(self._read("SELECT 1 FROM results WHERE client_id = ? LIMIT 1", (client_id,)))

    def purge_older_than(self, seconds: float) -> Purged:
        """Forget results stored and jobs finished more than ``seconds`` ago (the retention).

        Queued and running jobs are never purged, however old: a job has no time cap.
        """
        cutoff = time.time() - seconds
        with self._write() as db:
            rows = db.execute(
                f"SELECT {_RESULT_COLUMNS} FROM results WHERE created_at < ? ORDER BY seq", (cutoff,)
            ).fetchall()
            db.execute("DELETE FROM results WHERE created_at < ?", (cutoff,))
            cursor = db.execute(
                "DELETE FROM jobs WHERE state NOT IN ('queued', 'running') AND finished_at < ? "
                "AND id NOT IN (SELECT job_id FROM results)",
                (cutoff,),
            )
        return Purged(cursor.rowcount, [_result(r) for r in rows])

    @staticmethod
    def _add(db: sqlite3.Connection, name: str, by: int) -> int:
        row = db.execute(
            "INSERT INTO counters (name, value) VALUES (?, ?) "
            "ON CONFLICT (name) DO UPDATE SET value = value + excluded.value RETURNING value",
            (name, by),
        ).fetchall()  # fetched to the end, so the statement is done before COMMIT
        return int(row[0][0])

    def increment(self, name: str, by: int = 1) -> int:
        """Add to a named counter; returns the new value."""
        with self._write() as db:
            return self._add(db, name, by)

    def counter(self, name: str) -> int:
        rows = self._read("SELECT value FROM counters WHERE name = ?", (name,))
        return int(rows[0][0]) if rows else 0

    def increment_generation_count(self, by: int = 1) -> int:
        return self.increment(GENERATION_COUNT, by)

    def generation_count(self) -> int:
        """``GET /generation-count``: generations finished since the file was created."""
        return self.counter(GENERATION_COUNT)

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
