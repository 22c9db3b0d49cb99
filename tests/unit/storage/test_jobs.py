"""Durable job store: restarts keep the queue and the counter, recovery, once-only history, retention,
and several threads or connections at once."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from genserve.storage.jobs import JobState, JobStore, ResultFile

GRAPH = {
    "1": {"class_type": "Number", "inputs": {"value": 2.0}},
    "2": {"class_type": "Collect", "inputs": {}},
}


@pytest.fixture
def store(tmp_path: Path) -> Iterator[JobStore]:
    with JobStore(tmp_path / "jobs.sqlite") as store:
        yield store


def test_enqueue_and_fields(store: JobStore) -> None:
    job = store.enqueue("client-a", "text-to-image", GRAPH)
    assert job.state is JobState.QUEUED and job.client_id == "client-a" and job.alias == "text-to-image"
    assert job.graph == GRAPH and job.backend is None and job.started_at is None
    assert store.get(job.id) == job
    assert store.get("nope") is None


def test_restart_keeps_queue_order_and_counter(tmp_path: Path) -> None:
    path = tmp_path / "jobs.sqlite"
    with JobStore(path) as store:
        ids = [store.enqueue(f"c{i}", "t2i", {**GRAPH, "n": i}).id for i in range(5)]
        running = store.claim_next("local")
        assert running is not None and running.id == ids[0]
        assert store.mark_done(running.id, [ResultFile("out.png", "image/png", data=b"png")])
        assert store.increment_generation_count() == 2
    with JobStore(path) as store:
        assert [j.id for j in store.queued()] == ids[1:]
        assert store.queued()[2].graph["n"] == 3
        assert store.generation_count() == 2
        assert store.get(ids[0]).state is JobState.DONE  # type: ignore[union-attr]
        assert store.take_results("c0")[0].read_bytes() == b"png"


def test_claim_and_positions(store: JobStore) -> None:
    a, b, c = (store.enqueue("x", "t2i", GRAPH) for _ in range(3))
    assert store.queue_length() == 3
    assert [store.queue_position(j.id) for j in (a, b, c)] == [1, 2, 3]
    assert store.next_queued() == a
    claimed = store.claim(b.id, "gpu-1")
    assert claimed is not None and claimed.state is JobState.RUNNING and claimed.backend == "gpu-1"
    assert claimed.started_at is not None
    assert store.claim(b.id, "gpu-2") is None  # taken already
    assert store.queue_position(b.id) is None
    assert [store.queue_position(j.id) for j in (a, c)] == [1, 2]
    assert store.queue_length() == 2


def test_requeue_running_keeps_place(store: JobStore) -> None:
    jobs = [store.enqueue("x", "t2i", GRAPH) for _ in range(4)]
    first = store.claim_next("dead")
    second = store.claim_next("alive")
    assert first is not None and second is not None
    back = store.requeue_running("dead")
    assert [j.id for j in back] == [jobs[0].id]
    assert back[0].state is JobState.QUEUED and back[0].backend is None and back[0].started_at is None
    assert store.next_queued() == back[0]  # at its old place, the front
    assert store.get(jobs[1].id).state is JobState.RUNNING  # type: ignore[union-attr]
    assert [j.id for j in store.requeue_running()] == [jobs[1].id]
    assert [j.id for j in store.queued()] == [j.id for j in jobs]


def test_cancel_and_late_results(store: JobStore) -> None:
    queued, running, done = (store.enqueue("x", "t2i", GRAPH) for _ in range(3))
    store.claim(running.id, "b")
    store.claim(done.id, "b")
    assert store.mark_done(done.id, [], count=False)
    assert store.cancel(queued.id) is JobState.CANCELLED
    assert store.cancel(running.id) is JobState.INTERRUPTED
    assert store.cancel(done.id) is None
    assert store.cancel("missing") is None
    assert store.claim(queued.id, "b") is None  # a cancelled job never runs
    assert not store.mark_done(running.id, [ResultFile("late.png", data=b"x")])  # interrupted: dropped
    assert not store.has_results("x")
    assert store.generation_count() == 0


def test_cancel_client_touches_only_that_client(store: JobStore) -> None:
    mine_running = store.enqueue("me", "t2i", GRAPH)
    other_running = store.enqueue("other", "t2i", GRAPH)
    mine_queued = store.enqueue("me", "t2i", GRAPH)
    other_queued = store.enqueue("other", "t2i", GRAPH)
    store.claim(mine_running.id, "b1")
    store.claim(other_running.id, "b2")
    cancelled = store.cancel_client("me")
    assert [(j.id, j.state) for j in cancelled] == [
        (mine_running.id, JobState.INTERRUPTED),
        (mine_queued.id, JobState.CANCELLED),
    ]
    assert cancelled[0].backend == "b1"
    assert store.get(other_running.id).state is JobState.RUNNING  # type: ignore[union-attr]
    assert store.get(other_queued.id).state is JobState.QUEUED  # type: ignore[union-attr]
    assert store.cancel_client("me") == []


def test_failed_and_client_views(store: JobStore) -> None:
    a = store.enqueue("me", "t2i", GRAPH)
    b = store.enqueue("me", "t2i", GRAPH)
    store.claim(a.id, "b")
    assert store.mark_failed(a.id, "SAMPLING_FAILED: out of memory")
    assert not store.mark_failed(a.id, "again")
    failed = store.get(a.id)
    assert failed is not None and failed.error == "SAMPLING_FAILED: out of memory" and failed.finished_at
    assert [j.id for j in store.jobs_for_client("me")] == [a.id, b.id]
    assert [j.id for j in store.jobs_for_client("me", states=[JobState.QUEUED, "running"])] == [b.id]
    assert store.known_client("me") and not store.known_client("stranger")


def test_take_results_is_once_only(store: JobStore, tmp_path: Path) -> None:
    file = tmp_path / "big.png"
    file.write_bytes(b"\x89PNG big")
    job = store.enqueue("me", "t2i", GRAPH)
    other = store.enqueue("other", "t2i", GRAPH)
    for j in (job, other):
        store.claim(j.id, "b")
    results = [
        ResultFile("a.png", "image/png", data=b"\x89PNG a", metadata={"node": "9", "seed": 1}),
        ResultFile("big.png", "image/png", path=str(file)),
    ]
    assert store.mark_done(job.id, results)
    assert store.mark_done(other.id, [ResultFile("o.png", data=b"o")])
    assert store.generation_count() == 2
    taken = store.take_results("me")
    assert [(r.name, r.content_type, r.job_id, r.client_id) for r in taken] == [
        ("a.png", "image/png", job.id, "me"),
        ("big.png", "image/png", job.id, "me"),
    ]
    assert taken[0].metadata == {"node": "9", "seed": 1} and taken[0].path is None
    assert taken[1].path == str(file) and taken[1].read_bytes() == b"\x89PNG big"
    assert store.take_results("me") == []
    assert store.known_client("me")  # so /history answers "no contents", not "unknown client"
    assert [r.name for r in store.take_results("other")] == ["o.png"]


def test_result_needs_exactly_one_source() -> None:
    with pytest.raises(ValueError, match="exactly one"):
        ResultFile("x.png")
    with pytest.raises(ValueError, match="exactly one"):
        ResultFile("x.png", data=b"x", path="/tmp/x.png")


def test_purge_older_than(store: JobStore) -> None:
    old_done = store.enqueue("old", "t2i", GRAPH)
    old_failed = store.enqueue("old", "t2i", GRAPH)
    old_queued = store.enqueue("old", "t2i", GRAPH)
    store.claim(old_done.id, "b")
    store.mark_done(old_done.id, [ResultFile("old.png", path="/results/old.png")])
    store.mark_failed(old_failed.id, "boom")
    time.sleep(0.05)
    new = store.enqueue("new", "t2i", GRAPH)
    store.claim(new.id, "b")
    store.mark_done(new.id, [ResultFile("new.png", data=b"n")])
    purged = store.purge_older_than(0.03)
    assert purged.jobs == 2
    assert [r.path for r in purged.results] == ["/results/old.png"]  # the caller deletes the file
    assert store.get(old_done.id) is None and store.get(old_failed.id) is None
    assert store.get(old_queued.id) is not None  # a queued job has no time cap
    assert [r.name for r in store.take_results("new")] == ["new.png"]
    assert store.generation_count() == 2  # counters are never purged


def test_concurrent_enqueues_keep_unique_ids_and_fifo(store: JobStore) -> None:
    per_thread, threads = 25, 8
    made: dict[int, list[str]] = {}

    def work(n: int) -> None:
        made[n] = [store.enqueue(f"t{n}", "t2i", {"n": i}).id for i in range(per_thread)]

    workers = [threading.Thread(target=work, args=(n,)) for n in range(threads)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    queued = store.queued()
    ids = [j.id for j in queued]
    assert len(ids) == len(set(ids)) == per_thread * threads
    assert [j.seq for j in queued] == sorted(j.seq for j in queued)
    for n, mine in made.items():  # each thread's jobs keep the order it made them in
        assert [j.id for j in queued if j.client_id == f"t{n}"] == mine


def test_two_connections_on_one_new_file_claim_each_job_once(tmp_path: Path) -> None:
    """Separate connections behave like separate processes: a WAL switch race, then claim races."""
    path = tmp_path / "shared" / "jobs.sqlite"
    barrier = threading.Barrier(4)
    stores: list[JobStore] = []
    errors: list[BaseException] = []

    def open_store() -> None:
        barrier.wait()
        try:
            stores.append(JobStore(path))
        except BaseException as exc:
            errors.append(exc)

    openers = [threading.Thread(target=open_store) for _ in range(4)]
    for t in openers:
        t.start()
    for t in openers:
        t.join()
    assert errors == [] and len(stores) == 4
    ids = {stores[0].enqueue("c", "t2i", GRAPH).id for _ in range(40)}
    claimed: list[str] = []
    lock = threading.Lock()

    def dispatch(store: JobStore, name: str) -> None:
        while (job := store.claim_next(name)) is not None:
            with lock:
                claimed.append(job.id)

    workers = [threading.Thread(target=dispatch, args=(s, f"b{i}")) for i, s in enumerate(stores)]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    assert sorted(claimed) == sorted(ids)
    for s in stores:
        s.increment_generation_count()
    assert stores[1].generation_count() == 4
    for s in stores:
        s.close()
