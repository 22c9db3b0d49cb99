"""Scale-out: workers in one consumer group share the partitions, and the messages of a worker
that dies (killed, no goodbye) are answered by the others: every request once, none lost, and
a request answered twice only ever with the same answer."""

from __future__ import annotations

import asyncio
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from genserve.engine.events import RunRecord
from tests.conftest import REPO
from tests.integration.kafka.conftest import (
    TEST_TUNING,
    Broker,
    TopicReader,
    group_lag,
    kafka_settings,
    make_latent,
    message,
    produce,
    running_door,
    worker_env,
)

REQUESTS, RESPONSES = "decoding-requests", "decoding-responses"
KEPT_PARTITIONS = r"consuming decoding-requests partitions \[([\d, ]+)\]$"


TUNING = ["--session-timeout-s", str(TEST_TUNING.session_timeout_s),
          "--rebalance-timeout-s", str(TEST_TUNING.rebalance_timeout_s)]  # fmt: skip


def start_worker(env: dict[str, str], log: Path, command: list[str] | None = None) -> subprocess.Popen[bytes]:
    """``genserve kafka-worker`` as a separate process, with the tests' short timings."""
    genserve = str(Path(sys.executable).with_name("genserve"))
    with log.open("wb") as out:
        return subprocess.Popen(
            command or [genserve, "kafka-worker", *TUNING], env=env, cwd=REPO, stdout=out, stderr=out
        )


def wait_for_line(
    log: Path, pattern: str, process: subprocess.Popen[bytes], timeout: float = 60.0
) -> re.Match[str]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = list(re.finditer(pattern, log.read_text(errors="replace"), re.MULTILINE))
        if found:
            return found[-1]
        if process.poll() is not None:
            raise AssertionError(f"the worker exited with {process.returncode}:\n{log.read_text()}")
        time.sleep(0.05)
    raise AssertionError(f"no {pattern!r} in the worker's log:\n{log.read_text()}")


@pytest.mark.slow  # a worker process to start, then to be declared dead by the group: about 20 s
def test_a_killed_worker_leaves_its_messages_to_another(
    broker: Broker, demo_models: Path, data_root: Path, tmp_path: Path
) -> None:
    # Two hosts: each worker its own response store; what A answered reaches B through Kafka.
    store_a, store_b = tmp_path / "host-a.sqlite", tmp_path / "host-b.sqlite"
    settings = kafka_settings(demo_models, data_root, broker, store_b, ["decoding"])
    latent = make_latent(settings, megapixels=128 * 128 / 1_000_000)
    messages = [message("decoding", {"latent_file": latent}) for _ in range(48)]
    ids = {m["request_id"] for m in messages}
    log = tmp_path / "worker-a.log"
    worker_a = start_worker(worker_env(demo_models, data_root, broker, store_a, ["decoding"]), log)
    a_id = f"{socket.gethostname()}:{worker_a.pid}"  # as the worker names itself in its replies

    async def scenario() -> None:
        await asyncio.to_thread(wait_for_line, log, r"serving decoding-requests", worker_a)
        async with running_door(settings) as door_b:
            # B's join moved some partitions from A to B; A logs what it kept.
            while not door_b.assignment()["decoding"] or len(door_b.assignment()["decoding"]) == 4:
                await asyncio.sleep(0.05)
            b_partitions = set(door_b.assignment()["decoding"])
            a_partitions: set[int] = set()
            deadline = time.monotonic() + 30
            while not a_partitions or a_partitions & b_partitions:  # A's log line may come a moment later
                assert time.monotonic() < deadline, f"A kept {a_partitions}, B has {b_partitions}"
                kept = await asyncio.to_thread(wait_for_line, log, KEPT_PARTITIONS, worker_a)
                a_partitions = {int(p) for p in re.findall(r"\d+", kept.group(1))}
                await asyncio.sleep(0.05)
            assert a_partitions | b_partitions == {0, 1, 2, 3}
            async with TopicReader(broker.bootstrap, RESPONSES) as replies:
                partitions = await produce(broker.bootstrap, REQUESTS, messages)
                await replies.read_until(
                    lambda records: any(r.headers["genserve.worker"] == a_id for r in records)
                )
                worker_a.send_signal(signal.SIGKILL)  # mid-work: A holds messages it has not committed
                worker_a.wait()
                answers = await replies.bodies_for(ids, timeout=60)
                await replies.drain(0.5)  # any late repeat shows up too
            lag = await group_lag(broker.bootstrap, "decoding-group", REQUESTS, len(messages))
        by_a = {r.key for r in replies.records if r.headers["genserve.worker"] == a_id}
        on_a = {m["request_id"] for m, p in zip(messages, partitions, strict=True) if p in a_partitions}
        assert on_a - by_a, "B answered none of A's messages: A was not killed while holding work"
        assert set(answers) == ids  # none lost
        for rid in ids:
            bodies = [r.body for r in replies.records if r.key == rid]
            assert all(b == bodies[0] for b in bodies), f"{rid} answered differently: {bodies}"
            assert bodies[0]["status"] == "success"
        assert lag == 0  # B committed A's partitions too

    try:
        asyncio.run(scenario())
    finally:
        if worker_a.poll() is None:
            worker_a.kill()
            worker_a.wait()


