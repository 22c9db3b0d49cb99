"""Which API key owns each bridge ``clientId``: the first key that used it, kept beside the job
store so that a restart (the jobs and results survive one) does not free a client's name for
another key to take over, results included."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

from genserve.storage.sqlite import open_shared

SCHEMA = """
CREATE TABLE IF NOT EXISTS client_owners (client_id TEXT PRIMARY KEY, owner TEXT NOT NULL) WITHOUT ROWID;
"""


class ClientOwners:
    def __init__(self, path: Path | str, *, busy_timeout_s: float = 30.0) -> None:
        self._db: sqlite3.Connection = open_shared(Path(path), SCHEMA, busy_timeout_s)
        self._lock = threading.Lock()

    def claim(self, client_id: str, owner: str) -> bool:
        """Take ``client_id`` for ``owner`` unless another owner holds it; whether ``owner`` holds it."""
        with self._lock:
            self._db.execute(
                "INSERT OR IGNORE INTO client_owners (client_id, owner) VALUES (?, ?)", (client_id, owner)
            )
            row = self._db.execute(
                "SELECT owner FROM client_owners WHERE client_id = ?", (client_id,)
            ).fetchone()
        return row is not None and row[0] == owner

    def owner(self, client_id: str) -> str | None:
        with self._lock:
            row = self._db.execute(
                "SELECT owner FROM client_owners WHERE client_id = ?", (client_id,)
            ).fetchone()
        return None if row is None else str(row[0])

    def close(self) -> None:
        with self._lock:
            self._db.close()
