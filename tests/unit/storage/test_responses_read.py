"""Answers read from a shared log into the store: log order decides, positions move with them."""

from __future__ import annotations

import time
from pathlib import Path

from genserve.storage.responses import ReadAnswer, ResponseStore, encode_json


def answer(request_id: str, body: dict[str, object], made: float | None = None) -> ReadAnswer:
    made = time.time() if made is None else made
    return ReadAnswer("kafka:decoding", request_id, "digest", encode_json(body), made)


def test_the_first_answer_read_for_an_id_wins_and_positions_only_grow(tmp_path: Path) -> None:
    with ResponseStore(tmp_path / "r.sqlite") as store:
        assert store.positions("answers") == {}
        store.put_read("answers", [answer("a", {"n": 1}), answer("a", {"n": 2})], {0: 2})
        store.put_read("answers", [answer("b", {"n": 3})], {1: 7, 0: 1})  # a sibling worker behind
        assert store.get("kafka:decoding", "a").body == {"n": 1}  # type: ignore[union-attr]
        assert store.get("kafka:decoding", "b").body == {"n": 3}  # type: ignore[union-attr]
        assert store.positions("answers") == {0: 2, 1: 7}
        assert store.positions("other-topic") == {}
        # A worker's own answer, decided first in the log before its reader got there: the same row.
        assert store.put("kafka:decoding", "a", {"n": 9}).body == {"n": 1}


def test_read_answers_keep_their_own_time_for_pruning(tmp_path: Path) -> None:
    with ResponseStore(tmp_path / "r.sqlite") as store:
        store.put_read("answers", [answer("old", {}, made=time.time() - 3600), answer("new", {})], {0: 2})
        store.put("kafka:decoding", "made-long-ago", {}, created_at=time.time() - 3600)
        assert store.prune(older_than_s=60) == 2
        assert store.get("kafka:decoding", "new") is not None
        assert store.positions("answers") == {0: 2}  # what was read stays read


def test_stored_text_is_the_bytes_the_doors_send(tmp_path: Path) -> None:
    body = {"status": "success", "note": "é", "shape": [1, 2], "ms": 1.25}
    with ResponseStore(tmp_path / "r.sqlite") as store:
        store.put_read("answers", [answer("x", body)], {0: 1})
        assert encode_json(store.get("kafka:decoding", "x").body) == encode_json(body)  # type: ignore[union-attr]
