"""A running risk worker's /metrics, /healthz and /readyz, end to end on the embedded
broker: the series move with what was published, counted independently here."""

from __future__ import annotations

import json
import threading
import time

import pytest

from tests.apps.helpers import collect, get, series
from tests.conftest import worker_env
from vigil.apps.clients import publish
from vigil.apps.process import WorkerProcess, free_port
from vigil.streams.sources import GeneratorConfig, TransactionGenerator

pytestmark = pytest.mark.integration


def test_the_risk_worker_serves_its_counts_latency_lag_and_readiness(settings, tmp_path):
    n = 400
    txs = [g for g in TransactionGenerator(GeneratorConfig(seed=5, accounts=60)).take(n) if g.tx]
    gold = json.loads(txs[0].value)
    bad = [
        (b"x", b"{not json"),
        (gold["account_id"].encode(), json.dumps({**gold, "tx_id": "gold", "currency": "XAU"})),
    ]
    publish(settings.kafka_bootstrap, settings.topics.transactions, [(g.key, g.value) for g in txs])
    publish(settings.kafka_bootstrap, settings.topics.transactions, bad)
    port = free_port()
    env = worker_env(settings) | {
        "VIGIL_RISK_METRICS_PORT": str(port),
        "VIGIL_LOG_FORMAT": "json",
    }

    ready_seen: list[int] = []
    stop = threading.Event()

    def probe() -> None:  # /readyz from the worker's start until the end
        while not stop.is_set():
            status = get(port, "/readyz")[0]
            if status and (not ready_seen or ready_seen[-1] != status):
                ready_seen.append(status)
            time.sleep(0.05)

    prober = threading.Thread(target=probe, daemon=True)
    with WorkerProcess("risk", env, tmp_path / "worker.log") as worker:
        prober.start()
        collect(
            settings.kafka_bootstrap,
            settings.topics.scores,
            lambda got: len(got) >= len(txs),
            alive=lambda: worker.running,
        )
        dead = collect(
            settings.kafka_bootstrap,
            settings.topics.dlq,
            lambda got: len(got) >= 2,
            alive=lambda: worker.running,
        )
        deadline = time.monotonic() + 30
        while True:  # the counters reach the endpoint about once a second
            got = series(port)
            lag = [v for (name, _l), v in got.items() if name == "vigil_risk_consumer_lag"]
            if got.get(("vigil_risk_scored_total", ())) == len(txs) and lag and not any(lag):
                break
            assert time.monotonic() < deadline, got
            time.sleep(0.5)
        health = get(port, "/healthz")
        ready = get(port, "/readyz")
        stop.set()
        prober.join(5)

    assert sorted(d["reason"] for d in dead) == ["currency", "invalid"]
    assert got[("vigil_risk_events_total", ())] == len(txs) + 2
    assert got[("vigil_risk_dlq_total", ())] == 2
    assert got[("vigil_risk_dead_letters_total", (("reason", "invalid"),))] == 1
    assert got[("vigil_risk_dead_letters_total", (("reason", "currency"),))] == 1
    # every transaction handled once: one latency each, within the batches counted
    assert got[("vigil_risk_latency_seconds_count", ())] == len(txs) + 2
    assert got[("vigil_risk_latency_seconds_sum", ())] > 0
    assert 1 <= got[("vigil_risk_batch_seconds_count", ())] <= len(txs) + 2
    partitions = {
        dict(labels)["partition"]
        for (name, labels) in got
        if name == "vigil_risk_consumer_lag"
        and dict(labels)["topic"] == settings.topics.transactions
    }
    assert partitions == {"0", "1", "2", "3"}
    assert got[("vigil_risk_model_info", (("version", "rules-only"),))] == 1
    assert got[("vigil_risk_ruleset_info", (("version", "seed:2"),))] == 1
    assert health == (200, "ok\n")
    assert ready[0] == 200 and ready[1].startswith("ready: partitions [0, 1, 2, 3]")
    assert ready_seen[-1] == 200 and 200 not in ready_seen[:-1]  # once ready, it stayed
    # its log: one JSON object per line (after the line WorkerProcess stamps the start with)
    stamp, *rest = (tmp_path / "worker.log").read_text().splitlines()
    assert stamp.endswith("starting: vigil worker risk")
    lines = [json.loads(line) for line in rest]
    assert all({"ts", "level", "logger", "message", "process"} <= set(d) for d in lines)
    assert any(d["message"].startswith("first batch:") for d in lines)
    assert any(d["logger"] == "vigil.metrics" and "/metrics" in d["message"] for d in lines)
