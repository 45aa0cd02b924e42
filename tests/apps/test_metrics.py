"""The workers' metrics and health endpoints (apps/metrics.py), over real HTTP; the
histogram against prometheus_client's own, fed the same values one at a time."""

from __future__ import annotations

import re
import socket
import threading
import time

import numpy as np
import pytest
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from tests.apps.helpers import get
from vigil.apps.metrics import BatchHistogram, Metrics, serve

BUCKETS = (0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0)


def samples(text: str) -> dict[tuple[str, tuple], float]:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }


def test_a_batch_histogram_equals_prometheus_own_fed_one_value_at_a_time():
    rng = np.random.default_rng(3)
    values = np.concatenate(
        [rng.exponential(0.2, 500), list(BUCKETS), [0.0, 1e9, float("nan")]]  # edges: le
    )
    ours = Metrics("t", [BatchHistogram("latency_seconds", "doc", BUCKETS)])
    for part in np.array_split(values, 7):
        ours.histograms["latency_seconds"].observe(part)
    registry = CollectorRegistry()
    theirs = Histogram("vigil_t_latency_seconds", "doc", buckets=BUCKETS, registry=registry)
    for v in values[~np.isnan(values)]:  # no value, nothing observed
        theirs.observe(v)
    theirs_text = generate_latest(registry).decode()
    want = {k: v for k, v in samples(theirs_text).items() if "created" not in k[0]}
    got = samples(generate_latest(ours.registry).decode())
    assert {k: got[k] for k in want} == pytest.approx(want)


def test_counters_gauges_and_versions_are_served_and_dead_letters_by_reason():
    m = Metrics("risk")
    m.refresh(
        {"events": 10, "scored": 7, "dlq": 3, "dlq:invalid": 2, "dlq:currency": 1},
        gauges={"consumer_lag": ("records behind", {(("partition", "0"),): 4.0})},
        info={"model": {"version": "risk-7"}},
    )
    server = serve(m, lambda: (True, "ready"), "127.0.0.1", _free_port())
    try:
        status, text = get(server.port, "/metrics")
        got = samples(text)
        assert status == 200
        assert got[("vigil_risk_events_total", ())] == 10
        assert got[("vigil_risk_scored_total", ())] == 7
        assert got[("vigil_risk_dead_letters_total", (("reason", "invalid"),))] == 2
        assert got[("vigil_risk_dead_letters_total", (("reason", "currency"),))] == 1
        assert got[("vigil_risk_consumer_lag", (("partition", "0"),))] == 4
        assert got[("vigil_risk_model_info", (("version", "risk-7"),))] == 1
        m.refresh({"events": 12, "scored": 12, "dlq": 0})  # the next copy replaces it
        assert samples(get(server.port, "/metrics")[1])[("vigil_risk_events_total", ())] == 12
        assert get(server.port, "/nothing")[0] == 404
    finally:
        server.stop()


def test_health_fails_when_the_loop_stops_refreshing_and_readiness_says_why():
    m = Metrics("risk", stall_s=60)
    state = {"ready": (False, "no partitions assigned yet")}

    def ready():
        if state["ready"] is None:
            raise RuntimeError("consumer gone")
        return state["ready"]

    server = serve(m, ready, "127.0.0.1", _free_port())
    try:
        assert get(server.port, "/healthz") == (200, "ok\n")
        assert get(server.port, "/readyz") == (503, "no partitions assigned yet\n")
        state["ready"] = (True, "ready: 2 partitions, model risk-7")
        assert get(server.port, "/readyz") == (200, "ready: 2 partitions, model risk-7\n")
        state["ready"] = None
        status, text = get(server.port, "/readyz")
        assert status == 503 and "consumer gone" in text
        m.stall_s = 0.0  # as if the loop had stopped turning
        status, text = get(server.port, "/healthz")
        assert status == 503 and "has not turned" in text
    finally:
        server.stop()


def test_port_zero_serves_nothing_and_a_taken_port_is_an_error_not_a_crash(caplog):
    m = Metrics("risk")
    assert serve(m, lambda: (True, ""), "127.0.0.1", 0) is None
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        assert serve(m, lambda: (True, ""), "127.0.0.1", taken.getsockname()[1]) is None
    assert "not served" in caplog.text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_failing_refresh_keeps_the_old_metrics_and_the_worker_alive(tmp_path, caplog):
    import asyncio

    from vigil.apps.settings import Settings
    from vigil.apps.worker import Watch, faust_app

    settings = Settings(namespace="metrics", state_dir=tmp_path)
    loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    try:
        app = faust_app(settings, "127.0.0.1:1", "risk", partitions=1, batch_size=10)
        counters = {"events": 5}
        watch = Watch(app, "risk", settings, 0, counters, lambda: (True, ""), info=lambda: 1 / 0)
        watch.metrics.stall_s = 0.5
        watch.metrics._refreshed -= 10  # as if the loop had not turned for a while

        async def a_few_rounds():
            task = asyncio.ensure_future(watch._refresh_loop())
            await asyncio.sleep(0.2)
            task.cancel()

        loop.run_until_complete(a_few_rounds())
    finally:
        asyncio.set_event_loop(None)
        loop.close()
    assert watch.metrics.alive()[0]  # the loop turned, though the refresh failed
    assert "metrics not refreshed" in caplog.text
    assert ("vigil_risk_events_total", ()) not in samples(
        generate_latest(watch.metrics.registry).decode()
    )  # nothing half-refreshed


