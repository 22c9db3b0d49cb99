"""The answers topic: an id answered by a worker on one host is answered again, byte for byte and
without running, by a worker on another host (its own response store), after a restart with an
empty store, and when the first worker died before sending its reply; two hosts that ran one id at
once send the same answer."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from genserve.api.kafka.door import KafkaDoor
from genserve.engine.events import RunRecord
from genserve.storage.responses import ResponseStore, request_digest
from tests.integration.kafka.conftest import (
    Broker,
    Received,
    TopicReader,
    kafka_settings,
    make_latent,
    message,
    running_door,
)

REQUESTS, RESPONSES, ANSWERS = "decoding-requests", "decoding-responses", "genserve-answers"


async def send_to(
    bootstrap: str, topic: str, partition: int, *bodies: dict[str, Any] | bytes, **kw: Any
) -> None:
    """Each body to one chosen partition (so that a chosen worker consumes it)."""
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        for body in bodies:
            value = body if isinstance(body, bytes) else json.dumps(body).encode()
            await producer.send_and_wait(topic, value, partition=partition, **kw)
    finally:
        await producer.stop()


async def split(a: KafkaDoor, b: KafkaDoor, timeout: float = 30.0) -> tuple[int, int]:
    """Once the group has settled with partitions on both workers: one partition of each."""
    deadline = time.monotonic() + timeout
    while True:
        on_a, on_b = set(a.assignment()["decoding"]), set(b.assignment()["decoding"])
        if on_a and on_b and not on_a & on_b and len(on_a | on_b) == 4:
            return min(on_a), min(on_b)
        assert time.monotonic() < deadline, f"no split: A {on_a}, B {on_b}"
        await asyncio.sleep(0.05)


async def stored_in(path: Path, request_id: str, timeout: float = 30.0) -> None:
    """Wait until the store file at ``path`` (a worker's host store) holds the answer to an id."""
    deadline = time.monotonic() + timeout

    def look() -> bool:
        with ResponseStore(path) as store:
            return store.get("kafka:decoding", request_id) is not None

    while not await asyncio.to_thread(look):
        assert time.monotonic() < deadline, f"{request_id} never reached {path}"
        await asyncio.sleep(0.05)


def replies_to(replies: TopicReader, request_id: str) -> list[Received]:
    return [r for r in replies.records if r.key == request_id]


def test_an_id_answered_on_one_host_is_answered_from_the_store_on_another(
    broker: Broker, demo_models: Path, data_root: Path, tmp_path: Path
) -> None:
    """Worker A answers; the client sends the same id again and it lands on B's partition; B, with
    its own store (another host), sends A's answer, byte for byte, and runs nothing."""
    store_a, store_b = tmp_path / "host-a" / "responses.sqlite", tmp_path / "host-b" / "responses.sqlite"
    settings_a = kafka_settings(demo_models, data_root, broker, store_a, ["decoding"])
    settings_b = kafka_settings(demo_models, data_root, broker, store_b, ["decoding"])
    latent = make_latent(settings_a)
    request = message("decoding", {"latent_file": latent}, f"cross-{uuid.uuid4()}")
    rid = request["request_id"]

    async def scenario() -> None:
        runs_a: list[RunRecord] = []
        runs_b: list[RunRecord] = []
        async with (
            TopicReader(broker.bootstrap, RESPONSES) as replies,
            running_door(settings_a) as door_a,
            running_door(settings_b) as door_b,
        ):
            door_a.runtime.engine.observers.append(runs_a.append)
            door_b.runtime.engine.observers.append(runs_b.append)
            on_a, on_b = await split(door_a, door_b)
            await send_to(broker.bootstrap, REQUESTS, on_a, request)
            await replies.read_until(lambda records: any(r.key == rid for r in records))
            await stored_in(store_b, rid)  # B's host learned A's answer from the answers topic
            await send_to(broker.bootstrap, REQUESTS, on_b, request)
            await replies.read_until(lambda records: sum(r.key == rid for r in records) >= 2)
            await replies.drain(0.3)
        first, again = replies_to(replies, rid)
        assert first.body["status"] == "success"
        assert again.value == first.value  # the same bytes: outputs, decode_ms and all
        assert len(runs_a) == 1 and not runs_b  # computed once, on A

    asyncio.run(scenario())


def test_answers_survive_a_restart_with_an_empty_store(
    broker: Broker, demo_models: Path, data_root: Path, tmp_path: Path
) -> None:
    """A worker's host store is lost (a new machine); the answers are read back from Kafka. The door
    also created the answers topic compacted, with the configured retention."""
    first_store, fresh_store = tmp_path / "old" / "responses.sqlite", tmp_path / "new" / "responses.sqlite"
    settings = kafka_settings(demo_models, data_root, broker, first_store, ["decoding"])
    latent = make_latent(settings)
    request = message("decoding", {"latent_file": latent, "output_format": "png"})
    rid = request["request_id"]

    async def scenario() -> None:
        runs: list[RunRecord] = []
        async with TopicReader(broker.bootstrap, RESPONSES) as replies:
            async with running_door(settings):
                await send_to(broker.bootstrap, REQUESTS, 0, request)
                await replies.read_until(lambda records: any(r.key == rid for r in records))
            restarted = kafka_settings(demo_models, data_root, broker, fresh_store, ["decoding"])
            async with running_door(restarted) as door:
                door.runtime.engine.observers.append(runs.append)
                await send_to(broker.bootstrap, REQUESTS, 1, request)
                await replies.read_until(lambda records: sum(r.key == rid for r in records) >= 2)
            config = await topic_config(broker.bootstrap, ANSWERS)
        first, again = replies_to(replies, rid)
        assert again.value == first.value and not runs
        assert config["cleanup.policy"] == "compact,delete"
        assert config["retention.ms"] == str(int(settings.kafka.responses_keep_s * 1000))

    asyncio.run(scenario())


def test_an_answer_left_by_a_worker_that_died_before_replying_is_sent_not_recomputed(
    broker: Broker, demo_models: Path, data_root: Path, tmp_path: Path
) -> None:
    """What a worker leaves when it dies between writing its answer and sending its reply: the
    answer record (the format ``kafka_wire`` documents) and an uncommitted request. The next owner
    catches up on the answers topic before it looks at the request, and sends that answer."""
    settings = kafka_settings(demo_models, data_root, broker, tmp_path / "responses.sqlite", ["decoding"])
    latent = make_latent(settings)
    request = message("decoding", {"latent_file": latent})
    rid = request["request_id"]
    left = {"status": "success", "request_id": rid, "image_file_path": "/left/by/the/dead.png",
            "image_shape": [64, 64, 3], "file_size": 1, "metadata": {"worker": "dead"}}  # fmt: skip
    value = json.dumps(left, separators=(",", ":")).encode()
    digest = request_digest({"service": "decoding", "input": request["input"]})

    async def scenario() -> None:
        runs: list[RunRecord] = []
        async with TopicReader(broker.bootstrap, RESPONSES) as replies:
            async with running_door(settings):  # creates the topics
                pass
            key = f"decoding/{rid}".encode()
            await send_to(
                broker.bootstrap, ANSWERS, 2, value, key=key, headers=[("genserve.digest", digest.encode())]
            )
            await send_to(broker.bootstrap, REQUESTS, 3, request)
            fresh = kafka_settings(demo_models, data_root, broker, tmp_path / "other.sqlite", ["decoding"])
            async with running_door(fresh) as door:
                door.runtime.engine.observers.append(runs.append)
                await replies.read_until(lambda records: any(r.key == rid for r in records))
        (reply,) = replies_to(replies, rid)
        assert reply.value == value and not runs

    asyncio.run(scenario())


def test_one_id_run_on_two_hosts_at_once_gets_one_answer(
    broker: Broker, demo_models: Path, data_root: Path, tmp_path: Path
) -> None:
    """The same id on A's and B's partitions at the same moment: both may run it, but both send the
    answer written first to the answers topic."""
    settings_a = kafka_settings(demo_models, data_root, broker, tmp_path / "a.sqlite", ["decoding"])
    settings_b = kafka_settings(demo_models, data_root, broker, tmp_path / "b.sqlite", ["decoding"])
    latent = make_latent(settings_a)
    requests = [message("decoding", {"latent_file": latent}, f"twice-{n}-{uuid.uuid4()}") for n in range(6)]
    ids = {r["request_id"] for r in requests}

    async def scenario() -> None:
        async with (
            TopicReader(broker.bootstrap, RESPONSES) as replies,
            running_door(settings_a) as door_a,
            running_door(settings_b) as door_b,
        ):
            on_a, on_b = await split(door_a, door_b)
            await asyncio.gather(
                send_to(broker.bootstrap, REQUESTS, on_a, *requests),
                send_to(broker.bootstrap, REQUESTS, on_b, *requests),
            )
            await replies.read_until(
                lambda records: len([r for r in records if r.key in ids]) >= 12, timeout=60
            )
            await replies.drain(0.3)
        for rid in ids:
            first, again = replies_to(replies, rid)
            assert again.value == first.value, rid

    asyncio.run(scenario())


async def topic_config(bootstrap: str, topic: str) -> dict[str, str]:
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        (response,) = await admin.describe_configs([ConfigResource(ConfigResourceType.TOPIC, topic)])
    finally:
        await admin.close()
    (resource,) = response.resources
    return {entry[0]: entry[1] for entry in resource[4]}
