"""What every faust worker shares: the app with its broker settings and Vigil's transport,
and the output path (confluent-kafka, acknowledged before source offsets are committed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from typing import Any

import faust
from confluent_kafka import KafkaError, Message
from faust.tables import TableManager

from vigil.apps.broker import RECORD_OVERHEAD_BYTES
from vigil.apps.kafka import KafkaSecurity, make_producer
from vigil.apps.logs import logging_config
from vigil.apps.metrics import BatchHistogram, Metrics, Ready, serve
from vigil.apps.settings import Settings
from vigil.apps.store import SCHEME as STORE_SCHEME
from vigil.apps.transport import VigilApp
from vigil.streams.pipeline import fewer_collections
from vigil.streams.schemas import MAX_RECORD_BYTES, RawRecord

__all__ = [
    "Watch",
    "EXIT_OUTPUT_LOST",
    "EXIT_SOFTWARE",
    "Outputs",
    "PromptTableManager",
    "exit_on_error",
    "raw_records",
    "faust_app",
    "run_app",
]

log = logging.getLogger("vigil.worker")
FLUSH_POLL_S = 0.001
EXIT_OUTPUT_LOST = 75  # the broker refused our outputs: exit without committing offsets
EXIT_SOFTWARE = 70  # a batch could not be handled (sysexits EX_SOFTWARE): exit unacknowledged


def raw_records(events: list[faust.EventT]) -> list[RawRecord]:
    """A micro-batch of faust events as the pipelines take them (headers kept: a dead
    letter carries them)."""
    return [
        RawRecord(
            ev.message.topic,
            ev.message.partition,
            ev.message.offset,
            ev.key,
            ev.value,
            tuple(ev.message.headers or ()) or None,
        )
        for ev in events
    ]


@contextlib.asynccontextmanager
async def exit_on_error(events: int) -> AsyncIterator[None]:
    """Around a batch's handling: anything that escapes it ends the worker (exit 70)
    before the batch is acknowledged, so it is redelivered to the restarted worker. faust
    would restart the agent in this process instead and drop the batch in hand."""
    try:
        yield
    except Exception:
        log.critical(
            "a batch of %d events could not be handled; exiting without acknowledging it, "
            "so it is redelivered",
            events,
            exc_info=True,
        )
        os._exit(EXIT_SOFTWARE)


class PromptTableManager(TableManager):
    """faust's table manager without the fixed 1 s pause before it starts recovery (its
    ``on_start`` sleeps a second, presumably for tables defined late): a worker's tables
    exist before its app starts, and a restarted worker is a second sooner ready. Given to
    the app through faust's ``TableManager`` setting; the upstream method it replaces is
    checked by tests/apps/test_transport.py."""

    async def on_start(self) -> None:
        if not self.should_stop:
            await self._update_channels()
            await self.recovery.start()


def faust_app(
    settings: Settings,
    bootstrap: str,
    kind: str,
    partitions: int,
    batch_size: int,
    wait_empty: bool = True,
) -> VigilApp:
    """The faust app of a ``kind`` worker (group ``NAMESPACE-KIND``): tables in memory, and
    on local disk too where ``settings.state_on_disk`` (apps/store.py).
    ``wait_empty=False``: do not wait for every consumed event to be acknowledged before a
    rebalance or shutdown (for workers that hold events across batches on purpose)."""
    datadir = settings.state_dir / "workers"
    datadir.mkdir(parents=True, exist_ok=True)
    # Vigil's transport (apps/transport.py): faust's aiokafka one, extended
    return VigilApp(
        f"{settings.namespace}-{kind}",
        bootstrap=bootstrap,
        fetch_max_wait_ms=settings.fetch_max_wait_ms,
        store=f"{STORE_SCHEME}://" if settings.state_on_disk else "memory://",
        web_enabled=False,
        datadir=str(datadir),
        topic_partitions=partitions,
        topic_replication_factor=settings.replication_factor,
        broker_credentials=KafkaSecurity.from_settings(settings).faust_credentials(),
        consumer_auto_offset_reset="earliest",
        broker_rebalance_timeout=settings.rebalance_timeout_s,
        broker_session_timeout=settings.session_timeout_s,
        broker_heartbeat_interval=settings.heartbeat_interval_s,
        table_standby_replicas=0,
        # one fetch can fill a micro-batch (faust's default is 1000 records, 4096 buffered)
        broker_max_poll_records=batch_size,
        stream_buffer_maxsize=2 * batch_size,
        stream_wait_empty=wait_empty,
        TableManager=PromptTableManager,
        # static membership (KIP-345): a restarted worker takes its partitions back at
        # once instead of waiting for its dead predecessor's session to time out
        consumer_group_instance_id=settings.group_instance_id,
    )


def run_app(app: faust.App, settings: Settings) -> None:
    """Run a worker's app until SIGINT/SIGTERM; it stops cleanly (leaves the group)."""
    # Everything loaded so far (torch, LightGBM, ONNX Runtime, faust, the model) lives as
    # long as the worker: out of the collector's sight; and full collections 10x rarer
    # (see GC_THRESHOLDS)
    with fewer_collections():
        worker = faust.Worker(
            app,
            loglevel=settings.log_level.lower(),
            quiet=True,
            logging_config=logging_config(settings.log_format, settings.log_level),
        )
        worker.execute_from_commandline()


