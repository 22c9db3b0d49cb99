"""Answered requests, kept so that a redelivered request is answered again instead of recomputed.

Message doors deliver at least once: a worker that dies after answering but before recording its
progress (a Kafka offset commit, say) gets the same request again, on itself or on another worker.
The door looks the request id up here first and, when found, answers with the stored body, so the
client never sees two different answers for one id and no work runs twice.

One SQLite file, shared by every worker process of a host: WAL mode lets readers and one writer
work at once, and ``busy_timeout`` makes a writer wait for another instead of failing. The first
answer stored for an id wins (``INSERT OR IGNORE``); ``put`` returns whichever is stored, so two
workers that raced on one id still answer the same. Synchronous NORMAL is enough: a lost row after
a power cut costs one recomputation, never a lost request.

Workers on other hosts share their answers through a log (the Kafka door's answers topic): each
host reads it into this file with ``put_read``, in log order, together with how far it has read
(``positions``), so that a restart goes on from there instead of reading the whole log again.

The class is blocking and thread-safe; async doors call it through ``asyncio.to_thread``.
"""

from __future__ import annotations

import hashlib
import json
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

from genserve.storage.sqlite import open_shared

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    scope       TEXT NOT NULL,
    request_id  TEXT NOT NULL,
    digest      TEXT NOT NULL,
    body        TEXT NOT NULL,
    created_at  REAL NOT NULL,
    PRIMARY KEY (scope, request_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS responses_created_at ON responses (created_at);
CREATE TABLE IF NOT EXISTS positions (
    source      TEXT NOT NULL,
    partition   INTEGER NOT NULL,
    next_offset INTEGER NOT NULL,
    PRIMARY KEY (source, partition)
) WITHOUT ROWID;
"""
_INSERT = (
    "INSERT OR IGNORE INTO responses (scope, request_id, digest, body, created_at) VALUES (?, ?, ?, ?, ?)"
)


@dataclass(frozen=True)
class StoredResponse:
    """One answered request: the body sent, and the digest of the request that produced it."""

    scope: str
    request_id: str
    digest: str
    body: dict[str, Any]
    created_at: float


@dataclass(frozen=True)
class ReadAnswer:
    """One answer read from a shared log: ``body`` is its JSON text exactly as the log holds it."""

    scope: str
    request_id: str
    digest: str
    body: str
    created_at: float


def encode_json(body: Any) -> str:
    """The one JSON text of a body: compact, UTF-8, as stored here and as the doors send it."""
    return json.dumps(body, separators=(",", ":"), ensure_ascii=False, default=str)


def request_digest(payload: Any) -> str:
    """A stable fingerprint of a request (canonical JSON), to tell a redelivery from an id reused
    for a different request."""
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


class ResponseStore:
    """request id -> response body, per scope (a door and service, e.g. ``kafka:decoding``), so that
    one id reused across the stages of a pipeline never collides."""

    def __init__(self, path: Path | str, *, busy_timeout_s: float = 30.0) -> None:
        self.path = Path(path)
        self._lock = threading.Lock()  # one connection, used from the doors' worker threads in turn
        self._db = open_shared(self.path, _SCHEMA, busy_timeout_s)

    def get(self, scope: str, request_id: str) -> StoredResponse | None:
        with self._lock:
            row = self._db.execute(
                "SELECT digest, body, created_at FROM responses WHERE scope = ? AND request_id = ?",
                (scope, request_id),
            ).fetchone()
        if row is None:
            return None
        return StoredResponse(scope, request_id, row[0], json.loads(row[1]), row[2])

    def put(
        self,
        scope: str,
        request_id: str,
        body: dict[str, Any],
        digest: str = "",
        *,
        created_at: float | None = None,
    ) -> StoredResponse:
        """Store the answer unless one is stored already; return the one that is stored now.

        Insert and read back happen in one transaction, so a concurrent writer's answer is either
        fully before ours (and returned) or fully after (and ignored). ``created_at`` (default: now)
        is when the answer was made, which is what ``prune`` ages by.
        """
        stamp = time.time() if created_at is None else created_at
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.execute(_INSERT, (scope, request_id, digest, encode_json(body), stamp))
                row = self._db.execute(
                    "SELECT digest, body, created_at FROM responses WHERE scope = ? AND request_id = ?",
                    (scope, request_id),
                ).fetchone()
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        return StoredResponse(scope, request_id, row[0], json.loads(row[1]), row[2])

    def put_read(self, source: str, answers: list[ReadAnswer], positions: dict[int, int]) -> None:
        """Store answers read from the log ``source`` (in log order: the first for an id wins, as in
        the log) and how far each partition was read, in one transaction: a position never claims
        answers that are not stored."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                self._db.executemany(
                    _INSERT, [(a.scope, a.request_id, a.digest, a.body, a.created_at) for a in answers]
                )
                self._db.executemany(
                    "INSERT INTO positions (source, partition, next_offset) VALUES (?, ?, ?) "
                    "ON CONFLICT (source, partition) DO UPDATE "
                    "SET next_offset = max(next_offset, excluded.next_offset)",
                    [(source, partition, offset) for partition, offset in positions.items()],
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise

    def positions(self, source: str) -> dict[int, int]:
        """Per partition of the log ``source``, the offset below which every answer is stored here."""
        with self._lock:
            rows = self._db.execute(
                "SELECT partition, next_offset FROM positions WHERE source = ?", (source,)
            ).fetchall()
        return {int(partition): int(offset) for partition, offset in rows}

    def prune(self, older_than_s: float) -> int:
        """Forget answers older than this many seconds; returns how many were removed.

        Past this age a redelivery is no longer expected (the offset was committed long ago), so the
        store need not grow without bound.
        """
        cutoff = time.time() - older_than_s
        with self._lock:
            cursor = self._db.execute("DELETE FROM responses WHERE created_at < ?", (cutoff,))
        return cursor.rowcount

    def __len__(self) -> int:
        with self._lock:
            return int(self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def __enter__(self) -> ResponseStore:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
