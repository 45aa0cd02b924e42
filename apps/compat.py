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
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

from confluent_kafka import Consumer, KafkaError, TopicPartition

__all__ = ["verified_end_offsets", "install_faust_end_offset_fix", "install_faust_fetch_wait"]

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
