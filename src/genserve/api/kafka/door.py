"""The Kafka door: pipeline requests from Kafka topics, answers to Kafka topics.

Each configured service (``kafka.services``) gets a consumer in the group
``<kafka.group_prefix><service>-group`` on ``<service>-requests`` (``latent-encoder-requests``, ...),
so any number of workers on any number of hosts share a service's partitions, and Kafka moves the
partitions of a worker that dies to the others. Answers are the REST door's JSON bodies (success or
the spec's error format) on ``output.topic`` or ``<service>-responses``, keyed by the request id.
Messages that cannot be read or validated go to ``<service>-dlq`` with the reason.

Delivery is at least once, with neither loss nor repeated work: an offset is committed only after
the answer is written (see ``kafka_consumer``); a request id already answered is answered again from
the stored answer, on any host: every answer also goes to the compacted topic ``kafka.answers_topic``,
which every worker reads into its host's store (``kafka.responses_db``; see ``kafka_answers``); a
worker holds at most ``kafka.max_in_flight`` messages and pauses its partitions beyond that
(``kafka_flow``).

``KafkaDoor(runtime)`` runs beside the other doors on ``genserve serve``'s event loop;
``run_kafka_worker(settings)`` runs it alone until SIGTERM or Ctrl-C (``python -m genserve.api.kafka``).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
from dataclasses import dataclass, field
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import KafkaError

from genserve.api.kafka.answers import AnswerLog
from genserve.api.kafka.consumer import ServiceConsumer
from genserve.api.kafka.flow import InFlightLimit
from genserve.api.kafka.publish import Publisher
from genserve.api.kafka.wire import (
    consumer_group,
    dead_letter_topic,
    request_topic,
    response_topic,
)
from genserve.config import ConfigError, KafkaSettings
from genserve.engine.runtime import Runtime
from genserve.errors import GenserveError
from genserve.storage.responses import ResponseStore

log = logging.getLogger("genserve.kafka")
_TOPIC_ALREADY_EXISTS = 36
_INVALID_CONFIG = 40


@dataclass(frozen=True)
class KafkaTuning:
    """Client timings that ``kafka.*`` settings do not (yet) name; the defaults suit production.

    Read from settings of the same names when they exist, so that adding them to ``KafkaSettings``
    needs no change here.
    """

    session_timeout_s: float = 10.0  # a worker silent this long is dead: its partitions move on
    rebalance_timeout_s: float = 60.0  # how long a rebalance waits for held work to finish
    topic_partitions: int = 4  # for topics the door creates; the most workers that can share one
    poll_s: float = 0.2  # longest wait for records (or a free slot) before looking again
    # Longest a fetch waits at the broker for records. Kafka answers as soon as records arrive; brokers
    # that only answer at the deadline (tansu) add up to this much latency to every request.
    fetch_max_wait_s: float = 0.1
    shutdown_grace_s: float | None = None  # None: server.shutdown_grace_s
    # Answers older than this are forgotten (pruned from the store at start, skipped when reading the
    # answers topic, its retention): Kafka's default retention is 7 days, so no request older than that
    # can be delivered again.
    responses_keep_s: float = 7 * 24 * 3600
    extra_client_options: dict[str, Any] = field(default_factory=dict)  # security_protocol, sasl_*, ...

    @classmethod
    def from_settings(cls, kafka: KafkaSettings) -> KafkaTuning:
        names = ("session_timeout_s", "rebalance_timeout_s", "topic_partitions", "poll_s", "fetch_max_wait_s",
                 "shutdown_grace_s", "responses_keep_s")  # fmt: skip
        return cls(**{name: getattr(kafka, name) for name in names if hasattr(kafka, name)})


def worker_id() -> str:
    """Names this worker in replies' ``genserve.worker`` header and the Kafka client id."""
    return f"{socket.gethostname()}:{os.getpid()}"


