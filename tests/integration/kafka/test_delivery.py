"""Delivery through one worker: bad messages go to the dead-letter topic and never stall the
partition; redeliveries are answered from the store; in-flight work is bounded; a graceful stop
finishes and commits what it holds."""

from __future__ import annotations

import asyncio
import json
import uuid
from pathlib import Path
from typing import Any

import pytest

from genserve.engine.events import RunRecord
from tests.integration.kafka.conftest import (
    Broker,
    TopicReader,
    group_lag,
    kafka_settings,
    make_latent,
    message,
    produce,
    running_door,
)

REQUESTS, RESPONSES, DLQ = "decoding-requests", "decoding-responses", "decoding-dlq"
ERROR_FIELDS = {"status", "request_id", "error_code", "error_message", "timestamp"}


def encode(body: dict[str, Any]) -> bytes:
    return json.dumps(body).encode()


@pytest.fixture
def settings(broker: Broker, demo_models: Path, data_root: Path, tmp_path: Path):  # type: ignore[no-untyped-def]
    return kafka_settings(demo_models, data_root, broker, tmp_path / "responses.sqlite", ["decoding"])


def test_bad_messages_get_error_answers_and_dead_letters_and_the_consumer_goes_on(
    broker: Broker, settings: Any
) -> None:
    latent = make_latent(settings)
    good = {"latent_file": latent, "output_format": "png"}
    # (message, request id answered, what the reason names)
    bad: list[tuple[bytes, str | None, str]] = [
        (b"{not json", None, "not JSON"),
        (b"[1, 2]", None, "JSON object"),
        (encode({"service": "decoding", "input": good}), None, "request_id"),
        (
            encode(message("decoding", {"latent_file": 5, "bogus": 1}, "bad-input")),
            "bad-input",
            "latent_file",
        ),
        (encode(message("sampling", good, "bad-service")), "bad-service", "service"),
        (encode({**message("decoding", good, "bad-extra"), "priority": 1}), "bad-extra", "priority"),
        (encode(message("decoding", good, "bad-loop", topic=REQUESTS)), "bad-loop", "output.topic"),
    ]
    missing = message("decoding", {"latent_file": str(Path(latent).with_name("nope.pt"))}, "missing-file")
    last = message("decoding", good, "good-after", topic="my-replies", key="client-key")

    async def scenario() -> None:
        async with running_door(settings) as door:
            async with (
                TopicReader(broker.bootstrap, RESPONSES) as replies,
                TopicReader(broker.bootstrap, DLQ) as dlq,
            ):
                # One partition for all of them, so the good ones queue behind the bad ones.
                await produce(broker.bootstrap, REQUESTS, [m for m, _, _ in bad] + [missing])
                answers = await replies.bodies_for({rid for _, rid, _ in bad if rid} | {"missing-file"})
                dead = await dlq.read_until(lambda records: len(records) >= len(bad))
            async with TopicReader(broker.bootstrap, "my-replies") as mine:
                await produce(broker.bootstrap, REQUESTS, [last])
                keyed = await mine.read_until(lambda records: len(records) >= 1)
            produced = len(bad) + 2
            for _ in range(100):
                if await group_lag(broker.bootstrap, "decoding-group", REQUESTS, produced) == 0:
                    break
                await asyncio.sleep(0.05)
            assert (
                await group_lag(broker.bootstrap, "decoding-group", REQUESTS, produced) == 0
            )  # all committed
            assert door.in_flight == 0

        for original, rid, reason in bad:
            letter = next(d for d in dead if d.value == original)  # the original bytes, unchanged
            assert reason in letter.headers["genserve.dlq.reason"], letter.headers
            assert letter.headers["genserve.dlq.error_code"] == "INVALID_INPUT"
            assert letter.headers["genserve.dlq.topic"] == REQUESTS
            assert int(letter.headers["genserve.dlq.offset"]) >= 0
            if rid is not None:
                (body,) = answers[rid]
                assert set(body) >= ERROR_FIELDS and body["status"] == "error" and body["request_id"] == rid
                assert body["error_code"] == "INVALID_INPUT" and reason in body["error_message"]
        assert len(dead) == len(bad)  # a request that fails while running is answered, not dead-lettered
        (failed,) = answers["missing-file"]
        assert failed["status"] == "error" and failed["error_code"] in {"NOT_FOUND", "IMAGE_NOT_FOUND"}
        (reply,) = keyed
        assert reply.key == "client-key" and reply.body["status"] == "success"
        assert reply.body["request_id"] == "good-after"

    asyncio.run(scenario())


