"""Money coming in, end to end on the embedded broker with two workers: transfers are
republished keyed by payee, folded by the worker that owns the payee's partition, and seen
when the payee pays on (fan-in and round-tripping alerts)."""

from __future__ import annotations

import json
import time
from importlib import resources

import pytest
from confluent_kafka import Consumer, TopicPartition

from tests.apps.helpers import collect
from tests.conftest import worker_env
from tests.reference import wire
from vigil.apps.clients import publish
from vigil.apps.process import WorkerProcess
from vigil.streams.features.library import FEATURE_SPEC

pytestmark = pytest.mark.integration

AML = str(resources.files("vigil.streams.rules").joinpath("rulesets", "aml.yaml"))


def wait_folded(bootstrap: str, topic: str, group: str, n: int, timeout_s: float = 120.0) -> None:
    """Until the worker group has committed the records of ``topic`` that carry ``n`` inflows
    (faust commits a record only after its effects, here the folded inflow state, were
    saved). The ends come from reading the records: Tansu under-reports watermarks."""
    deadline = time.monotonic() + timeout_s
    reader = Consumer({"bootstrap.servers": bootstrap, "group.id": group + "-probe"})
    parts = sorted(reader.list_topics(topic, timeout=10).topics[topic].partitions)
    reader.assign([TopicPartition(topic, p, 0) for p in parts])
    ends: dict[int, int] = {}
    seen = 0
    while seen < n and time.monotonic() < deadline:
        for m in reader.consume(100, 0.5):
            if m.error() is None:
                seen += len(json.loads(m.value())["inflows"])
                ends[m.partition()] = max(ends.get(m.partition(), 0), m.offset() + 1)
    reader.close()
    assert seen == n, f"{seen} of {n} inflow records published"
    group_view = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        tps = [TopicPartition(topic, p) for p in ends]
        while time.monotonic() < deadline:
            done = {t.partition: t.offset for t in group_view.committed(tps, timeout=10)}
            if all(done[p] >= end for p, end in ends.items()):
                return
            time.sleep(0.2)
        raise AssertionError(f"inflows not folded: committed {done}, ends {ends}")
    finally:
        group_view.close()


def test_payees_see_their_inflows_across_workers_and_partitions(settings, bootstrap, tmp_path):
    collectors = [f"col-{i}" for i in range(4)]
    incoming = []
    for c, collector in enumerate(collectors):
        for p in range(9):
            amount = 1000.0 + 100 * p + c
            incoming.append(wire(f"in-{c}-{p}", f"payer-{c}-{p}", collector, p, amount))
    incoming.append(wire("rt-out", "origin", "friend", 0, 20_000.0))
    onward = [wire(f"out-{c}", col, f"ext-{c}", 120, 9000.0) for c, col in enumerate(collectors)]
    onward.append(wire("rt-back", "friend", "origin", 24 * 60, 19_000.0))

    env = worker_env(settings) | {"VIGIL_RULESET_PATH": AML}
    workers = [WorkerProcess("risk", env, tmp_path / f"w{i}.log") for i in range(2)]
    for w in workers:
        w.start()
    try:
        publish(
            bootstrap,
            settings.topics.transactions,
            [(t["account_id"], json.dumps(t).encode()) for t in incoming],
        )
        first = collect(bootstrap, settings.topics.scores, lambda got: len(got) >= len(incoming))
        assert {s["tx_id"] for s in first} == {t["tx_id"] for t in incoming}
        wait_folded(bootstrap, settings.topics.inflows, f"{settings.namespace}-risk", len(incoming))
        publish(
            bootstrap,
            settings.topics.transactions,
            [(t["account_id"], json.dumps(t).encode()) for t in onward],
        )
        total = len(incoming) + len(onward)
        scores = collect(bootstrap, settings.topics.scores, lambda got: len(got) >= total)
        alerts = collect(bootstrap, settings.topics.alerts, lambda got: len(got) >= len(onward))
    finally:
        for w in workers:
            w.stop()

    by_id = {s["tx_id"]: s for s in scores}
    assert len(scores) == total  # each scored once

    def carried(got: list[dict]) -> list[str]:
        return [row[1] for batch in got for row in batch["inflows"]]

    inflows = carried(
        collect(bootstrap, settings.topics.inflows, lambda got: len(carried(got)) >= total)
    )
    assert sorted(inflows) == sorted(by_id)  # one per transfer, no more
    for c, collector in enumerate(collectors):
        f = FEATURE_SPEC.as_dict(by_id[f"out-{c}"]["features"])
        sent = [t["amount"] for t in incoming if t["counterparty_id"] == collector]
        assert f["distinct_payers_24h"] == 9 and f["inflow_sum_24h"] == pytest.approx(sum(sent))
        assert f["pass_through_24h"] == pytest.approx(9000.0 / sum(sent))
        assert "fan_in" in {h["rule"] for h in by_id[f"out-{c}"]["rule_hits"]}
    back = by_id["rt-back"]
    assert FEATURE_SPEC.as_dict(back["features"])["round_trip_7d"] == 1.0
    assert "round_tripping" in {h["rule"] for h in back["rule_hits"]}
    alerted = {a["tx_id"] for a in alerts}
    assert alerted >= {t["tx_id"] for t in onward}
    # the payers themselves received nothing
    assert all(
        FEATURE_SPEC.as_dict(by_id[t["tx_id"]]["features"])["inflow_count_7d"] == 0
        for t in incoming
    )