class KafkaDoor:
    """Built before the event loop runs (checks settings only); clients start in ``start``."""

    def __init__(self, runtime: Runtime, tuning: KafkaTuning | None = None) -> None:
        self.runtime = runtime
        self.settings = runtime.settings.kafka
        self.tuning = tuning or KafkaTuning.from_settings(self.settings)
        if not self.settings.bootstrap_servers:
            raise ConfigError("kafka.bootstrap_servers: at least one broker is required, e.g. [kafka:9092]")
        if not self.settings.services:
            raise ConfigError("kafka.services: name at least one service")
        try:
            self.services = [runtime.engine.service(name) for name in self.settings.services]
        except GenserveError as exc:
            raise ConfigError(f"kafka.services: {exc.message}") from None
        self.request_topics = {s.name: request_topic(self.settings, s.name) for s in self.services}
        if len(set(self.request_topics.values())) != len(self.request_topics):
            raise ConfigError(
                f"kafka.request_topics: each service needs its own topic, got {self.request_topics}"
            )
        self.worker_id = worker_id()
        self.consumers: list[ServiceConsumer] = []
        self.producer: AIOKafkaProducer | None = None
        self.store: ResponseStore | None = None
        self.answers: AnswerLog | None = None
        self._hurry = asyncio.Event()
        self._aborting = asyncio.Event()

    @property
    def in_flight(self) -> int:
        return sum(c.in_flight for c in self.consumers)

    def assignment(self) -> dict[str, list[int]]:
        """Partitions each service consumes now (for health checks and tests)."""
        return {
            c.service.name: sorted(tp.partition for tp in c.consumer.assignment()) for c in self.consumers
        }

    def _client_options(self) -> dict[str, Any]:
        return {
            "bootstrap_servers": self.settings.bootstrap_servers,
            "client_id": f"genserve-{self.worker_id}",
            **self.tuning.extra_client_options,
        }

    async def start(self) -> None:
        """Create missing topics, start the producer, join every service's group."""
        try:
            self.store = await asyncio.to_thread(ResponseStore, self.settings.responses_db)
            await asyncio.to_thread(self.store.prune, self.tuning.responses_keep_s)
            await self._ensure_topics()
            self.producer = AIOKafkaProducer(acks="all", linger_ms=0, **self._client_options())
            await self.producer.start()
            publisher = Publisher(self.producer, self.worker_id, self._aborting)
            self.answers = AnswerLog(
                self.settings.answers_topic,
                store=self.store,
                publisher=publisher,
                keep_s=self.tuning.responses_keep_s,
                aborting=self._aborting,
                client_options={
                    "fetch_max_wait_ms": int(self.tuning.fetch_max_wait_s * 1000),
                    **self._client_options(),
                },
            )
            await self.answers.start()  # before joining: the first assignment then has little to read
            limit = InFlightLimit(self.settings.max_in_flight)
            self.consumers = [self._consumer(service, publisher, limit) for service in self.services]
            for outcome in await asyncio.gather(*(c.start() for c in self.consumers), return_exceptions=True):
                if isinstance(outcome, BaseException):
                    raise outcome
        except KafkaError as exc:
            await self._close_clients()
            servers = ",".join(self.settings.bootstrap_servers)
            raise OSError(f"cannot use Kafka at {servers} (kafka.bootstrap_servers): {exc}") from exc
        except BaseException:
            await self._close_clients()
            raise
        log.info(
            "kafka: worker %s serving %s on %s",
            self.worker_id,
            ", ".join(self.request_topics.values()),
            ",".join(self.settings.bootstrap_servers),
        )

    def _consumer(self, service: Any, publisher: Publisher, limit: InFlightLimit) -> ServiceConsumer:
        tuning, name = self.tuning, service.name
        session_ms = int(tuning.session_timeout_s * 1000)
        client = AIOKafkaConsumer(
            group_id=consumer_group(self.settings, name),
            enable_auto_commit=False,
            auto_offset_reset="earliest",  # a new group starts at the first request, never skips one
            session_timeout_ms=session_ms,
            heartbeat_interval_ms=max(100, session_ms // 4),
            rebalance_timeout_ms=int(tuning.rebalance_timeout_s * 1000),
            max_poll_interval_ms=max(int(tuning.rebalance_timeout_s * 1000), 300_000),
            fetch_max_wait_ms=int(tuning.fetch_max_wait_s * 1000),
            **self._client_options(),
        )
        own = {dead_letter_topic(s.name) for s in self.services} | {self.settings.answers_topic}
        forbidden = frozenset(set(self.request_topics.values()) | own)
        assert self.store is not None and self.answers is not None
        return ServiceConsumer(
            client,
            service,
            engine=self.runtime.engine,
            publisher=publisher,
            store=self.store,
            answers=self.answers,
            limit=limit,
            topics=(self.request_topics[name], response_topic(self.settings, name), forbidden),
            dead_letter_topic=dead_letter_topic(name),
            request_timeout_s=self.runtime.settings.server.request_timeout_s,
            poll_s=tuning.poll_s,
            handover_s=tuning.rebalance_timeout_s * 0.8,
        )

    async def _ensure_topics(self) -> None:
        """Create the request, response, dead-letter and answers topics that do not exist yet, so
        workers can join before the first request is sent; brokers that refuse (no rights) are left
        to their admins, with a warning.

        The answers topic is compacted and deletes what is older than ``responses_keep_s``
        (``compact,delete``): compaction drops superseded records of one id, retention the ids no
        redelivery can ask for any more. A broker that refuses these settings gets the topic without
        them, with a warning.
        """
        wanted: set[str] = set()
        for service in self.services:
            name = service.name
            wanted |= {
                self.request_topics[name],
                response_topic(self.settings, name),
                dead_letter_topic(name),
            }
        answers = self.settings.answers_topic
        answers_config = {
            "cleanup.policy": "compact,delete",
            "retention.ms": str(int(self.tuning.responses_keep_s * 1000)),
        }
        admin = AIOKafkaAdminClient(**self._client_options())
        try:
            await admin.start()
            missing = sorted((wanted | {answers}) - set(await admin.list_topics()))
            if missing:
                count = self.tuning.topic_partitions
                new = [NewTopic(t, count, 1, topic_configs=answers_config if t == answers else None)
                       for t in missing]  # fmt: skip
                refused = await self._create(admin, new)
                if refused.get(answers) == _INVALID_CONFIG:
                    log.warning(
                        "kafka: the broker refused %s for %s; creating it without", answers_config, answers
                    )
                    refused.update(await self._create(admin, [NewTopic(answers, count, 1)]))
                for topic, code in refused.items():
                    if code != _TOPIC_ALREADY_EXISTS:
                        log.warning("kafka: could not create topic %s (error code %s)", topic, code)
                created = [t for t in missing if t not in refused]
                if created:
                    log.info("kafka: created topics %s with %d partitions", ", ".join(created), count)
        except KafkaError as exc:
            log.warning("kafka: could not check or create topics (%r); expecting them to exist", exc)
        finally:
            await admin.close()

    @staticmethod
    async def _create(admin: AIOKafkaAdminClient, topics: list[NewTopic]) -> dict[str, int]:
        """Create topics; returns the error code of each one refused."""
        result = await admin.create_topics(topics)
        return {topic: code for topic, code, *_ in getattr(result, "topic_errors", ()) if code}

    def hurry(self) -> None:
        """Stop waiting for held work (a second Ctrl-C): what is unanswered stays uncommitted."""
        self._hurry.set()
        self._aborting.set()

    async def stop(self, grace_s: float | None = None) -> None:
        """Stop fetching, let held work finish and commit it, leave the groups, flush the producer."""
        if grace_s is None:
            grace_s = self.tuning.shutdown_grace_s
        if grace_s is None:
            grace_s = self.runtime.settings.server.shutdown_grace_s
        log.info("kafka: stopping; finishing %d held message(s)", self.in_flight)
        try:
            await asyncio.gather(*(c.stop(grace_s, self._hurry) for c in self.consumers))
        finally:
            await self._close_clients()
        log.info("kafka: stopped")

    async def _close_clients(self) -> None:
        self._aborting.set()
        for consumer in self.consumers:
            try:
                await consumer.consumer.stop()
            except KafkaError as exc:
                log.warning("kafka: stopping a consumer failed: %r", exc)
        if self.answers is not None:
            try:
                await self.answers.stop()
            except KafkaError as exc:
                log.warning("kafka: stopping the answers reader failed: %r", exc)
            self.answers = None
        if self.producer is not None:
            try:
                await self.producer.stop()
            except KafkaError as exc:
                log.warning("kafka: stopping the producer failed: %r", exc)
        if self.store is not None:
            await asyncio.to_thread(self.store.close)
            self.store = None