def test_an_answered_request_id_is_answered_again_from_the_store_not_recomputed(
    broker: Broker, settings: Any
) -> None:
    """What a redelivery looks like to a worker: the same message again, after its answer was stored.
    (Workers of one host share the store file: ``tests/unit/storage/test_responses.py``.)"""
    latent = make_latent(settings)
    rid = f"again-{uuid.uuid4()}"
    first = message("decoding", {"latent_file": latent}, rid)
    reused = message("decoding", {"latent_file": latent, "output_format": "png"}, rid)

    async def scenario() -> None:
        runs: list[RunRecord] = []
        async with (
            TopicReader(broker.bootstrap, RESPONSES) as replies,
            TopicReader(broker.bootstrap, DLQ) as dlq,
            running_door(settings) as door,
        ):
            door.runtime.engine.observers.append(runs.append)
            await produce(broker.bootstrap, REQUESTS, [first])
            await replies.bodies_for({rid})
            await produce(broker.bootstrap, REQUESTS, [first, reused])
            await replies.read_until(lambda records: sum(r.key == rid for r in records) >= 3)
            letters = await dlq.read_until(lambda records: len(records) >= 1)
        bodies = [r.body for r in replies.records if r.key == rid]
        assert len(runs) == 1  # computed once
        assert bodies[0]["status"] == "success"
        assert bodies[0] in bodies[1:]  # answered again, the same answer
        (refused,) = [b for b in bodies[1:] if b["status"] == "error"]
        assert refused["error_code"] == "ALREADY_EXISTS"  # one id, a different request
        assert [r.headers["genserve.dlq.error_code"] for r in letters] == ["ALREADY_EXISTS"]
        assert letters[0].headers["genserve.request_id"] == rid

    asyncio.run(scenario())


def test_in_flight_work_is_bounded_by_pausing_partitions(broker: Broker, demo_models: Path, data_root: Path,
                                                          tmp_path: Path) -> None:  # fmt: skip
    settings = kafka_settings(demo_models, data_root, broker, tmp_path / "r.sqlite", ["decoding"])
    settings.kafka.max_in_flight = 2
    latent = make_latent(settings)
    messages = [message("decoding", {"latent_file": latent}) for _ in range(24)]
    ids = {m["request_id"] for m in messages}

    async def scenario() -> None:
        async with running_door(settings) as door, TopicReader(broker.bootstrap, RESPONSES) as replies:
            await produce(broker.bootstrap, REQUESTS, messages)
            held, paused = [], False
            watcher = asyncio.create_task(replies.bodies_for(ids))
            while not watcher.done():
                held.append(door.in_flight)
                paused = paused or bool(door.consumers[0].consumer.paused())
                await asyncio.sleep(0.002)
            answers = watcher.result()
        assert max(held) == 2  # worked at the limit, never beyond it
        assert paused
        assert all(len(a) == 1 for a in answers.values())

    asyncio.run(scenario())


def test_graceful_stop_finishes_and_commits_held_work(broker: Broker, settings: Any) -> None:
    latent = make_latent(settings, megapixels=128 * 128 / 1_000_000)
    messages = [message("decoding", {"latent_file": latent}) for _ in range(12)]
    ids = {m["request_id"] for m in messages}

    async def scenario() -> None:
        async with TopicReader(broker.bootstrap, RESPONSES) as replies:
            async with running_door(settings) as door:
                await produce(broker.bootstrap, REQUESTS, messages)
                while door.in_flight == 0:
                    await asyncio.sleep(0.005)
                held = door.in_flight
            # Stopped while holding work: what it took was answered and committed, the rest waits.
            committed = len(ids) - await group_lag(broker.bootstrap, "decoding-group", REQUESTS, len(ids))
            assert committed >= held > 0
            assert len(await replies.drain(0.5)) == committed
            async with running_door(settings):
                answers = await replies.bodies_for(ids)
        assert all(len(a) == 1 for a in answers.values())  # nothing answered twice

    asyncio.run(scenario())
