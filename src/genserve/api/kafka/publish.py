"""Writing the Kafka door's answers: replies and dead letters, retried until the broker takes them.

An offset is committed only after its answer is acknowledged by the broker (``acks=all``), so a
send that fails is retried with backoff for as long as the failure is transient (the broker is
away); only a worker that is stopping gives up, and then the message stays uncommitted for the next
owner. A failure that retrying cannot fix (an unwritable reply topic a client named, a dead letter
too large to write) falls back to something that can be written, so one message never stalls its
partition.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaProducer
from aiokafka.errors import KafkaError, KafkaTimeoutError
from aiokafka.structs import ConsumerRecord, RecordMetadata

from genserve.api.kafka.wire import Reply, dead_letter_headers, encode_body
from genserve.errors import GenserveError

log = logging.getLogger("genserve.kafka")
_RETRY_FIRST_S = 0.1
_RETRY_MAX_S = 2.0


class Abandoned(Exception):
    """Work given up because the worker is stopping: neither answered nor committed, so the message
    is redelivered to the next owner of its partition."""


def transient(exc: KafkaError) -> bool:
    """True for failures that go away by themselves (broker restarting, leader moving, timeouts)."""
    return bool(exc.retriable) or isinstance(exc, KafkaTimeoutError)


class Publisher:
    """One producer per worker, shared by its consumers."""

    def __init__(self, producer: AIOKafkaProducer, worker_id: str, aborting: asyncio.Event) -> None:
        self.producer = producer
        self.worker_id = worker_id
        self._aborting = aborting

    async def send(
        self,
        topic: str,
        value: bytes | None,
        key: bytes | None,
        headers: list[tuple[str, bytes]],
        *,
        retry: bool = True,
        partition: int | None = None,
    ) -> RecordMetadata:
        """Send and wait for the broker's acknowledgement, which says where the record went;
        transient failures are retried (when ``retry``) until the worker aborts, which raises
        Abandoned."""
        delay = _RETRY_FIRST_S
        while True:
            if self._aborting.is_set():
                raise Abandoned(f"stopping before the answer on {topic} was written")
            try:
                return await self.producer.send_and_wait(
                    topic, value, key=key, headers=headers, partition=partition
                )
            except KafkaError as exc:
                if not (retry and transient(exc)):
                    raise
                log.warning("kafka: writing to %s failed (%r); retrying in %.1f s", topic, exc, delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._aborting.wait(), delay)
            delay = min(delay * 2, _RETRY_MAX_S)

    def headers(self, service: str) -> list[tuple[str, bytes]]:
        """Who wrote a record: the service and this worker."""
        return [("genserve.service", service.encode()), ("genserve.worker", self.worker_id.encode())]

    async def reply(self, reply: Reply, body: dict[str, Any], service: str) -> None:
        """The answer, on the topic the message asked for; on the service's response topic instead
        when that one cannot be written, so that the client's mistake costs only a detour."""
        value, key, headers = encode_body(body), reply.key.encode("utf-8"), self.headers(service)
        if reply.topic != reply.default_topic:
            try:
                await self.send(reply.topic, value, key, headers, retry=False)
                return
            except KafkaError as exc:
                log.warning(
                    "kafka: cannot write the reply to %s (%r); sending it to %s",
                    reply.topic,
                    exc,
                    reply.default_topic,
                    extra={"request_id": body.get("request_id"), "service": service},
                )
                headers.append(("genserve.reply_topic_failed", reply.topic.encode("utf-8")))
        await self.send(reply.default_topic, value, key, headers)

    async def dead_letter(
        self, topic: str, record: ConsumerRecord, reason: GenserveError, service: str, request_id: str | None
    ) -> None:
        """The original message, unchanged, with the reason and its origin in headers."""
        headers = self.headers(service) + dead_letter_headers(
            record.headers,
            reason,
            topic=record.topic,
            partition=record.partition,
            offset=record.offset,
            request_id=request_id,
        )
        log.warning(
            "kafka: %s[%d]@%d to %s: %s",
            record.topic,
            record.partition,
            record.offset,
            topic,
            reason.message,
            extra={"request_id": request_id, "service": service},
        )
        try:
            await self.send(topic, record.value or b"", record.key, headers)
        except KafkaError as exc:  # not transient: too large, say; keep the reason, drop the body
            log.error(
                "kafka: dead letter for %s[%d]@%d kept without its body: %r",
                record.topic,
                record.partition,
                record.offset,
                exc,
            )
            await self.send(
                topic, b"", record.key, [*headers, ("genserve.dlq.body_dropped", repr(exc).encode())]
            )
