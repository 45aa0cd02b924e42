"""Bounded state: idle accounts are forgotten (two-phase, by event time), the watermark
resists a few far-future records, and one account's log is capped."""

from __future__ import annotations

import json

import pytest

from tests.reference import T0, wire
from vigil.streams.features import engine
from vigil.streams.features.library import DAY_MS, GRACE_MS, HORIZON_MS, HOUR_MS, KEEP_HOURS
from vigil.streams.pipeline import RULE_NAMES, IdleSweep, RiskPipeline
from vigil.streams.rules import default_ruleset
from vigil.streams.schemas import RawRecord

SEED = default_ruleset(RULE_NAMES, "seed")


def feed(pipeline: RiskPipeline, txs: list[dict], store: dict, first_offset: int = 0):
    recs = [
        RawRecord("vigil.transactions", 0, first_offset + i, t["account_id"].encode(),
                  json.dumps(t).encode())
        for i, t in enumerate(txs)
    ]  # fmt: skip
    return pipeline.process_local(recs, store)


def test_idle_accounts_are_forgotten_on_the_second_sweep_if_untouched_in_between():
    pipeline, store = RiskPipeline(SEED), {}
    day = 24 * 60  # minutes
    feed(
        pipeline, [wire("old", "a", "payee-a", 0, 10.0), wire("o2", "b", "payee-b", 1, 10.0)], store
    )
    feed(pipeline, [wire(f"n{i}", "c", "x", 40 * day + i, 10.0) for i in range(5)], store, 2)
    feed(pipeline, [], store)  # deliver the inflows of the transfers above
    assert pipeline.watermark_ms == T0 + (40 * day + 2) * 60_000  # the median of that batch
    sweep = IdleSweep(ttl_ms=32 * DAY_MS)
    assert sweep.due(store, pipeline.watermark_ms) == []  # picked, not yet forgotten
    store["b"] = json.loads(json.dumps(store["b"]))  # b written in between: kept, picked again
    due = sweep.due(store, pipeline.watermark_ms)
    # a: paid 40 days ago (TTL 32); the payees only received money, 40 days ago (their
    # windows span 31 days)
    assert sorted(due) == ["a", "payee-a", "payee-b"]
    assert sweep.due({k: v for k, v in store.items() if k not in due}, pipeline.watermark_ms) == [
        "b"  # through JSON its watermark scalar is null, not NaN: still an account that paid
    ]


def test_a_payee_is_kept_while_its_inflows_are_inside_the_longest_window():
    pipeline, store = RiskPipeline(SEED), {}
    feed(pipeline, [wire("t", "a", "p", 0, 10.0)], store)
    feed(pipeline, [], store)
    sweep = IdleSweep(ttl_ms=60 * DAY_MS)  # the payer "a" is kept
    # the payee's newest hour bucket ends T0 + 1 h; its windows span KEEP_HOURS, + the grace
    inside = T0 + HOUR_MS - 1 + KEEP_HOURS * HOUR_MS + GRACE_MS  # exactly: still in it
    assert sweep.due(store, inside) == [] and sweep.due(store, inside) == []
    assert sweep.due(store, inside + 1) == [] and sweep.due(store, inside + 1) == ["p"]


def test_a_ttl_shorter_than_the_longest_window_is_refused():
    with pytest.raises(ValueError, match="longest feature window"):
        IdleSweep(ttl_ms=HORIZON_MS)


def test_a_few_far_future_records_do_not_move_the_watermark():
    pipeline, store = RiskPipeline(SEED), {}
    txs = [wire(f"t{i}", f"a{i}", "x", i, 10.0) for i in range(9)]
    for t in txs[:3]:
        t["ts_ms"] = 4_102_444_799_999  # 2099: valid, and an attacker's way to age everyone
    feed(pipeline, txs, store)
    assert pipeline.watermark_ms == T0 + 7 * 60_000  # median of minutes 3..8 and three 2099s


def test_one_accounts_log_keeps_at_most_its_newest_rows(monkeypatch):
    monkeypatch.setattr(engine, "MAX_ACCOUNT_ROWS", 10)
    pipeline, store = RiskPipeline(SEED), {}
    feed(pipeline, [wire(f"t{i}", "a", "x", i, 1.0 + i) for i in range(25)], store)
    log = pipeline._live["a"][1].features  # the state as saved
    assert log.rows[:, engine.AMOUNT].tolist() == [16.0 + i for i in range(10)]
