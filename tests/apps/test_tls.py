"""Vigil on a TLS-only broker: a CA made here, a TLS-terminating proxy on loopback in front
of the embedded broker (which advertises the proxy), and `vigil topics`, a risk worker
(its faust consumer and producer, its confluent output producer and follower threads),
`vigil publish`, `vigil consume` and `vigil ui` all through it. A client that does not trust the
broker's certificate, or does not speak TLS, gets a clear error, not a hang."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.apps.helpers import get
from tests.apps.tls import Pki, TlsProxy, make_pki
from tests.conftest import worker_env
from vigil.apps.broker import EmbeddedBroker
from vigil.apps.clients import publish, read_topic
from vigil.apps.process import WorkerProcess, free_port
from vigil.apps.settings import Settings

pytestmark = pytest.mark.integration


@pytest.fixture
def tls_broker(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[tuple[str, Pki, TlsProxy]]:
    """(bootstrap, pki, proxy): only TLS reaches the broker; this process's clients use it."""
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    proxy = TlsProxy(pki, port).start()
    bootstrap = f"127.0.0.1:{proxy.port}"
    monkeypatch.setenv("VIGIL_KAFKA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("VIGIL_KAFKA_SSL_CA_FILE", str(pki.ca))
    broker = EmbeddedBroker(port=port, advertised=bootstrap, log_path=tmp_path / "tansu.log")
    try:
        with broker:
            yield bootstrap, pki, proxy
    finally:
        proxy.stop()


def _vigil(env: dict[str, str], *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "vigil.apps.cli", *args],
        env={**os.environ, **env},
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_workers_and_the_cli_run_through_tls(tls_broker, tmp_path, namespace):
    bootstrap, pki, proxy = tls_broker
    settings = Settings(
        kafka_bootstrap=bootstrap,
        namespace=namespace,
        state_dir=tmp_path / "state",
        partitions=2,
        kafka_security_protocol="SSL",
        kafka_ssl_ca_file=pki.ca,
    )
    env = worker_env(settings) | {
        "VIGIL_KAFKA_SECURITY_PROTOCOL": "SSL",
        "VIGIL_KAFKA_SSL_CA_FILE": str(pki.ca),
    }
    made = _vigil(env, "topics")
    assert made.returncode == 0, made.stderr
    assert f"{settings.topics.transactions}: 2 partitions, created" in made.stdout

    n = 300
    with WorkerProcess("risk", env, tmp_path / "worker.log") as worker:
        sent = _vigil(env, "publish", "transactions", "--count", str(n), "--seed", "5")
        assert sent.returncode == 0, sent.stderr
        read = _vigil(env, "consume", "scores", "--follow", "--limit", str(n), "--json")
        assert read.returncode == 0, read.stderr
        assert worker.running
    published = {v["tx_id"] for _k, v, _ts in read_topic(bootstrap, settings.topics.transactions)}
    scored = [json.loads(line)["tx_id"] for line in read.stdout.splitlines()]
    assert len(published) == n
    assert sorted(scored) == sorted(published)  # each scored once, through TLS
    # the worker, the publisher and the reader each held TLS sessions
    assert proxy.handshakes >= 3


def test_a_wrong_ca_or_plaintext_on_a_tls_broker_is_a_clear_error(tls_broker, tmp_path):
    bootstrap, _pki, proxy = tls_broker
    sessions = proxy.handshakes
    other = make_pki(tmp_path / "other", "someone-else")
    env = {
        "VIGIL_KAFKA_BOOTSTRAP": bootstrap,
        "VIGIL_KAFKA_SECURITY_PROTOCOL": "SSL",
        "VIGIL_KAFKA_SSL_CA_FILE": str(other.ca),
        "VIGIL_STATE_DIR": str(tmp_path / "state"),
    }
    wrong_ca = _vigil(env, "topics", timeout_s=60)
    assert wrong_ca.returncode == 2
    assert "refused the connection (SSL)" in wrong_ca.stderr
    assert "certificate verify failed" in wrong_ca.stderr
    assert "VIGIL_KAFKA_SSL_CA_FILE" in wrong_ca.stderr

    env = env | {"VIGIL_KAFKA_SECURITY_PROTOCOL": "PLAINTEXT", "VIGIL_KAFKA_SSL_CA_FILE": ""}
    plaintext = _vigil(env, "topics", timeout_s=60)
    assert plaintext.returncode == 2
    assert "refused the connection (PLAINTEXT)" in plaintext.stderr
    assert "VIGIL_KAFKA_SECURITY_PROTOCOL" in plaintext.stderr
    assert proxy.handshakes == sessions  # neither got a session


def test_the_console_reads_and_writes_through_tls(tls_broker, tmp_path, namespace):
    bootstrap, pki, _proxy = tls_broker
    env = {
        "VIGIL_KAFKA_BOOTSTRAP": bootstrap,
        "VIGIL_NAMESPACE": namespace,
        "VIGIL_STATE_DIR": str(tmp_path / "state"),
        "VIGIL_KAFKA_SECURITY_PROTOCOL": "SSL",
        "VIGIL_KAFKA_SSL_CA_FILE": str(pki.ca),
    }
    assert _vigil(env, "topics").returncode == 0
    topics = Settings(namespace=namespace).topics
    alert = {
        "alert_id": "al-tls",
        "tx_id": "tx-tls",
        "account_id": "acct-tls",
        "ts_ms": 1_767_225_600_000,
        "score": 0.95,
        "decision": "block",
        "reasons": [],
        "rule_hits": [],
        "model_version": "m",
        "processed_ms": 1_767_225_600_100,
    }
    publish(bootstrap, topics.alerts, [(b"acct-tls", json.dumps(alert).encode())])
    port = free_port()
    ui = WorkerProcess("ui", env, tmp_path / "console.log", args=["ui", "--port", str(port)])
    with ui:
        deadline = time.monotonic() + 60
        while get(port, "/api/cases/acct-tls")[0] != 200:
            assert ui.running and time.monotonic() < deadline, "the alert never reached it"
            time.sleep(0.3)
        body = json.dumps({"tx_id": "tx-tls", "fraud": True}).encode()
        request = urllib.request.Request(
            f"http://127.0.0.1:{port}/api/labels", body, {"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=30) as answer:
            assert answer.status == 200
    (label,) = [v for _k, v, _ts in read_topic(bootstrap, topics.labels)]
    assert (label["tx_id"], label["label"], label["account_id"]) == ("tx-tls", 1, "acct-tls")