class Outputs:
    """Produces a batch's outputs and waits until the broker has acknowledged all of them.

    Delivery reports come for failed records only, unless ``offsets``: then every record
    reports where it landed (``self.offsets``, the newest per partition), which the flush
    serves in the event loop's thread (400 records flushed in 14.3 ms with a report each,
    14.3 ms without)."""

    def __init__(
        self, bootstrap: str, max_record_bytes: int = MAX_RECORD_BYTES, offsets: bool = False
    ) -> None:
        # no linger: a batch's records are produced at once, then flushed
        conf = {
            "delivery.report.only.error": not offsets,
            "linger.ms": 0,
            # the pipelines fit every record to this; librdkafka refuses larger ones
            "message.max.bytes": max_record_bytes + RECORD_OVERHEAD_BYTES,
        }
        self.producer = make_producer(bootstrap, **conf)
        self.errors: list[KafkaError] = []
        self.offsets: dict[tuple[str, int], int] = {}  # (topic, partition) -> newest offset
        self._report = self._on_delivery_offset if offsets else self._on_delivery

    def _on_delivery(self, err: KafkaError | None, _msg: Message) -> None:
        if err is not None:
            self.errors.append(err)

    def _on_delivery_offset(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self.errors.append(err)
            return
        where, offset = (msg.topic() or "", msg.partition() or 0), msg.offset() or 0
        self.offsets[where] = max(self.offsets.get(where, -1), offset)

    def produce(self, topic: str, items: list[tuple[bytes | None, bytes]]) -> None:
        """Keyed records, placed by the partitioner."""
        for key, value in items:
            self._send(topic, value, key)

    def produce_to(self, topic: str, items: list[tuple[int, bytes]]) -> None:
        """Unkeyed records to explicit partitions."""
        for partition, value in items:
            self._send(topic, value, None, partition)

    def produce_rows(self, topic: str, rows: Mapping[int, Mapping[bytes, bytes | None]]) -> None:
        """Keyed records to explicit partitions (``{partition: {key: value}}``; a None value
        is a tombstone, which a compacted topic such as a table's changelog forgets the key
        by)."""
        for partition, part in rows.items():
            for key, value in part.items():
                self._send(topic, value, key, partition)

    def _send(
        self, topic: str, value: bytes | None, key: bytes | None, partition: int = -1
    ) -> None:
        while True:
            try:
                self.producer.produce(
                    topic, value, key, partition=partition, on_delivery=self._report
                )
                return
            except BufferError:  # local queue full: let librdkafka drain it
                self.producer.poll(0.05)

    async def flush(self) -> None:
        loop = asyncio.get_running_loop()
        warn_at = loop.time() + 5.0
        # polled from the event loop, not flushed in a thread: that thread's hand-offs
        # queue for the GIL behind the loop's (faust's fetching goes on meanwhile)
        while self.producer.flush(0):  # serves delivery reports
            await asyncio.sleep(FLUSH_POLL_S)
            if loop.time() >= warn_at:
                log.warning("outputs still in flight after 5 s; waiting for the broker")
                warn_at += 5.0
        if self.errors:
            log.critical(
                "broker refused %d output records (first: %s); exiting without "
                "committing so they are redelivered",
                len(self.errors),
                self.errors[0],
            )
            os._exit(EXIT_OUTPUT_LOST)


REFRESH_S = 1.0  # how often the event loop hands the metrics a copy of the counters
# seconds: a micro-batch's handling; publish (the record's timestamp) to outputs on the broker
BATCH_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


class BatchWatch:
    """What a worker's event loop records once per micro-batch (:meth:`batch`): its
    handling time, each record's publish-to-output latency, and the next offset to handle
    per partition (for the consumer lag). Needs no app: ``vigil bench features`` measures
    its cost per event."""

    def __init__(self, kind: str, latency_topics: Sequence[str] = ()) -> None:
        self.latency_topics = set(latency_topics)
        self.metrics = Metrics(
            kind,
            [
                BatchHistogram(
                    "batch_seconds",
                    "time to handle a micro-batch, outputs included",
                    BATCH_BUCKETS,
                ),
                BatchHistogram(
                    "latency_seconds",
                    "record published (its timestamp) to its outputs on the broker",
                    LATENCY_BUCKETS,
                ),
            ],
        )
        self.next: dict[tuple[str, int], int] = {}  # (topic, partition) -> next to handle

    def batch(self, events: Sequence[faust.EventT], seconds: float) -> None:
        """A micro-batch handled (its outputs on the broker) in ``seconds``."""
        self.metrics.histograms["batch_seconds"].observe([seconds])
        now_s = time.time()
        topics, nxt, waited = self.latency_topics, self.next, []
        for ev in events:  # one pass: the latency of each, and where each partition is
            m = ev.message
            if m.topic in topics and m.timestamp:
                waited.append(now_s - m.timestamp)
            where = (m.topic, m.partition)
            if m.offset >= nxt.get(where, 0):
                nxt[where] = m.offset + 1
        self.metrics.histograms["latency_seconds"].observe(waited)


class Watch:
    """A worker's metrics and health endpoints (apps/metrics.py): started with the app,
    before it joins its group (so ``/healthz`` answers during a long recovery), fed by the
    event loop once a second (the counters, consumer lag per partition, the versions in
    service) and by ``batch`` once per micro-batch (its :class:`BatchWatch`: handling
    time, publish-to-output latency)."""

    def __init__(
        self,
        app: VigilApp,
        kind: str,
        settings: Settings,
        port: int,
        counters: Mapping[str, float] | Callable[[], Mapping[str, float]],
        ready: Ready,
        info: Callable[[], Mapping[str, Mapping[str, str]]] = dict,
        lag_topics: Sequence[str] = (),
        latency_topics: Sequence[str] = (),
    ) -> None:
        self.app, self.counters, self.info = app, counters, info
        self.lag_topics = set(lag_topics)
        self.batches = BatchWatch(kind, latency_topics)
        self.metrics = self.batches.metrics
        self.batch = self.batches.batch
        self._start: dict[Any, int | None] = {}  # TP -> the consumer's position at first sight
        self._server = None

        @app.at_start
        def start() -> None:
            self._server = serve(self.metrics, ready, settings.metrics_host, port)
            self._refreshing = asyncio.get_running_loop().create_task(self._refresh_loop())

        @app.on_before_shutdown.connect
        async def stop(*_args: object, **_kwargs: object) -> None:
            if self._server is not None:
                self._server.stop()

    async def lag(self) -> dict[tuple[tuple[str, str], ...], float]:
        """Records on the broker not yet handled, per assigned partition of ``lag_topics``:
        the end offset the last fetch reported, less the next offset to handle (before
        this process handled any of a partition: the consumer's position in it when first
        seen)."""
        out = {}
        consumer = self.app.consumer
        assigned = consumer.assignment()
        mine = {(tp.topic, tp.partition) for tp in assigned}
        handled = self.batches.next
        for where in [w for w in handled if w not in mine]:  # revoked: forgotten, so a
            del handled[where]  # partition assigned again starts from its position
        for tp in [tp for tp in self._start if tp not in assigned]:
            del self._start[tp]
        for tp in assigned:
            if tp.topic not in self.lag_topics:
                continue
            end = consumer.highwater(tp)
            at = handled.get((tp.topic, tp.partition))
            if at is None:  # asked once it is known: a call to the consumer's thread
                if self._start.get(tp) is None:
                    self._start[tp] = await consumer.position(tp)
                at = self._start[tp]
            if end is None or at is None:
                continue  # not fetched yet
            behind = max(0, int(end) - int(at))
            out[(("partition", str(tp.partition)), ("topic", tp.topic))] = float(behind)
        return out

    async def _refresh_loop(self) -> None:
        while True:
            try:
                lag = await self.lag()
            except Exception:  # no consumer or assignment yet (starting, rebalancing)
                lag = {}
            counters = self.counters
            try:
                self.metrics.refresh(
                    counters() if callable(counters) else counters,
                    gauges={"consumer_lag": ("records not yet handled, per partition", lag)},
                    info=self.info(),
                )
            except Exception:  # the metrics stay as they were; the loop still turns
                log.exception("metrics not refreshed")
                self.metrics.beat()
            await asyncio.sleep(REFRESH_S)