def test_a_scheduled_refresh_job_counts_its_rounds_and_readiness_follows_the_last():
    from vigil.apps.trainer import RefreshWatch, run_schedule

    outcomes = [
        {"model": "risk", "challenger": "risk-2", "published": True, "challenger_score": 0.9},
        {"model": "risk", "challenger": "risk-3", "published": False, "champion_score": 0.95},
        RuntimeError("broker away"),
    ]
    watch = RefreshWatch("risk")
    server = serve(watch.metrics, watch.ready, "127.0.0.1", _free_port(), watch.alive)
    stop = threading.Event()
    seen: list[tuple[int, str]] = []

    def round_(n: int) -> dict:
        seen.append(get(server.port, "/healthz"))  # asked while the round runs
        outcome = outcomes[n]
        if n == len(outcomes) - 1:
            stop.set()
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    try:
        assert get(server.port, "/readyz")[0] == 200  # no round yet: nothing failed
        failed = run_schedule(watch.wrap(round_), 0.01, stop, lambda _r: None)
        got = samples(get(server.port, "/metrics")[1])
        ready = get(server.port, "/readyz")
    finally:
        server.stop()
    assert failed == 1
    assert seen[1][0] == 200 and re.fullmatch(r"round 1 running for \d+ s\n", seen[1][1])
    assert got[("vigil_risk_trainer_rounds_total", ())] == 3
    assert got[("vigil_risk_trainer_rounds_failed_total", ())] == 1
    assert got[("vigil_risk_trainer_published_total", ())] == 1
    assert got[("vigil_risk_trainer_kept_total", ())] == 1
    assert got[("vigil_risk_trainer_round_seconds_count", ())] == 3
    assert got[("vigil_risk_trainer_challenger_score", ())] == 0.9
    assert got[("vigil_risk_trainer_champion_score", ())] == 0.95
    published = (("model", "risk"), ("version", "risk-2"))
    assert got[("vigil_risk_trainer_published_info", published)] == 1
    assert (
        got[("vigil_risk_trainer_last_success_timestamp_seconds", ())]
        <= got[("vigil_risk_trainer_last_round_timestamp_seconds", ())]
    )
    assert ready == (503, "the last round failed: RuntimeError: broker away\n")


def test_a_batch_watch_times_latency_from_the_records_timestamps_and_tracks_offsets():
    """What the event loop records per micro-batch, against values worked out here:
    the latency of records of the latency topics only (those without a timestamp left
    out), the next offset per partition (never moving back on a redelivery)."""
    from types import SimpleNamespace

    from vigil.apps.worker import BatchWatch

    def event(topic, partition, offset, age_s):
        ts = time.time() - age_s if age_s is not None else None
        return SimpleNamespace(
            message=SimpleNamespace(topic=topic, partition=partition, offset=offset, timestamp=ts)
        )

    watch = BatchWatch("risk", ["tx"])
    watch.batch(
        [
            event("tx", 0, 5, 0.3),
            event("tx", 1, 9, 2.0),
            event("labels", 0, 3, 40.0),
            event("tx", 0, 6, None),
        ],
        0.02,
    )
    watch.batch([event("tx", 0, 4, 0.3)], 0.004)  # a redelivery of an older offset
    assert watch.next == {("tx", 0): 7, ("tx", 1): 10, ("labels", 0): 4}
    text = generate_latest(watch.metrics.registry).decode()
    assert "vigil_risk_latency_seconds_count 3.0" in text
    assert 'vigil_risk_latency_seconds_bucket{le="0.25"} 0.0' in text
    assert 'vigil_risk_latency_seconds_bucket{le="0.5"} 2.0' in text
    assert 'vigil_risk_latency_seconds_bucket{le="2.5"} 3.0' in text
    assert "vigil_risk_batch_seconds_count 2.0" in text
    assert 'vigil_risk_batch_seconds_bucket{le="0.005"} 1.0' in text
