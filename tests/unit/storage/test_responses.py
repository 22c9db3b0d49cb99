"""The answered-requests store: first answer wins, scopes apart, shared safely by processes."""

from __future__ import annotations

import multiprocessing
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from genserve.storage.responses import ResponseStore, request_digest


def test_put_then_get_round_trips_the_body(tmp_path: Path) -> None:
    with ResponseStore(tmp_path / "r.sqlite") as store:
        assert store.get("kafka:decoding", "id-1") is None
        body = {"status": "success", "request_id": "id-1", "image_shape": [128, 128, 3], "note": "é"}
        stored = store.put("kafka:decoding", "id-1", body, digest="abc")
        assert stored.body == body and stored.digest == "abc"
        again = store.get("kafka:decoding", "id-1")
        assert again is not None and again.body == body and again.digest == "abc"


def test_first_answer_wins(tmp_path: Path) -> None:
    with ResponseStore(tmp_path / "r.sqlite") as store:
        store.put("s", "id", {"n": 1}, digest="d1")
        kept = store.put("s", "id", {"n": 2}, digest="d2")
        assert kept.body == {"n": 1} and kept.digest == "d1"
        assert len(store) == 1


def test_scopes_keep_one_id_apart(tmp_path: Path) -> None:
    """One id reused across pipeline stages must not answer one stage with another's body."""
    with ResponseStore(tmp_path / "r.sqlite") as store:
        store.put("kafka:latent_encoder", "same", {"stage": "latent"})
        store.put("kafka:decoding", "same", {"stage": "decode"})
        assert store.get("kafka:latent_encoder", "same").body == {"stage": "latent"}  # type: ignore[union-attr]
        assert store.get("kafka:decoding", "same").body == {"stage": "decode"}  # type: ignore[union-attr]


def test_survives_reopening_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "nested" / "r.sqlite"
    with ResponseStore(path) as store:
        store.put("s", "id", {"ok": True})
    with ResponseStore(path) as store:
        assert store.get("s", "id").body == {"ok": True}  # type: ignore[union-attr]
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_prune_forgets_old_answers_only(tmp_path: Path) -> None:
    with ResponseStore(tmp_path / "r.sqlite") as store:
        store.put("s", "old", {})
        time.sleep(0.05)
        store.put("s", "new", {})
        assert store.prune(older_than_s=0.03) == 1
        assert store.get("s", "old") is None and store.get("s", "new") is not None


def test_digest_ignores_key_order_and_tells_requests_apart() -> None:
    assert request_digest({"a": 1, "b": [1, 2]}) == request_digest({"b": [1, 2], "a": 1})
    assert request_digest({"a": 1}) != request_digest({"a": 2})


def test_threads_racing_on_one_id_all_see_one_answer(tmp_path: Path) -> None:
    with ResponseStore(tmp_path / "r.sqlite") as store, ThreadPoolExecutor(8) as pool:
        kept = list(pool.map(lambda n: store.put("s", "race", {"n": n}).body, range(32)))
    assert len({k["n"] for k in kept}) == 1


def _write_many(path: str, worker: int, count: int) -> list[int]:
    with ResponseStore(path) as store:
        return [store.put("s", f"id-{i}", {"worker": worker}).body["worker"] for i in range(count)]


def test_processes_share_the_file_and_agree(tmp_path: Path) -> None:
    """Two worker processes of one host write the same ids at once: no error, one answer per id."""
    path = str(tmp_path / "r.sqlite")
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(2) as pool:
        results = pool.starmap(_write_many, [(path, 1, 200), (path, 2, 200)])
    assert results[0] == results[1]
    with ResponseStore(path) as store:
        assert len(store) == 200
