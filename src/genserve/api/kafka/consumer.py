"""One service's consumer: requests in, answers out, offsets committed after the answers.

Per message, in this order: read and validate it (a bad one goes to the dead-letter topic, with an
error answer when it has a request id); look its id up in the response store (a redelivery is
answered from there, never recomputed); else run it on the engine and write the answer to the
answers topic, shared by the workers of every host (``kafka_answers``, which explains why this
order is crash-safe); write the reply; then commit the partition's answered prefix. A crash
anywhere before the commit only means the message comes again, and the answers topic makes the
second answer the same as the first, on whichever host it lands.

Rebalances hand partitions over cleanly: before giving them up, the consumer lets the work it holds
on them finish (within the rebalance timeout) and commits, so the next owner neither loses nor
repeats it. After an assignment, no message is looked up before the worker has caught up on the
answers topic, so an answer left by a worker that died before committing is found.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from aiokafka import AIOKafkaConsumer, ConsumerRebalanceListener, TopicPartition
from aiokafka.errors import KafkaError
from aiokafka.structs import ConsumerRecord

from genserve.api.kafka.answers import AnswerLog
from genserve.api.kafka.flow import InFlightLimit, PartitionProgress
from genserve.api.kafka.publish import Abandoned, Publisher
from genserve.api.kafka.wire import Incoming, read_message, store_scope
from genserve.engine.engine import Engine
from genserve.errors import ErrorCode, GenserveError, as_genserve_error
from genserve.services.base import Service
from genserve.storage.responses import ResponseStore, StoredResponse

log = logging.getLogger("genserve.kafka")
_BUSY_FIRST_S = 0.05  # engine queue full: first wait before trying again
_BUSY_MAX_S = 1.0


class ServiceConsumer(ConsumerRebalanceListener):
    """Consumes one service's request topic in its consumer group."""

    def __init__(
        self,
        consumer: AIOKafkaConsumer,
        service: Service[Any, Any],
        *,
        engine: Engine,
        publisher: Publisher,
        store: ResponseStore,
        answers: AnswerLog,
        limit: InFlightLimit,
        topics: tuple[str, str, frozenset[str]],  # request, response, dead-letter + request topics
        dead_letter_topic: str,
        request_timeout_s: float,
        poll_s: float,
        handover_s: float,
    ) -> None:
        self.consumer = consumer
        self.service = service
        self.engine = engine
        self.publisher = publisher
        self.store = store
        self.answers = answers
        self.limit = limit
        self.request_topic, self.response_topic, self.forbidden_topics = topics
        self.dead_letter_topic = dead_letter_topic
        self.request_timeout_s = request_timeout_s
        self.poll_s = poll_s
        self.handover_s = handover_s
        self.scope = store_scope(service.name)
        self.progress = PartitionProgress()
        self._tasks: dict[asyncio.Task[None], TopicPartition] = {}
        self._running: dict[str, asyncio.Future[StoredResponse]] = {}  # request id -> its one run
        self._commit_lock = asyncio.Lock()
        self._loop_task: asyncio.Task[None] | None = None
        self._caught_up: asyncio.Future[None] | None = None  # the catch-up of the latest assignment

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> None:
        self.consumer.subscribe([self.request_topic], listener=self)
        await self.consumer.start()  # joins the group; returns once partitions are assigned
        self._loop_task = asyncio.create_task(self._fetch_loop(), name=f"kafka-{self.service.name}")

    @property
    def in_flight(self) -> int:
        return len(self._tasks)

    async def stop(self, grace_s: float, hurry: asyncio.Event) -> None:
        """Stop fetching, let held work finish (up to ``grace_s``, or until ``hurry``), commit, leave."""
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
        await self._finish(list(self._tasks), grace_s, hurry)
        for task in list(self._tasks):
            task.cancel()  # past the grace: left uncommitted, so the next owner answers it
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        await self._commit()
        if self._caught_up is not None:
            self._caught_up.cancel()
        await self.consumer.stop()  # leaves the group: its partitions move to the others at once

    @staticmethod
    async def _finish(tasks: list[asyncio.Task[None]], timeout: float, hurry: asyncio.Event | None) -> None:
        if not tasks:
            return
        waits: set[asyncio.Future[Any]] = {asyncio.ensure_future(asyncio.wait(tasks, timeout=timeout))}
        if hurry is not None:
            waits.add(asyncio.ensure_future(hurry.wait()))
        _, pending = await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
        for extra in pending:
            extra.cancel()

    # -- rebalance ----------------------------------------------------------------------------

    async def on_partitions_revoked(self, revoked: list[TopicPartition]) -> None:
        gone = set(revoked)
        held = [task for task, tp in self._tasks.items() if tp in gone]
        if held:
            log.info(
                "kafka: %s: finishing %d held message(s) before the rebalance", self.service.name, len(held)
            )
            await self._finish(held, self.handover_s, None)
        await self._commit()
        self.progress.new_generation()

    async def on_partitions_assigned(self, assigned: list[TopicPartition]) -> None:
        self.progress.new_generation()
        # Not awaited here: the client may already return records of the new partitions (it sets the
        # assignment before calling this), so it is each message that waits for it (``_catch_up``).
        self._caught_up = self._start_catch_up()
        partitions = sorted(tp.partition for tp in assigned)
        log.info("kafka: %s consuming %s partitions %s", self.service.name, self.request_topic, partitions)

    # -- fetching -----------------------------------------------------------------------------

    async def _fetch_loop(self) -> None:
        while True:
            try:
                await self._fetch_once()
            except asyncio.CancelledError:
                raise
            except KafkaError as exc:  # a coordination error surfaces here; the client recovers by itself
                log.warning("kafka: %s: fetching failed (%r); trying again", self.service.name, exc)
                await asyncio.sleep(self.poll_s)

    async def _fetch_once(self) -> None:
        consumer = self.consumer
        if self.limit.free == 0:
            consumer.pause(*consumer.assignment())  # backpressure: the client stops fetching
            await self.limit.wait_free(self.poll_s)
            if self.limit.free == 0:
                # A poll all the same, so the group keeps this member; a partition assigned since the
                # pause may still return records, and those are put back.
                self._take(await consumer.getmany(timeout_ms=0))
                return
        if consumer.paused():
            consumer.resume(*consumer.paused())
        self._take(await consumer.getmany(timeout_ms=int(self.poll_s * 1000), max_records=self.limit.free))

    def _take(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Start work on as many records as there are free slots; seek back to the rest, which are
        fetched again later (another consumer of this worker may have used the slots meanwhile)."""
        for tp, records in batches.items():
            taken = self.limit.take(len(records))
            for record in records[:taken]:
                self._spawn(tp, record)
            if taken < len(records):
                self.consumer.seek(tp, records[taken].offset)

    def _spawn(self, tp: TopicPartition, record: ConsumerRecord) -> None:
        self.progress.taken(tp, record.offset)
        task = asyncio.create_task(self._handle(tp, record, self.progress.generation))
        self._tasks[task] = tp
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.pop(task, None)
        self.limit.release()

    # -- one message --------------------------------------------------------------------------

    async def _handle(self, tp: TopicPartition, record: ConsumerRecord, generation: int) -> None:
        try:
            await self._answer(record)
        except (Abandoned, asyncio.CancelledError):
            log.info("kafka: %s[%d]@%d left for redelivery", record.topic, record.partition, record.offset)
            return
        except Exception as exc:  # a defect here must not stall the partition: dead-letter and go on
            log.exception("kafka: %s[%d]@%d failed", record.topic, record.partition, record.offset)
            try:
                await self._reject(record, self._read(record), as_genserve_error(exc))
            except (Abandoned, asyncio.CancelledError):
                return
        self.progress.answered(tp, record.offset, generation)
        await self._commit()

    def _read(self, record: ConsumerRecord) -> Incoming:
        return read_message(record.value, self.service, self.response_topic, self.forbidden_topics)

    async def _answer(self, record: ConsumerRecord) -> None:
        message = self._read(record)
        if message.problem is not None or message.request_id is None:
            await self._reject(record, message, message.problem)
            return
        rid = message.request_id
        await self._catch_up()
        stored = await asyncio.to_thread(self.store.get, self.scope, rid)
        if stored is None:
            stored = await self._run_once(rid, message)
        else:
            log.info("kafka: %s answered again from the store", rid, extra={"request_id": rid})
        if stored.digest != message.digest:
            problem = GenserveError(
                ErrorCode.ALREADY_EXISTS,
                f"request_id {rid!r} was already used for a different {self.service.name} request",
                field="request_id",
            )
            await self._reject(record, message, problem)
            return
        await self.publisher.reply(message.reply, stored.body, self.service.name)

    def _start_catch_up(self) -> asyncio.Future[None]:
        future = asyncio.ensure_future(self.answers.catch_up())
        future.add_done_callback(lambda done: done.cancelled() or done.exception())  # seen, even unawaited
        return future

    async def _catch_up(self) -> None:
        """Wait for the answers-topic catch-up of the latest assignment. When it failed, the message
        is left for redelivery and the next one starts it again."""
        caught_up = self._caught_up
        if caught_up is None:
            return
        try:
            await asyncio.shield(caught_up)
        except (Abandoned, asyncio.CancelledError):
            raise
        except Exception as exc:
            if self._caught_up is caught_up:
                self._caught_up = self._start_catch_up()
            raise Abandoned(f"cannot read the answers topic: {exc!r}") from exc

    async def _reject(self, record: ConsumerRecord, message: Incoming, problem: GenserveError | None) -> None:
        problem = problem or GenserveError(ErrorCode.INVALID_INPUT, "request_id: missing")
        await self.publisher.dead_letter(
            self.dead_letter_topic, record, problem, self.service.name, message.request_id
        )
        if message.request_id is not None:
            await self.publisher.reply(message.reply, problem.to_dict(message.request_id), self.service.name)

    async def _run_once(self, rid: str, message: Incoming) -> StoredResponse:
        """Run the request, record its answer for every worker; a copy of it arriving meanwhile
        waits for this run."""
        running = self._running.get(rid)
        if running is not None:
            return await asyncio.shield(running)
        future: asyncio.Future[StoredResponse] = asyncio.get_running_loop().create_future()
        self._running[rid] = future
        try:
            body = await self._run(rid, message)
            stored = await self.answers.record(self.service.name, rid, body, message.digest)
            future.set_result(stored)
            return stored
        except BaseException as exc:
            if not future.done():
                future.set_exception(Abandoned(f"the first run of {rid} was abandoned"))
                future.exception()  # mark as seen when nobody waits for it
            if isinstance(exc, GenserveError):
                raise Abandoned(str(exc)) from exc
            raise
        finally:
            self._running.pop(rid, None)

    async def _run(self, rid: str, message: Incoming) -> dict[str, Any]:
        """The engine's answer as the REST door's JSON; a full queue is waited out, never dropped."""
        delay = _BUSY_FIRST_S
        while True:
            try:
                result = await self.engine.submit(
                    self.service, message.request, request_id=rid, timeout=self.request_timeout_s
                )
                return result.model_dump(mode="json")
            except GenserveError as err:
                if err.code is ErrorCode.RESOURCE_EXHAUSTED:
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, _BUSY_MAX_S)
                    continue
                if err.code in (ErrorCode.UNAVAILABLE, ErrorCode.CANCELLED) and not self.engine.accepting:
                    raise  # the engine is shutting down: leave the message to the next owner
                return err.to_dict(rid)

    # -- commits ------------------------------------------------------------------------------

    async def _commit(self) -> None:
        """Commit every partition's answered prefix; concurrent callers coalesce."""
        async with self._commit_lock:
            generation = self.progress.generation
            offsets = self.progress.committable()
            if not offsets:
                return
            try:
                await self.consumer.commit(offsets)
            except KafkaError as exc:  # rebalanced meanwhile: the next owner starts from the last commit
                log.warning("kafka: %s: commit of %s failed: %r", self.service.name, offsets, exc)
                return
            self.progress.committed(offsets, generation)