def test_a_worker_stops_cleanly_on_sigterm(
    broker: Broker, demo_models: Path, data_root: Path, tmp_path: Path
) -> None:
    log = tmp_path / "worker.log"
    worker = start_worker(
        worker_env(demo_models, data_root, broker, tmp_path / "r.sqlite", ["decoding"]), log
    )
    try:
        wait_for_line(log, r"serving decoding-requests", worker)
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
        assert "kafka: stopped" in log.read_text()
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


@pytest.mark.slow  # about 15 s on two CPU cores
def test_500_requests_through_two_workers_none_lost_none_repeated(
    broker: Broker, demo_models: Path, data_root: Path, tmp_path: Path
) -> None:
    settings = kafka_settings(demo_models, data_root, broker, tmp_path / "responses.sqlite", ["decoding"])
    latent = make_latent(settings)
    messages = [message("decoding", {"latent_file": latent, "output_format": "png"}) for _ in range(500)]
    ids = {m["request_id"] for m in messages}

    async def scenario() -> None:
        runs: dict[str, list[RunRecord]] = {"a": [], "b": []}
        async with TopicReader(broker.bootstrap, RESPONSES) as replies, running_door(settings) as door_a:
            door_a.runtime.engine.observers.append(runs["a"].append)
            await produce(broker.bootstrap, REQUESTS, messages)
            while len(replies.records) < 50:  # A is busy ...
                await replies.drain(0.02)
            async with running_door(settings) as door_b:  # ... when B joins: A hands half its partitions over
                door_b.runtime.engine.observers.append(runs["b"].append)
                answers = await replies.bodies_for(ids, timeout=120)
                await replies.drain(0.5)
                lag = await group_lag(broker.bootstrap, "decoding-group", REQUESTS, len(messages))
        assert set(answers) == ids  # none lost
        assert all(body["status"] == "success" for bodies in answers.values() for body in bodies)
        assert runs["a"] and runs["b"]  # both worked
        assert len(runs["a"]) + len(runs["b"]) == 500  # and no request ran twice
        assert len(replies.records) == 500  # each answered once
        assert lag == 0

    asyncio.run(scenario())


def test_the_deprecated_module_entry_still_runs_a_worker(
    broker: Broker, demo_models: Path, data_root: Path, tmp_path: Path
) -> None:
    """``python -m genserve.api.kafka`` warns, then is ``genserve kafka-worker`` with the same flags."""
    log = tmp_path / "worker.log"
    env = worker_env(demo_models, data_root, broker, tmp_path / "r.sqlite", ["decoding"])
    worker = start_worker(env, log, [sys.executable, "-m", "genserve.api.kafka", *TUNING])
    try:
        wait_for_line(log, r"serving decoding-requests", worker)
        assert "python -m genserve.api.kafka is deprecated; use `genserve kafka-worker`" in log.read_text()
        worker.send_signal(signal.SIGTERM)
        assert worker.wait(30) == 0
    finally:
        if worker.poll() is None:
            worker.kill()
            worker.wait()


def test_a_bad_flag_value_is_refused_naming_the_flag(tmp_path: Path) -> None:
    genserve = str(Path(sys.executable).with_name("genserve"))
    done = subprocess.run(
        [genserve, "kafka-worker", "--max-in-flight", "0"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
    )
    assert done.returncode == 2 and "--max-in-flight" in done.stderr and "Traceback" not in done.stderr
