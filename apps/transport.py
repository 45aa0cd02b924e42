"""Vigil's faust transport: faust's aiokafka transport, extended where it loses records or
waits too long. Each override says what and why.

faust finds it the way it finds its own transports, by the broker URL's scheme: ``vigil://``
is registered under the ``faust.transports`` entry point (pyproject.toml). Nothing here
changes faust's own classes; a worker gets this behaviour by asking for this transport
(``apps.worker.faust_app``). tests/apps/test_transport.py fails when an upstream method we
override changes its name or signature, and faust-streaming is pinned to the tested minor.

Tansu 0.6.0 answers ListOffsets(latest) with the *base offset of the last record batch
plus one*, not the true end: after one batch holding offsets 1..3 it reports 2, not 4
(measured; tests/apps/test_transport.py). Fetch responses carry the correct high watermark.
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

``Consumer`` keeps stream partitions paused until their seek has completed,
and seeks a partition back to the first record of any batch that faust would skip.

Right after recovery faust's fetcher could sit out a second before it fetched the stream
partitions: a fetch waits up to 1 s for records of the partitions active when it began
(at the end of recovery, the changelogs, which get no more), and with no partition active
it sleeps 1 s. Stream partitions resumed meanwhile waited for it: a restarted worker's first
batch came 1.0 s after "Worker ready" in 4 restarts of 6, 0.07-0.14 s with ``Consumer``,
which caps that wait at 0.1 s and looks again 20 ms after finding nothing active.

faust hands every fetched record to its streams through ``wait_first(on_message(record),
suspend_flow.wait())``: four tasks and an ``asyncio.wait`` per record, so that a delivery
blocked on a full stream queue is interrupted when a rebalance suspends the flow. Almost
every delivery completes without blocking, and that machinery was the largest single cost
of the risk worker's event loop. ``Consumer.wait_first`` runs the delivery's first
step in place; only a delivery that blocks (or one made while the flow is suspended or the
consumer stopping) goes through ``wait_first``, carried on from where it blocked.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from typing import Any, TypeVar

import faust
from confluent_kafka import KafkaError, TopicPartition
from faust.transport.drivers import aiokafka as faust_aiokafka
from faust.types.tuples import TP
from mode import ServiceT
from mode.services import WaitResults

from vigil.apps.kafka import make_consumer

__all__ = ["SCHEME", "Consumer", "ConsumerThread", "Transport", "VigilApp", "verified_end_offsets"]

SCHEME = "vigil"  # broker="vigil://host:port"
FAUST_FETCH_MAX_WAIT_MS = 1500
NO_PARTITIONS_POLL_S = 0.02  # faust's fetcher waits 1 s
FETCH_WAIT_CAP_S = 0.1  # faust's fetcher waits up to 1 s for records of the active set
TPT = TypeVar("TPT")


class VigilApp(faust.App):
    """A faust app that carries what Vigil's consumer needs and faust has no setting for:
    the bootstrap servers as the Kafka clients take them, and the fetch wait; and that
    runs ``at_start`` callbacks as it starts, before it joins its group (faust starts its
    ``app.task`` tasks only once table recovery has completed)."""

    def __init__(
        self,
        *args: Any,
        bootstrap: str,
        fetch_max_wait_ms: int = FAUST_FETCH_MAX_WAIT_MS,
        **kwargs: Any,
    ) -> None:
        self.bootstrap = bootstrap
        self.fetch_max_wait_ms = fetch_max_wait_ms
        self._at_start: list[Callable[[], None]] = []
        super().__init__(*args, broker=f"{SCHEME}://{bootstrap}", **kwargs)

    def at_start(self, fn: Callable[[], None]) -> Callable[[], None]:
        """Registers ``fn`` to run (in the event loop) when the app first starts."""
        self._at_start.append(fn)
        return fn

    async def on_first_start(self) -> None:
        await super().on_first_start()
        for fn in self._at_start:
            fn()

    def on_init_dependencies(self) -> Iterable[ServiceT]:
        """faust's dependencies less its Monitor sensor: it times every event in and out
        (a few calls and a deque append each, 3 % of a risk worker's time at 5,000 tx/s)
        for faust's web views, which Vigil's workers do not serve; the workers count per
        micro-batch themselves."""
        dependencies = super().on_init_dependencies()
        self.sensors.remove(self.monitor)
        return dependencies


def verified_end_offsets(
    bootstrap: str, reported: Mapping[TPT, int], timeout_s: float = 15.0
) -> dict[TPT, int]:
    """True end offsets (next offset to be written) of ``(topic, partition)`` keys."""
    result = dict(reported)
    if not reported:
        return result
    consumer = make_consumer(
        bootstrap,
        **{
            "group.id": f"vigil-end-offsets-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "enable.partition.eof": True,
            "fetch.wait.max.ms": 50,
        },
    )
    try:
        keys = {(tp[0], tp[1]): tp for tp in reported}  # (topic, partition) -> caller's key
        consumer.assign([TopicPartition(t, p, max(0, reported[k])) for (t, p), k in keys.items()])
        pending = set(keys)
        deadline = time.monotonic() + timeout_s
        while pending and time.monotonic() < deadline:
            # short polls: consume() waits its full timeout unless 1,000 records came
            for msg in consumer.consume(1000, 0.05):
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


class ConsumerThread(faust_aiokafka.AIOKafkaConsumerThread):
    """The aiokafka consumer thread, with true end offsets and the fetch wait a setting."""

    def _create_worker_consumer(self, *args: Any, **kwargs: Any) -> Any:
        consumer = super()._create_worker_consumer(*args, **kwargs)
        # read when its fetcher starts
        consumer._fetch_max_wait_ms = getattr(
            self.app, "fetch_max_wait_ms", FAUST_FETCH_MAX_WAIT_MS
        )
        return consumer

    async def _highwaters(self, partitions: Any) -> Mapping[Any, int]:
        """Changelogs are recovered to their true end (module notes: Tansu's ListOffsets)."""
        reported = await super()._highwaters(partitions)
        if self.consumer.in_transaction:
            return reported
        bootstrap = getattr(self.app, "bootstrap", None) or ",".join(
            f"{u.host}:{u.port or 9092}" for u in self.transport.url
        )
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(None, verified_end_offsets, bootstrap, reported)


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


class Consumer(faust_aiokafka.Consumer):
    """faust's aiokafka consumer, delivering every record across recovery and pauses
    (module notes, faust 1 and 2) and without four tasks per record."""

    _vigil_resume_after_seek: set[TP] | None = None

    def _new_consumer_thread(self) -> ConsumerThread:
        return ConsumerThread(self, loop=self.loop, beacon=self.beacon)

    def resume_partitions(self, tps: Any) -> None:
        # faust resumes stream partitions (not changelogs) only right before perform_seek
        tps = {tp if isinstance(tp, TP) else TP(tp.topic, tp.partition) for tp in tps}
        streams = {tp for tp in tps if not self._is_changelog_tp(tp)}
        if streams:
            self._vigil_resume_after_seek = streams
        super().resume_partitions(tps - streams)

    async def perform_seek(self) -> None:
        try:
            await super().perform_seek()
        finally:
            deferred = self._vigil_resume_after_seek
            if deferred:
                self._vigil_resume_after_seek = set()
                super().resume_partitions(deferred & set(self.assignment()))

    async def _wait_next_records(self, timeout: float) -> Any:
        if self.flow_active and not self.app.client_only and not self._get_active_partitions():
            # faust sleeps 1 s when no partition is active: a worker whose partitions were
            # about to be resumed (right after recovery) idled up to that long
            await self.sleep(NO_PARTITIONS_POLL_S)
            return {}, set()
        # a fetch waits for records of the partitions active when it began, up to 1 s
        # (faust's drain loop): right after recovery, those were the changelogs, and the
        # stream partitions resumed meanwhile waited for it to time out
        records, active = await super()._wait_next_records(min(timeout, FETCH_WAIT_CAP_S))
        if records and active is not None:
            buffered = self._buffered_partitions
            for tp in [tp for tp in records if tp not in active and tp not in buffered]:
                batch = records.pop(tp)
                if batch and tp in self.assignment():
                    await self._seek(tp, batch[0].offset)  # fetch them again once resumed
        return records, active

    async def wait_first(self, *coros: Any, timeout: Any = None) -> Any:
        # only _drain_messages passes two awaitables: (delivery, suspend_flow.wait())
        if (
            len(coros) != 2
            or not asyncio.iscoroutine(coros[0])
            or not asyncio.iscoroutine(coros[1])
            or self.suspend_flow.is_set()
            or self._stopped.is_set()
            or self._crashed.is_set()
        ):
            return await super().wait_first(*coros, timeout=timeout)
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
        return await super().wait_first(_Resumed(delivery, pending), suspended, timeout=timeout)


class Transport(faust_aiokafka.Transport):
    """faust's aiokafka transport with Vigil's consumer (``vigil://host:port``)."""

    Consumer = Consumer
