"""confluent-kafka clients configured from settings (publishers, readers, the output path)."""

from __future__ import annotations

import uuid
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition

from vigil.errors import NotFoundError

__all__ = ["make_producer", "make_reader", "read_from_start"]


def make_producer(bootstrap: str, **extra: Any) -> Producer:
    # acks=all + idempotence keeps per-partition order across retries (one camera's frames,
    # one account's transactions); lz4 keeps batches small. murmur2 is Kafka's default
    # partitioner (Java client, faust/aiokafka): keyed records land where any other client's
    # would, which the co-partitioned inflow topic relies on.
    conf = {
        "bootstrap.servers": bootstrap,
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    }
    conf.update(extra)
    return Producer(conf)


def make_reader(bootstrap: str, **extra: Any) -> Consumer:
    """A consumer for reading topics by explicit assignment (no group join, no commits)."""
    conf = {
        "bootstrap.servers": bootstrap,
        "group.id": f"vigil-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 50,  # Tansu holds a fetch this long even when data arrives
    }
    conf.update(extra)
    return Consumer(conf)


def read_from_start(reader: Consumer, topic: str, from_end: bool = False) -> int:
    """Assign every partition of ``topic`` at its beginning (or end); returns the count."""
    meta = reader.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise NotFoundError(f"topic {topic!r} does not exist on this broker")
    # -2 = OFFSET_BEGINNING, -1 = OFFSET_END
    offset = -1 if from_end else -2
    reader.assign([TopicPartition(topic, p, offset) for p in meta.partitions])
    return len(meta.partitions)
