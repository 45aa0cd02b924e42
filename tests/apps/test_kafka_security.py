"""The VIGIL_KAFKA_* security settings: checked when read, turned into each client's own
configuration, and applied by every kind of client Vigil makes: on the wire, against a
stand-in broker that records the SASL mechanism and user each client authenticates with
(tests/apps/sasl_standin.py; the embedded broker has no SASL). TLS end to end:
test_tls.py. That no client is made elsewhere: tests/test_architecture.py."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from aiokafka import AIOKafkaProducer
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from pydantic import ValidationError
from typer.testing import CliRunner

from tests.apps.sasl_standin import METADATA, SaslStandin
from vigil.apps.cli import app
from vigil.apps.kafka import KafkaSecurity, make_admin, make_consumer, make_producer, make_reader
from vigil.apps.settings import Settings
from vigil.apps.worker import faust_app


@pytest.fixture
def pem(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_text("-----BEGIN CERTIFICATE-----\n")
    return path


def test_each_protocol_gives_librdkafka_its_own_properties(pem):
    plain = KafkaSecurity.from_settings(Settings())
    assert plain.librdkafka() == {"security.protocol": "PLAINTEXT"}
    assert plain.faust_credentials() is None

    sasl = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_mechanism="SCRAM-SHA-512",
        kafka_sasl_username="alice",
        kafka_sasl_password="s3cret",
    )
    assert KafkaSecurity.from_settings(sasl).librdkafka() == {
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "alice",
        "sasl.password": "s3cret",
    }
    tls = Settings(
        kafka_security_protocol="SASL_SSL",
        kafka_sasl_username="alice",
        kafka_sasl_password="s3cret",
        kafka_ssl_ca_file=pem,
        kafka_ssl_cert_file=pem,
        kafka_ssl_key_file=pem,
        kafka_ssl_key_password="k",
    )
    assert KafkaSecurity.from_settings(tls).librdkafka() == {
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "PLAIN",
        "sasl.username": "alice",
        "sasl.password": "s3cret",
        "ssl.ca.location": str(pem),
        "ssl.certificate.location": str(pem),
        "ssl.key.location": str(pem),
        "ssl.key.password": "k",
    }


@pytest.mark.parametrize(
    "settings, says",
    [
        ({"kafka_security_protocol": "SASL_SSL"}, "needs VIGIL_KAFKA_SASL_USERNAME"),
        ({"kafka_security_protocol": "TLS"}, "kafka_security_protocol"),
        ({"kafka_sasl_mechanism": "GSSAPI"}, "kafka_sasl_mechanism"),
        ({"kafka_ssl_ca_file": "CA"}, "does not use TLS"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_cert_file": "CA"}, "go together"),
        ({"kafka_security_protocol": "SSL", "kafka_ssl_ca_file": "/no/such.pem"}, "file"),
        ({"replication_factor": 0}, "replication_factor"),
    ],
)
def test_incomplete_or_contradictory_security_settings_are_refused(pem, settings, says):
    values = {k: str(pem) if v == "CA" else v for k, v in settings.items()}
    with pytest.raises(ValidationError, match=says):
        Settings(**values)


def test_no_password_is_in_the_security_objects_repr():
    settings = Settings(
        kafka_security_protocol="SASL_PLAINTEXT",
        kafka_sasl_username="alice",
        kafka_sasl_password="s3cret-pw",
    )
    shown = repr(KafkaSecurity.from_settings(settings))
    assert "alice" in shown and "s3cret-pw" not in shown


def test_vigil_config_never_prints_a_password(monkeypatch):
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_USERNAME", "alice")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_PASSWORD", "s3cret-pw")
    shown = CliRunner().invoke(app, ["config", "--json"])
    assert shown.exit_code == 0, shown.output
    assert "alice" in shown.output and "s3cret-pw" not in shown.output


def _faust_producer(bootstrap: str) -> threading.Thread:
    """What the faust app's aiokafka clients are given (faust's own conversion of the
    app's broker_credentials), used by an aiokafka producer."""
    settings = Settings()  # from the environment, as in a worker
    faust = faust_app(settings, bootstrap, "risk", 2, 10)
    auth = credentials_to_aiokafka_auth(faust.conf.broker_credentials, faust.conf.ssl_context)

    async def connect() -> None:
        producer = AIOKafkaProducer(bootstrap_servers=bootstrap, request_timeout_ms=3000, **auth)
        with contextlib.suppress(Exception):  # the stand-in hangs up after the first auth
            await asyncio.wait_for(producer.start(), 5)
        await producer.stop()

    thread = threading.Thread(target=asyncio.run, args=(connect(),), daemon=True)
    thread.start()
    return thread


# each makes a client, which connects to its bootstrap server at once, and returns it
CLIENTS: dict[str, Callable[[str], object]] = {
    "producer": make_producer,
    "reader": make_reader,
    "admin": make_admin,
    "consumer": lambda b: make_consumer(b, **{"group.id": "g"}),
    "faust": _faust_producer,
}


def _run(client: Callable[[str], object], standin: SaslStandin) -> None:
    made = client(standin.bootstrap)  # kept alive until the stand-in has seen it
    deadline = time.monotonic() + 10
    while not any(s.auth or METADATA in s.api_keys for s in standin.seen):
        assert time.monotonic() < deadline, standin.seen
        time.sleep(0.02)
    del made


@pytest.mark.parametrize("client", sorted(CLIENTS))
@pytest.mark.parametrize("mechanism", ["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"])
def test_every_client_authenticates_with_the_configured_mechanism_and_user(
    client, mechanism, monkeypatch, tmp_path
):
    monkeypatch.setenv("VIGIL_STATE_DIR", str(tmp_path))
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SASL_PLAINTEXT")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_MECHANISM", mechanism)
    monkeypatch.setenv("VIGIL_KAFKA_SASL_USERNAME", "alice-the-analyst")
    monkeypatch.setenv("VIGIL_KAFKA_SASL_PASSWORD", "s3cret")
    standin = SaslStandin().start()
    try:
        _run(CLIENTS[client], standin)
    finally:
        standin.stop()
    authenticated = standin.authenticated()
    assert authenticated, standin.seen
    assert {s.mechanism for s in authenticated} == {mechanism}
    assert all(b"alice-the-analyst" in s.auth for s in authenticated if s.auth)


@pytest.mark.parametrize("client", sorted(CLIENTS))
def test_without_sasl_the_same_clients_ask_for_metadata_unauthenticated(
    client, monkeypatch, tmp_path
):  # the stand-in tells the two apart: the check above can fail
    monkeypatch.setenv("VIGIL_STATE_DIR", str(tmp_path))
    standin = SaslStandin().start()
    try:
        _run(CLIENTS[client], standin)
    finally:
        standin.stop()
    assert not standin.authenticated()
    assert any(METADATA in s.api_keys for s in standin.seen)
