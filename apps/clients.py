"""Client side: publish transactions, read result topics. Used by the CLI, demo and bench."""

from __future__ import annotations

import json
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from confluent_kafka import KafkaError, Producer

from vigil.apps.broker import BrokerError
from vigil.apps.kafka import make_producer, make_reader, read_from_start

if TYPE_CHECKING:
    from vigil.streams.frames import Frame

__all__ = ["camera_frames", "publish", "read_messages", "read_topic", "Published", "Pacer"]


class Pacer:
    """Keeps a loop at ``rate`` iterations per second (0 = as fast as possible).

    It sleeps once the loop is ``granularity_s`` ahead, not after every iteration: at
    5,000/s a sleep per record cost the publisher 16 % of a core in wake-ups (0.48 s of CPU
    per 3 s against 0.07 s), on a machine whose two cores the pipeline under test shares.
    The producer batches for ``linger.ms`` (5 ms) anyway, so the broker sees the same."""

    def __init__(self, rate: float, granularity_s: float = 0.001) -> None:
        self.rate = rate
        self.granularity_s = granularity_s
        self._start = time.monotonic()
        self._n = 0

    def wait(self) -> None:
        self._n += 1
        if self.rate > 0:
            ahead_s = self._n / self.rate - (time.monotonic() - self._start)
            if ahead_s >= self.granularity_s:
                time.sleep(ahead_s)


@dataclass
class Published:
    count: int = 0  # handed to the producer
    failed: int = 0  # refused by the broker or still undelivered at the end

    @property
    def delivered(self) -> int:
        return self.count - self.failed


def publish(
    bootstrap: str,
    topic: str,
    records: Iterable[tuple[str | bytes | None, bytes] | tuple[str | bytes | None, bytes, Any]],
    rate: float = 0.0,
    on_sent: Callable[[int, bytes], None] | None = None,
    should_stop: Callable[[], bool] = lambda: False,
    flush_timeout_s: float = 30.0,
    producer: Producer | None = None,
) -> Published:
    """Publish ``(key, value)`` or ``(key, value, headers)`` records at ``rate``/s;
    ``on_sent(n, value)`` after each.
    ``producer``: reuse a connected one (its start-up, idempotent-producer handshake
    included, then costs nothing here)."""
    producer = producer or make_producer(bootstrap)
    result = Published()

    def delivered(err: KafkaError | None, _msg: Any) -> None:
        if err is not None:
            result.failed += 1

    pacer = Pacer(rate)
    for key, value, *headers in records:
        if should_stop():
            break
        k = key.encode() if isinstance(key, str) else key
        while True:
            try:
                producer.produce(
                    topic, value, k, headers=headers[0] if headers else None, on_delivery=delivered
                )
                break
            except BufferError:
                producer.poll(0.05)
        result.count += 1
        producer.poll(0)
        if on_sent:
            on_sent(result.count, value)
        pacer.wait()
    # Whatever is still queued after the timeout was not delivered: count it, never hide it.
    result.failed += producer.flush(flush_timeout_s)
    return result


def read_messages(
    bootstrap: str,
    topic: str,
    follow: bool = False,
    limit: int | None = None,
    from_end: bool = False,
    idle_timeout_s: float = 1.0,
    should_stop: Callable[[], bool] = lambda: False,
    since_ms: int | None = None,
) -> Iterator[Any]:
    """Yield every partition's messages (confluent-kafka ``Message``: key, value, headers,
    partition, offset, timestamp), from the start, the end, or the first timestamped
    ``since_ms`` or later. Without ``follow`` it stops once every partition has reached
    its end."""
    reader = make_reader(bootstrap)
    try:
        n_parts = read_from_start(reader, topic, from_end=from_end, since_ms=since_ms)
        at_end: set[int] = set()
        seen = 0
        while not should_stop():
            msgs = reader.consume(500, idle_timeout_s)
            for msg in msgs:
                if msg.error() is not None:
                    if msg.error().code() == KafkaError._PARTITION_EOF:
                        at_end.add(msg.partition())
                        continue
                    raise BrokerError(f"reading {topic}: {msg.error()}")
                at_end.discard(msg.partition())
                if since_ms is not None and msg.timestamp()[1] < since_ms:
                    continue  # a broker without timestamp lookup (Tansu) starts earlier
                yield msg
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if not follow and len(at_end) >= n_parts and not msgs:
                return
    finally:
        reader.close()


def read_topic(
    bootstrap: str, topic: str, **options: Any
) -> Iterator[tuple[bytes | None, dict[str, Any] | bytes, int]]:
    """Yield ``(key, decoded JSON or raw bytes, broker timestamp ms)`` from every partition;
    ``options`` as for ``read_messages`` (``follow``, ``limit``, ``from_end``, ...)."""
    for msg in read_messages(bootstrap, topic, **options):
        raw = msg.value() or b""
        try:
            value: dict[str, Any] | bytes = json.loads(raw)
        except ValueError:
            value = raw
        yield msg.key(), value, msg.timestamp()[1]


def camera_frames(messages: Iterable[Any], camera: str, counts: Counter[str]) -> Iterator[Frame]:
    """The decoded frames of ``camera`` among frame-topic ``messages`` (keyed by camera
    id); each of its records that does not decode counted as ``counts["undecodable"]``."""
    from vigil.streams.frames import FrameError, decode_frame  # OpenCV: only when needed

    key = camera.encode()
    for msg in messages:
        if msg.key() != key:
            continue
        try:
            yield decode_frame(msg.key(), msg.value(), msg.headers())
        except FrameError:
            counts["undecodable"] += 1
