"""Adapters for broker quirks that would otherwise corrupt state. Each says what and why.

Tansu 0.6.0 answers ListOffsets(latest) with the *base offset of the last record batch
plus one*, not the true end: after one batch holding offsets 1..3 it reports 2, not 4
(measured; tests/apps/test_compat.py). Fetch responses carry the correct high watermark.
faust recovers a table by reading its changelog up to ListOffsets' end, so it silently
skipped the tail of a changelog whose last produce batch held several records — a
restarted worker lost the newest state of some accounts. ``verified_end_offsets`` reads
forward from the reported end until the fetch-based end of partition; on a broker that
reports correctly this reads nothing and costs one short fetch per partition, only
during recovery.

Tansu also holds a fetch for its full max-wait when no data is there at the time of the
request, even if data arrives meanwhile (measured: 200 ms per message at 500 ms max-wait,
2 ms at 10 ms). faust hard-codes a 1500 ms max-wait, which put ~1 s of latency on every
transaction; ``install_faust_fetch_wait`` makes it a setting.

faust itself loses records when a worker starts or rebalances (any broker), two ways:

1. When table recovery ends it resumes the stream partitions *first* and only then seeks them
   to their committed offsets (an await on the consumer thread). Records fetched in between
   go into the stream queues, and the ``flow_control.resume()`` after the seek clears those
   queues; the read offset has meanwhile moved past them, so the re-fetch is dropped as
   already read, and faust's gap filling counts the cleared offsets as acknowledged and
   commits past them. Seen as a restarted worker that never scored a few hundred records
   per partition, about 1 restart in 7.
2. aiokafka reads an *empty* partition set as "all partitions", and faust hands it the live
   set of active partitions, which a pause can empty while a fetch is in flight. Records
   come back for paused partitions; faust skips them without moving the fetch position
   back, so they are never delivered.

``install_faust_safe_resume`` keeps stream partitions paused until their seek has completed,
and seeks a partition back to the first record of any batch that faust would skip.

faust hands every fetched record to its streams through ``wait_first(on_message(record),
suspend_flow.wait())``: four tasks and an ``asyncio.wait`` per record, so that a delivery
blocked on a full stream queue is interrupted when a rebalance suspends the flow. Almost
every delivery completes without blocking, and that machinery was the largest single cost
of the risk worker's event loop. ``install_faust_fast_delivery`` runs the delivery's first
step in place; only a delivery that blocks (or one made while the flow is suspended or the
consumer stopping) goes through ``wait_first``, carried on from where it blocked.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, TopicPartition

__all__ = [
    "verified_end_offsets",
    "install_faust_end_offset_fix",
    "install_faust_fetch_wait",
    "install_faust_safe_resume",
    "install_faust_fast_delivery",
]

TPT = TypeVar("TPT")


def verified_end_offsets(
    bootstrap: str, reported: Mapping[TPT, int], timeout_s: float = 15.0
) -> dict[TPT, int]:
    """True end offsets (next offset to be written) of ``(topic, partition)`` keys."""
    result = dict(reported)
    if not reported:
        return result
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"vigil-end-offsets-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
        }
    )
    try:
        keys = {(tp[0], tp[1]): tp for tp in reported}  # (topic, partition) -> caller's key
        consumer.assign([TopicPartition(t, p, max(0, reported[k])) for (t, p), k in keys.items()])
        pending = set(keys)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            for msg in consumer.consume(1000, 0.5):
                where = (msg.topic(), msg.partition())
                err = msg.error()
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        pending.discard(where)
                    continue
                key = keys[where]
                result[key] = max(result[key], msg.offset() + 1)
        if pending:
            raise TimeoutError(f"could not verify end offsets of {sorted(pending)}")
    finally:
        consumer.close()
    return result


def install_faust_end_offset_fix(bootstrap: str) -> None:
    """Make faust's table recovery read changelogs to their true end (see module notes)."""
    import asyncio

    from faust.transport.drivers import aiokafka as faust_aiokafka

    cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(cls, "_vigil_original_highwaters", cls._highwaters)

    async def _highwaters(self: Any, partitions: Any) -> Mapping[Any, int]:
        reported = await original(self, partitions)
        if self.consumer.in_transaction:
            return reported
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, verified_end_offsets, bootstrap, reported)

    cls._vigil_original_highwaters = original
    cls._highwaters = _highwaters


