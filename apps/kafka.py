"""Kafka clients configured from settings (publishers, readers, admin, the output path),
and the security every client of a process shares.

Every Kafka client Vigil makes is made here (``make_producer``, ``make_reader``,
``make_consumer``, ``make_admin``) or, for the faust apps, given
:meth:`KafkaSecurity.faust_credentials`: so ``VIGIL_KAFKA_SECURITY_PROTOCOL``, the SASL
credentials and the TLS files reach all of them (tests/test_architecture.py checks that
no other module constructs a client).
"""

from __future__ import annotations

import ssl
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from confluent_kafka import Consumer, Producer, TopicPartition
from confluent_kafka.admin import AdminClient

from vigil.apps.settings import Settings, load_settings
from vigil.errors import NotFoundError

__all__ = [
    "KafkaSecurity",
    "client_conf",
    "make_admin",
    "make_consumer",
    "make_producer",
    "make_reader",
    "read_from_start",
    "security",
]


@dataclass(frozen=True)
class KafkaSecurity:
    """How a process's Kafka clients authenticate and encrypt: ``protocol`` PLAINTEXT,
    SSL, SASL_PLAINTEXT or SASL_SSL; SASL ``mechanism`` and credentials; TLS files."""

    protocol: str = "PLAINTEXT"
    mechanism: str = "PLAIN"
    username: str | None = None
    password: str | None = field(default=None, repr=False)  # never in a log line
    ca_file: Path | None = None
    cert_file: Path | None = None
    key_file: Path | None = None
    key_password: str | None = field(default=None, repr=False)

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaSecurity:
        def secret(value: Any) -> str | None:
            return None if value is None else value.get_secret_value()

        return cls(
            protocol=settings.kafka_security_protocol,
            mechanism=settings.kafka_sasl_mechanism,
            username=settings.kafka_sasl_username,
            password=secret(settings.kafka_sasl_password),
            ca_file=settings.kafka_ssl_ca_file,
            cert_file=settings.kafka_ssl_cert_file,
            key_file=settings.kafka_ssl_key_file,
            key_password=secret(settings.kafka_ssl_key_password),
        )

    @property
    def tls(self) -> bool:
        return self.protocol in ("SSL", "SASL_SSL")

    @property
    def sasl(self) -> bool:
        return self.protocol.startswith("SASL_")

    def librdkafka(self) -> dict[str, str]:
        """The confluent-kafka (librdkafka) properties."""
        conf = {"security.protocol": self.protocol}
        if self.sasl:
            conf |= {
                "sasl.mechanism": self.mechanism,
                "sasl.username": self.username or "",
                "sasl.password": self.password or "",
            }
        if self.tls:
            files = {
                "ssl.ca.location": self.ca_file,
                "ssl.certificate.location": self.cert_file,
                "ssl.key.location": self.key_file,
            }
            conf |= {k: str(v) for k, v in files.items() if v is not None}
            if self.key_password:
                conf["ssl.key.password"] = self.key_password
        return conf

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of the Python (aiokafka) clients; None without TLS. The broker's
        certificate and host name are checked, as librdkafka does."""
        if not self.tls:
            return None
        context = ssl.create_default_context(
            cafile=str(self.ca_file) if self.ca_file is not None else None
        )
        if self.cert_file is not None:
            context.load_cert_chain(self.cert_file, self.key_file, self.key_password)
        return context

    def faust_credentials(self) -> Any:
        """faust's ``broker_credentials`` (None: PLAINTEXT)."""
        import faust

        if self.sasl:
            return faust.SASLCredentials(
                username=self.username,
                password=self.password,
                ssl_context=self.ssl_context(),
                mechanism=self.mechanism,
            )
        if self.tls:
            return faust.SSLCredentials(self.ssl_context())
        return None


def security() -> KafkaSecurity:
    """This process's Kafka security, from its ``VIGIL_KAFKA_*`` settings (read as each
    client is made: clients are few and long-lived)."""
    return KafkaSecurity.from_settings(load_settings())


def client_conf(bootstrap: str, base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    """A librdkafka configuration: ``base`` then the process's security then ``extra``."""
    return {"bootstrap.servers": bootstrap, **base, **security().librdkafka(), **extra}


def make_admin(bootstrap: str, **extra: Any) -> AdminClient:
    return AdminClient(client_conf(bootstrap, {}, extra))


def make_consumer(bootstrap: str, **extra: Any) -> Consumer:
    """A consumer configured with ``extra`` and the process's security."""
    return Consumer(client_conf(bootstrap, {}, extra))


def make_producer(bootstrap: str, **extra: Any) -> Producer:
    # acks=all + idempotence keeps per-partition order across retries (one camera's frames,
    # one account's transactions); lz4 keeps batches small. murmur2 is Kafka's default
    # partitioner (Java client, faust/aiokafka): keyed records land where any other client's
    # would, which the co-partitioned inflow topic relies on.
    conf = {
        "partitioner": "murmur2_random",
        "linger.ms": 5,
        "enable.idempotence": True,
        "acks": "all",
        "compression.type": "lz4",
        "queue.buffering.max.messages": 1_000_000,
    }
    return Producer(client_conf(bootstrap, conf, extra))


def make_reader(bootstrap: str, **extra: Any) -> Consumer:
    """A consumer for reading topics by explicit assignment (no group join, no commits)."""
    conf = {
        "group.id": f"vigil-reader-{uuid.uuid4().hex[:8]}",
        "enable.auto.commit": False,
        "auto.offset.reset": "earliest",
        "enable.partition.eof": True,
        "fetch.wait.max.ms": 50,  # Tansu holds a fetch this long even when data arrives
    }
    return Consumer(client_conf(bootstrap, conf, extra))


def read_from_start(
    reader: Consumer, topic: str, from_end: bool = False, since_ms: int | None = None
) -> int:
    """Assign every partition of ``topic`` at its beginning, its end, or its first record
    timestamped ``since_ms`` or later; returns the count."""
    meta = reader.list_topics(topic, timeout=10).topics.get(topic)
    if meta is None or meta.error is not None or not meta.partitions:
        raise NotFoundError(f"topic {topic!r} does not exist on this broker")
    if since_ms is not None:
        reader.assign(_since(reader, topic, list(meta.partitions), since_ms))
        return len(meta.partitions)
    # -2 = OFFSET_BEGINNING, -1 = OFFSET_END
    offset = -1 if from_end else -2
    reader.assign([TopicPartition(topic, p, offset) for p in meta.partitions])
    return len(meta.partitions)


def _since(reader: Consumer, topic: str, partitions: list[int], since_ms: int) -> list:
    found = reader.offsets_for_times(
        [TopicPartition(topic, p, since_ms) for p in partitions], timeout=10
    )
    out = []
    for tp in found:
        offset = tp.offset
        if offset < 0:  # nothing that new yet: the end as it is now, as a number (a logical
            # "end" is resolved at the first fetch and would skip what comes before it)
            offset = reader.get_watermark_offsets(TopicPartition(topic, tp.partition), 10)[1]
        out.append(TopicPartition(topic, tp.partition, offset))
    return out
