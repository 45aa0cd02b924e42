"""What every faust worker shares: the app with its broker settings and Vigil's transport,
and the output path (confluent-kafka, acknowledged before source offsets are committed)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator, Mapping

import faust
from confluent_kafka import KafkaError, Message
from faust.tables import TableManager

from vigil.apps.broker import RECORD_OVERHEAD_BYTES
from vigil.apps.kafka import make_producer
from vigil.apps.settings import Settings
from vigil.apps.store import SCHEME as STORE_SCHEME
from vigil.apps.transport import VigilApp
from vigil.streams.pipeline import fewer_collections
from vigil.streams.schemas import MAX_RECORD_BYTES, RawRecord

__all__ = [
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
        topic_replication_factor=1,
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
        worker = faust.Worker(app, loglevel=settings.log_level.lower(), quiet=True)
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
