"""Opening a SQLite file that several threads and processes share (the Kafka answers, the job store)."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path


def open_shared(path: Path, schema: str, busy_timeout_s: float) -> sqlite3.Connection:
    """WAL, a busy timeout, autocommit (callers open their own transactions), the schema applied.

    Switching a new file to WAL takes an exclusive lock that SQLite does not wait for (no busy
    handler there), so two processes opening one new file at once retry that step here.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    db = sqlite3.connect(path, timeout=busy_timeout_s, check_same_thread=False, isolation_level=None)
    db.execute(f"PRAGMA busy_timeout={int(busy_timeout_s * 1000)}")
    deadline = time.monotonic() + busy_timeout_s
    while True:
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("PRAGMA synchronous=NORMAL")
            db.executescript(schema)
            return db
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() > deadline:
                db.close()
                raise
            time.sleep(0.01)
