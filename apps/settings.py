"""One settings object for every Vigil process, read from ``VIGIL_*`` environment variables."""

from __future__ import annotations

import logging
import re
from pathlib import Path

from pydantic import Field, FilePath, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from vigil.models.signing import SigningKey, TrustedKeys, dev_signing_key
from vigil.streams.schemas import MAX_RECORD_BYTES
from vigil.streams.topics import TopicNames

__all__ = ["Settings", "load_settings", "redacted", "settings_reference"]
log = logging.getLogger("vigil.settings")


class Settings(BaseSettings):
    """Everything configurable, with the defaults a developer wants on a laptop.

    Environment: ``VIGIL_KAFKA_BOOTSTRAP``, ``VIGIL_NAMESPACE``, ``VIGIL_PARTITIONS``, ...
    """

    # an empty variable is an unset one (compose files and shells leave them empty)
    model_config = SettingsConfigDict(
        env_prefix="VIGIL_", extra="ignore", frozen=True, env_ignore_empty=True
    )

    kafka_bootstrap: str | None = Field(
        default=None,
        description="host:port list of a Kafka cluster; unset = the embedded dev broker",
    )
    kafka_security_protocol: str = Field(
        default="PLAINTEXT",
        pattern=r"^(PLAINTEXT|SSL|SASL_PLAINTEXT|SASL_SSL)$",
        description="how every Vigil client (workers, trainers, CLI, console) talks to the "
        "brokers: PLAINTEXT, SSL (TLS), SASL_PLAINTEXT or SASL_SSL",
    )
    kafka_sasl_mechanism: str = Field(
        default="PLAIN",
        pattern=r"^(PLAIN|SCRAM-SHA-256|SCRAM-SHA-512)$",
        description="with SASL_*: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512",
    )
    kafka_sasl_username: str | None = Field(default=None, description="with SASL_*: the user")
    kafka_sasl_password: SecretStr | None = Field(
        default=None, description="with SASL_*: the password (never printed)"
    )
    kafka_ssl_ca_file: FilePath | None = Field(
        default=None,
        description="with SSL or SASL_SSL: the CA certificates (PEM) the brokers' certificates "
        "are checked against (unset: the system's)",
    )
    kafka_ssl_cert_file: FilePath | None = Field(
        default=None,
        description="with SSL or SASL_SSL: this client's certificate (PEM), for brokers that "
        "ask for one (mutual TLS); goes with VIGIL_KAFKA_SSL_KEY_FILE",
    )
    kafka_ssl_key_file: FilePath | None = Field(
        default=None, description="the private key (PEM) of VIGIL_KAFKA_SSL_CERT_FILE"
    )
    kafka_ssl_key_password: SecretStr | None = Field(
        default=None, description="the password of VIGIL_KAFKA_SSL_KEY_FILE, if it has one"
    )
    replication_factor: int = Field(
        default=1,
        ge=1,
        le=32,
        description="replication factor of every topic Vigil or faust creates (3 on a "
        "production cluster; 1 for a single broker)",
    )
    schema_registry_url: str | None = Field(
        default=None,
        description="a schema registry (Confluent REST API; https://user:password@host "
        "for basic authentication): `vigil topics` registers the contract's JSON Schemas "
        "there as subjects <topic>-value",
    )
    namespace: str = Field(
        default="vigil",
        pattern=r"^[A-Za-z0-9][A-Za-z0-9_\-]*$",
        description="topic-name and consumer-group prefix (contract default: vigil)",
    )
    partitions: int = Field(
        default=4,
        ge=1,
        le=1024,
        description="partitions of the keyed topics `vigil topics` creates: the most workers "
        "that share one model's load",
    )
    batch_size: int = Field(
        default=4000, ge=1, description="most transactions in one risk micro-batch"
    )
    batch_wait_ms: int = Field(
        default=20,
        ge=1,
        description="longest a risk micro-batch's first transaction waits for more (a batch "
        "also goes when it is full)",
    )
    fetch_max_wait_ms: int = Field(
        default=50,
        ge=1,
        le=5000,
        description="longest a consumer fetch waits for data (Tansu does not answer early)",
    )
    max_record_bytes: int = Field(
        default=MAX_RECORD_BYTES,
        ge=16_384,
        le=100_000_000,
        description="largest record (key + value) a worker produces: dead letters are cut "
        "to fit, larger outputs are dead-lettered; at most the topics' max.message.bytes",
    )
    metrics_host: str = Field(
        default="0.0.0.0",
        description="address the workers serve /metrics, /healthz and /readyz on",
    )
    risk_metrics_port: int = Field(
        default=9108, ge=0, le=65535, description="risk worker's metrics and health port (0: off)"
    )
    inspection_metrics_port: int = Field(
        default=9109,
        ge=0,
        le=65535,
        description="inspection worker's metrics and health port (0: off)",
    )
    trainer_metrics_port: int = Field(
        default=9110,
        ge=0,
        le=65535,
        description="a scheduled refresh job's (`vigil train ... --every`) metrics and health "
        "port (0: off)",
    )
    serve_demo_models: bool = Field(
        default=False,
        description="serve models labelled demo (`vigil demo` trains them in seconds on "
        "generated data and sets this for its own workers); off: a worker refuses them",
    )
    state_ttl_days: float = Field(
        default=400.0,
        ge=31.05,
        description="an account idle this long in event time (no payment made or received) "
        "is forgotten and its running statistics (age, dormancy) restart; accounts that only "
        "received payments or labels are forgotten once the longest feature window (31 days) "
        "has passed",
    )
    state_sweep_s: float = Field(
        default=60.0, gt=0, description="how often a risk worker looks for idle account state"
    )
    state_on_disk: bool = Field(
        default=True,
        description="keep the risk worker's account states in local files under "
        "VIGIL_STATE_DIR as well as in memory, so a restart reads only the newest part of "
        "the state changelog (false: the whole changelog after every start)",
    )
    release_signing_key: Path | None = Field(
        default=None,
        description="Ed25519 private key (PEM) that signs model releases, for publishers "
        "only: `vigil keys generate` makes one (unset: a development key under "
        "STATE_DIR/keys, made on first use)",
    )
    max_release_bytes: int = Field(
        default=64 * 1024 * 1024,
        ge=1024,
        description="largest model release a worker assembles (checked from its signed "
        "manifest before any chunk is kept): ONNX Runtime needs several times it to load",
    )
    release_public_keys: str = Field(
        default="",
        description="comma-separated Ed25519 public keys (PEM files) whose releases workers "
        "serve; several during a key rotation (unset: the signing key's public half)",
    )
    log_level: str = Field(
        default="INFO",
        pattern=r"^(DEBUG|INFO|WARNING|ERROR|CRITICAL)$",
        description="DEBUG, INFO, WARNING, ERROR or CRITICAL",
    )
    log_format: str = Field(
        default="text",
        pattern=r"^(text|json)$",
        description="workers' logs: text, or json (one object per line: ts, level, logger, "
        "message, process, exception)",
    )
    state_dir: Path = Field(
        default=Path(".vigil"),
        description="worker data, broker runtime file, logs, development keys",
    )

    model_dir: Path | None = Field(
        default=None,
        description="where `vigil train risk` writes models and workers load the newest "
        "(unset: STATE_DIR/models)",
    )

    ruleset_path: Path | None = Field(
        default=None,
        description="YAML/JSON ruleset the workers start with (unset: the shipped aml set)",
    )

    rates_path: Path | None = Field(
        default=None,
        description="YAML/JSON rates table the workers start with (unset: the built-in "
        "approximate reference rates); tables published on vigil.rates replace it",
    )

    reporting_currency: str = Field(
        default="EUR",
        pattern=r"^[A-Z]{3}$",
        description="the currency amounts are converted to before features and rules; a "
        "rates table in another base is refused",
    )

    review_threshold: float = Field(
        default=0.5, gt=0, le=1, description="a combined score at or above it is `review`"
    )
    block_threshold: float = Field(
        default=0.9, gt=0, le=1, description="a combined score at or above it is `block`"
    )

    # The inspection worker (frames -> clips -> defect alerts).
    inspection_batch_size: int = Field(default=256, ge=1, description="frames per micro-batch")
    inspection_batch_wait_ms: int = Field(
        default=20, ge=1, description="max wait to fill a micro-batch of frames"
    )
    inspection_stride: int = Field(
        default=4,
        ge=1,
        description="frames between clip starts (the clip length is the model's, 8)",
    )
    inspection_grace_ms: int = Field(
        default=50,
        ge=0,
        description="how long (event time) a missing frame is waited for before it is a gap",
    )
    inspection_idle_ms: int = Field(
        default=1000, ge=1, description="a camera silent this long has its held frames released"
    )
    inspection_align: str = Field(
        default="dis",
        pattern=r"^(dis|farneback|phase)$",
        description="clip alignment: DIS flow, Farneback flow or the global shift alone",
    )
    inspection_threshold: float | None = Field(
        default=None,
        gt=0,
        le=1,
        description="alert threshold on the defect probability (unset: the model's own, chosen "
        "at 1 % false alarms on validation clips)",
    )
    inspection_false_alarms: float = Field(
        default=0.01,
        ge=0.0001,
        le=0.5,
        description="the share of defect-free clips allowed to alert when a threshold is "
        "chosen: training on your images or a recording, and vigil inspection calibrate",
    )

    # Group membership timings: low for the embedded broker (Tansu completes a join only
    # after the rebalance timeout); raise them for a production cluster.
    rebalance_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="how long a group rebalance waits for members to join; low for the "
        "embedded broker, raise it on a real cluster (docs/operations.md)",
    )
    group_instance_id: str | None = Field(
        default=None,
        description="a stable, unique name per worker process (e.g. the pod name): static "
        "group membership, so a restarted worker gets its partitions back without a "
        "rebalance or waiting out its predecessor's session",
    )
    session_timeout_s: float = Field(
        default=3.0,
        gt=0,
        description="a worker silent this long leaves the group and its partitions move: "
        "bounds recovery after a crash; 10-45 on a busy cluster",
    )
    heartbeat_interval_s: float = Field(
        default=1.0, gt=0, description="a third of the session timeout or less"
    )

    @model_validator(mode="after")
    def _kafka_security_complete(self) -> Settings:
        protocol = self.kafka_security_protocol
        if protocol.startswith("SASL_") and not (
            self.kafka_sasl_username and self.kafka_sasl_password
        ):
            raise ValueError(
                f"VIGIL_KAFKA_SECURITY_PROTOCOL={protocol} needs VIGIL_KAFKA_SASL_USERNAME "
                "and VIGIL_KAFKA_SASL_PASSWORD"
            )
        if (self.kafka_ssl_cert_file is None) != (self.kafka_ssl_key_file is None):
            raise ValueError("VIGIL_KAFKA_SSL_CERT_FILE and VIGIL_KAFKA_SSL_KEY_FILE go together")
        tls_files = [
            n
            for n in ("kafka_ssl_ca_file", "kafka_ssl_cert_file", "kafka_ssl_key_file")
            if getattr(self, n) is not None
        ]
        if tls_files and protocol not in ("SSL", "SASL_SSL"):
            names = ", ".join(f"VIGIL_{n.upper()}" for n in tls_files)
            raise ValueError(
                f"{names} set but VIGIL_KAFKA_SECURITY_PROTOCOL={protocol} does not use TLS "
                "(SSL or SASL_SSL)"
            )
        return self

    def release_signer(self) -> SigningKey:
        """The key that signs model releases; a development key (warned about) when
        ``release_signing_key`` is unset."""
        if self.release_signing_key is not None:
            return SigningKey.load(self.release_signing_key)
        log.warning(
            "VIGIL_RELEASE_SIGNING_KEY is unset: releases are signed with a development key "
            "under %s; make a key pair of your own (vigil keys generate) before model "
            "releases cross a network you do not control",
            self.state_dir / "keys",
        )
        return dev_signing_key(self.state_dir / "keys")

    def release_trusted(self) -> TrustedKeys:
        """The public keys whose releases this process accepts."""
        paths = [Path(p.strip()) for p in self.release_public_keys.split(",") if p.strip()]
        if paths:
            return TrustedKeys.load(paths)
        return TrustedKeys([self.release_signer().public_key()])

    @property
    def models_path(self) -> Path:
        return self.model_dir or self.state_dir / "models"

    @property
    def topics(self) -> TopicNames:
        # not cached: a cached value would survive model_copy(update={"namespace": ...})
        return TopicNames(self.namespace)


