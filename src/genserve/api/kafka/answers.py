"""The answers topic: every answer of every worker, read by every worker, on every host.

A request can come to a worker that did not answer it: its first worker died after answering but
before committing the offset (Kafka gives the partition to another worker, on another host), or a
client sent the same request id again and it landed on a partition that another worker owns. A
store on one host cannot see the other hosts' answers, so the answers themselves go through Kafka:
the compacted topic ``kafka.answers_topic`` holds one record per answer (format in ``kafka_wire``),
and each worker reads all of it into its host's response store (``kafka.responses_db``), the place
where request ids are looked up.

**Order per request** (``kafka_consumer``), chosen so that a crash between any two steps is safe:

1. run the request;
2. write its answer here and wait for the broker's acknowledgement (``acks=all``);
3. decide: wait until this worker has read the answers topic through its own record; the first
   record of a request id in the log is *the* answer (see ``record``);
4. write that answer to the reply topic and wait for the acknowledgement;
5. commit the request's offset.

A crash before 2 leaves nothing: the next owner runs the request. A crash between 2 and 4 leaves an
answer nobody was sent: the next owner finds it here and sends it, without running the request
again. A crash between 4 and 5 means one more reply, the same bytes again (at-least-once). Writing
the reply before the answer would let a crash between the two send a second, different, reply
from a second run; committing before the reply would lose it.

**Catching up.** At start, and after each partition assignment before any message is looked up,
a worker writes a marker (a tombstone under a key that names no answer) to every partition of the
answers topic and waits until its reader has read through the markers. Every answer acknowledged
before, including one from a worker that died before committing, is then in the local store. The
marker's acknowledged offset is exact on any broker; end offsets from ListOffsets are not (tansu
under-counts partitions whose batches hold several records).

**Reading** runs in the background for as long as the door runs, outside any consumer group, over
every partition, from where the host's store has read to (the beginning for a new store); answers
older than ``kafka.responses_keep_s`` are skipped, as the broker forgets them too (the door creates
the topic with ``cleanup.policy=compact,delete`` and that retention: compaction alone would keep one
record per request id forever, and every request id is new).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.structs import ConsumerRecord

from genserve.api.kafka.publish import Abandoned, Publisher
from genserve.api.kafka.wire import DIGEST_HEADER, answer_key, encode_body, read_answer_key, store_scope
from genserve.storage.responses import ReadAnswer, ResponseStore, StoredResponse

log = logging.getLogger("genserve.kafka")
SYNC_KEY = b"genserve.sync"  # markers: no "/", so never an answer's key
_MAX_OWN_GAP = 1000  # beyond this many unread records, wait for the reader rather than inspect them
_WAKE_S = 0.5  # how often a waiting step looks whether the worker is stopping


class AnswerLog:
    """One worker's writer and reader of the answers topic, shared by its services' consumers."""

    def __init__(
        self,
        topic: str,
        *,
        store: ResponseStore,
        publisher: Publisher,
        keep_s: float,
        aborting: asyncio.Event,
        client_options: dict[str, Any],
    ) -> None:
        self.topic = topic
        self.store = store
        self.publisher = publisher
        self.keep_s = keep_s
        self._aborting = aborting
        self._consumer = AIOKafkaConsumer(
            group_id=None, enable_auto_commit=False, auto_offset_reset="earliest", **client_options
        )
        self._seen: dict[int, int] = {}  # partition -> next offset to read; every answer below is stored
        self._own: dict[int, dict[int, bytes]] = {}  # this worker's records not read yet: offset -> key
        self._moved = asyncio.Event()  # set (and replaced) each time the reader moves on
        self._reader: asyncio.Task[None] | None = None
        self._assigning = asyncio.Lock()
        self.answers_read = 0  # answers stored from the topic by this worker (records, not ids)

    async def start(self) -> None:
        """Read the topic up to now, then keep reading it in the background."""
        await self._consumer.start()
        await self._assign(await self._partitions())
        self._reader = asyncio.create_task(self._read_loop(), name="kafka-answers")
        started = time.monotonic()
        await self.catch_up()
        log.info(
            "kafka: answers topic %s read into %s (%d answers) in %.2f s",
            self.topic,
            self.store.path,
            self.answers_read,
            time.monotonic() - started,
        )

    async def stop(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        await self._consumer.stop()

    # -- writing --------------------------------------------------------------------------------

    async def record(
        self, service: str, request_id: str, body: dict[str, Any], digest: str
    ) -> StoredResponse:
        """Write an answer and return the one that counts: ours, or the first one any worker wrote
        for this id (two workers that ran one request at once both end up sending the first).

        A worker that came second writes the first answer again, after its own: compaction keeps the
        last record of a key, and it must keep the answer that was sent.
        """
        value, key = encode_body(body), answer_key(service, request_id)
        headers = [*self.publisher.headers(service), (DIGEST_HEADER, digest.encode())]
        sent = await self.publisher.send(self.topic, value, key, headers)
        await self._assign({sent.partition})
        self._own.setdefault(sent.partition, {})[sent.offset] = key
        await self._wait_read(sent.partition, sent.offset, key)
        made = sent.timestamp / 1000 if sent.timestamp and sent.timestamp > 0 else time.time()
        scope = store_scope(service)
        stored = await asyncio.to_thread(self.store.put, scope, request_id, body, digest, created_at=made)
        if encode_body(stored.body) != value or stored.digest != digest:
            log.info(
                "kafka: %s was answered first by another worker; sending that answer",
                request_id,
                extra={"request_id": request_id, "service": service},
            )
            first = [*self.publisher.headers(service), (DIGEST_HEADER, stored.digest.encode())]
            await self.publisher.send(self.topic, encode_body(stored.body), key, first)
        return stored

    async def catch_up(self) -> None:
        """Return once every answer acknowledged before this call is in the local store."""
        partitions = await self._partitions()
        await self._assign(partitions)
        marks = await asyncio.gather(
            *(self.publisher.send(self.topic, None, SYNC_KEY, [], partition=p) for p in sorted(partitions))
        )
        for mark in marks:  # own records, which a later answer of this worker need not wait for
            self._own.setdefault(mark.partition, {})[mark.offset] = SYNC_KEY
        for mark in marks:
            await self._wait_read(mark.partition, mark.offset)

    # -- reading --------------------------------------------------------------------------------

    async def _partitions(self) -> set[int]:
        await self._consumer.topics()  # fresh metadata: a topic created or grown since is seen
        partitions = self._consumer.partitions_for_topic(self.topic)
        if not partitions:
            raise OSError(
                f"kafka: the answers topic {self.topic} does not exist and could not be created "
                "(kafka.answers_topic)"
            )
        return set(partitions)

    async def _assign(self, partitions: set[int]) -> None:
        """Read every partition named (and those read already), each from where it was read to: in
        this process, or else in the host's store, or else from its beginning."""
        if partitions <= {tp.partition for tp in self._consumer.assignment()}:
            return
        async with self._assigning:
            await self._assign_more(partitions)

    async def _assign_more(self, partitions: set[int]) -> None:
        assigned = {tp.partition for tp in self._consumer.assignment()}
        if partitions <= assigned:  # another caller did it meanwhile
            return
        wanted = assigned | partitions
        tps = {p: TopicPartition(self.topic, p) for p in sorted(wanted)}
        new = [tps[p] for p in wanted if p not in self._seen]
        stored = await asyncio.to_thread(self.store.positions, self.topic)
        ends = await self._consumer.end_offsets(new) if new else {}
        self._consumer.assign(list(tps.values()))
        for p, tp in tps.items():
            if p in self._seen:
                self._consumer.seek(tp, self._seen[p])
            elif 0 < stored.get(p, 0) <= ends[tp]:
                self._seen[p] = stored[p]
                self._consumer.seek(tp, stored[p])
            else:  # a new store, or a position past the end (another topic of the same name, or a
                # broker that under-counts its end, as tansu does): read it all
                self._seen[p] = 0
                await self._consumer.seek_to_beginning(tp)

    async def _read_loop(self) -> None:
        while True:
            try:
                batches = await self._consumer.getmany(timeout_ms=1000)
                if batches:
                    await asyncio.to_thread(self._keep, batches)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away, the store busy: read the same records again
                log.warning("kafka: reading %s failed (%r); trying again", self.topic, exc)
                for p, offset in self._seen.items():
                    self._consumer.seek(TopicPartition(self.topic, p), offset)
                await asyncio.sleep(_WAKE_S)
                continue
            for tp, records in batches.items():
                if records:
                    self._seen[tp.partition] = max(self._seen.get(tp.partition, 0), records[-1].offset + 1)
                    own = self._own.get(tp.partition, {})
                    for offset in [o for o in own if o < self._seen[tp.partition]]:
                        del own[offset]
            self._moved.set()
            self._moved = asyncio.Event()

    def _keep(self, batches: dict[TopicPartition, list[ConsumerRecord]]) -> None:
        """Store a batch of answers and how far it reaches (on a worker thread: SQLite blocks)."""
        oldest = time.time() - self.keep_s
        answers: list[ReadAnswer] = []
        for records in batches.values():
            for record in records:
                answer = self._answer_of(record)
                if answer is not None and answer.created_at >= oldest:
                    answers.append(answer)
        reached = {tp.partition: records[-1].offset + 1 for tp, records in batches.items() if records}
        self.store.put_read(self.topic, answers, reached)
        self.answers_read += len(answers)

    @staticmethod
    def _answer_of(record: ConsumerRecord) -> ReadAnswer | None:
        """The answer a record holds; None for markers and for records that hold none."""
        named = read_answer_key(record.key)
        if named is None or record.value is None:
            return None
        headers = dict(record.headers or ())
        try:
            text = record.value.decode("utf-8")
            valid = isinstance(json.loads(text), dict) and DIGEST_HEADER in headers
        except (UnicodeDecodeError, json.JSONDecodeError):
            valid = False
        if not valid:
            log.warning(
                "kafka: %s[%d]@%d holds no answer; skipped", record.topic, record.partition, record.offset
            )
            return None
        service, request_id = named
        digest = bytes(headers[DIGEST_HEADER]).decode("utf-8", "replace")
        made = record.timestamp / 1000 if record.timestamp >= 0 else time.time()
        return ReadAnswer(store_scope(service), request_id, digest, text, made)

    def _read_through(self, partition: int, offset: int, key: bytes | None) -> bool:
        """Whether every answer before ``offset`` is stored, or, given this worker's ``key`` at
        ``offset``, whether the records not read yet before it are all this worker's own for other
        ids (then none of them can be another worker's first answer for this id)."""
        seen = self._seen.get(partition, 0)
        if seen > offset:
            return True
        if key is None or offset - seen > _MAX_OWN_GAP:
            return False
        own = self._own.get(partition, {})
        return all(o in own and own[o] != key for o in range(seen, offset))

    async def _wait_read(self, partition: int, offset: int, key: bytes | None = None) -> None:
        while not self._read_through(partition, offset, key):
            if self._aborting.is_set():
                raise Abandoned(f"stopping before {self.topic} was read through offset {offset}")
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._moved.wait(), _WAKE_S)