def install_faust_fetch_wait(fetch_max_wait_ms: int) -> None:
    """Use ``fetch_max_wait_ms`` for faust's stream consumer instead of its fixed 1500 ms."""
    from faust.transport.drivers import aiokafka as faust_aiokafka

    cls: Any = faust_aiokafka.AIOKafkaConsumerThread
    original = getattr(cls, "_vigil_original_create_worker_consumer", cls._create_worker_consumer)

    def _create_worker_consumer(self: Any, *args: Any, **kwargs: Any) -> Any:
        consumer = original(self, *args, **kwargs)
        consumer._fetch_max_wait_ms = fetch_max_wait_ms  # read when its fetcher starts
        return consumer

    cls._vigil_original_create_worker_consumer = original
    cls._create_worker_consumer = _create_worker_consumer


def install_faust_safe_resume() -> None:
    """Deliver every record across recovery and pauses (module notes, faust 1 and 2)."""
    from faust.transport.consumer import Consumer
    from faust.types.tuples import TP

    cls: Any = Consumer
    resume = getattr(cls, "_vigil_original_resume_partitions", cls.resume_partitions)
    perform_seek = getattr(cls, "_vigil_original_perform_seek", cls.perform_seek)
    wait_next_records = getattr(cls, "_vigil_original_wait_next_records", cls._wait_next_records)

    def resume_partitions(self: Any, tps: Any) -> None:
        # faust resumes stream partitions (not changelogs) only right before perform_seek
        tps = {tp if isinstance(tp, TP) else TP(tp.topic, tp.partition) for tp in tps}
        streams = {tp for tp in tps if not self._is_changelog_tp(tp)}
        if streams:
            self._vigil_resume_after_seek = streams
        resume(self, tps - streams)

    async def perform_seek_then_resume(self: Any) -> None:
        try:
            await perform_seek(self)
        finally:
            deferred = getattr(self, "_vigil_resume_after_seek", None)
            if deferred:
                self._vigil_resume_after_seek = set()
                resume(self, deferred & set(self.assignment()))

    async def _wait_next_records(self: Any, timeout: float) -> Any:
        records, active = await wait_next_records(self, timeout)
        if records and active is not None:
            buffered = self._buffered_partitions
            for tp in [tp for tp in records if tp not in active and tp not in buffered]:
                batch = records.pop(tp)
                if batch and tp in self.assignment():
                    await self._seek(tp, batch[0].offset)  # fetch them again once resumed
        return records, active

    cls._vigil_original_resume_partitions = resume
    cls._vigil_original_perform_seek = perform_seek
    cls._vigil_original_wait_next_records = wait_next_records
    cls.resume_partitions = resume_partitions
    cls.perform_seek = perform_seek_then_resume
    cls._wait_next_records = _wait_next_records


class _Resumed:
    """Awaitable that carries on a coroutine whose first step has run and yielded
    ``pending`` (a future it waits on, or None for a bare yield), as ``await`` would have."""

    __slots__ = ("coro", "pending")

    def __init__(self, coro: Any, pending: Any) -> None:
        self.coro = coro
        self.pending = pending

    def __await__(self) -> Any:
        coro, step = self.coro, self.pending
        while True:
            try:
                sent = yield step
            except GeneratorExit:
                coro.close()
                raise
            except BaseException as exc:  # cancellation included: the coroutine decides
                advance = coro.throw
                arg: Any = exc
            else:
                advance = coro.send
                arg = sent
            try:
                step = advance(arg)
            except StopIteration as stop:
                return stop.value


def install_faust_fast_delivery() -> None:
    """Deliver fetched records without four tasks each (module notes)."""
    import asyncio

    from faust.transport.consumer import Consumer
    from mode.services import WaitResults

    cls: Any = Consumer
    wait_first = getattr(cls, "_vigil_original_wait_first", cls.wait_first)

    async def fast_wait_first(self: Any, *coros: Any, timeout: Any = None) -> Any:
        # only _drain_messages passes two awaitables: (delivery, suspend_flow.wait())
        if (
            len(coros) != 2
            or not asyncio.iscoroutine(coros[0])
            or not asyncio.iscoroutine(coros[1])
            or self.suspend_flow.is_set()
            or self._stopped.is_set()
            or self._crashed.is_set()
        ):
            return await wait_first(self, *coros, timeout=timeout)
        delivery, suspended = coros
        try:
            pending = delivery.send(None)
        except StopIteration as done:  # delivered without blocking: the common case
            suspended.close()
            return WaitResults([delivery], [done.value], False)
        except BaseException:
            suspended.close()
            raise
        # blocked (full stream queue, flow control): the original race against a suspend
        return await wait_first(self, _Resumed(delivery, pending), suspended, timeout=timeout)

    cls._vigil_original_wait_first = wait_first
    cls.wait_first = fast_wait_first