_URL_PASSWORD = re.compile(r"^([a-z][a-z0-9+.-]*://[^:/@]*):[^@/]*@")


def redacted(value: str) -> str:
    """``value`` fit to print: a URL's password (scheme://user:password@host) masked.

    >>> redacted("https://ops:s3cret@registry:8081")
    'https://ops:***@registry:8081'
    """
    return _URL_PASSWORD.sub(r"\1:***@", value)


def load_settings(**overrides: object) -> Settings:
    """Read the environment, then apply explicit overrides (used by the CLI and tests)."""
    return Settings(**overrides)  # type: ignore[arg-type]


def _default_text(value: object) -> str:
    if value is None or value == "":
        return "unset"
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return f"`{value}`"


def settings_reference() -> str:
    """``docs/configuration.md``: every setting with its variable, default and meaning, read
    from :class:`Settings` itself (``vigil config --reference``; a test keeps the file equal).

    >>> "| `VIGIL_NAMESPACE` | `vigil` |" in settings_reference()
    True
    """
    prefix = Settings.model_config.get("env_prefix", "")
    lines = [
        "# Configuration",
        "",
        "<!-- generated by `vigil config --reference` from apps/settings.py: edit there -->",
        "",
        "Every Vigil process (workers, trainers, the CLI) reads its settings from environment",
        f"variables with the prefix `{prefix}`. `vigil config` prints the values in effect.",
        "",
        "| variable | default | meaning |",
        "|---|---|---|",
    ]
    for name, field in Settings.model_fields.items():
        meaning = (field.description or "").replace("|", "\\|")
        lines.append(f"| `{prefix}{name.upper()}` | {_default_text(field.default)} | {meaning} |")
    return "\n".join(lines) + "\n"
