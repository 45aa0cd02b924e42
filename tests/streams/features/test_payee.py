"""The counterparty's side and the labels, through the pipeline, against a brute-force
reference (tests/reference.py): payments of every channel folded by their counterparty,
labels routed to their account and counterparty, micro-batches, restarts from JSON state,
and labels that the stream delivers before their time never leaking into a feature."""

import json
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference import account_label_features, payee_features
from vigil.streams.features.library import (
    DAY_MS,
    FEATURE_SPEC,
    FEATURES,
    HOUR_MS,
    KEEP_HOURS,
    Payee,
)
from vigil.streams.pipeline import RiskPipeline
from vigil.streams.schemas import RawRecord

T0 = 1_767_225_600_000  # 2026-01-01
ACCOUNTS = ("a0", "a1", "a2")
COUNTERPARTIES = ("a0", "a1", "m0", "m1")  # accounts too: transfers between them
NAMES = [
    n
    for n in FEATURE_SPEC.names
    if n.startswith(("payee_", "account_fraud")) or n == "amount_to_payee_mean_30d"
]

ITEM = st.one_of(
    st.tuples(
        st.just("tx"),
        st.sampled_from(ACCOUNTS),
        st.sampled_from(COUNTERPARTIES),
        st.integers(0, 40 * HOUR_MS),  # time step from the previous transaction
        st.sampled_from([5.0, 40.0, 250.0]),
        st.sampled_from(["card", "wire"]),
    ),
    st.tuples(
        st.just("label"),
        st.integers(0, 200),  # which transaction (if it exists yet: else a made-up one)
        st.integers(-3 * DAY_MS, 40 * DAY_MS),  # known this long after that transaction
        st.integers(0, 1),
        st.booleans(),  # names its account and counterparty
    ),
)


def build(items):
    """Contract records: transactions with non-decreasing times, labels naming them."""
    txs, out, clock = [], [], T0
    for item in items:
        if item[0] == "tx":
            _k, acct, cp, step, amount, channel = item
            clock += step
            tx = {
                "tx_id": f"t{len(txs)}",
                "ts_ms": clock,
                "account_id": acct,
                "counterparty_id": cp,
                "amount": amount,
                "currency": "EUR",
                "channel": channel,
                "country": "DE",
            }
            txs.append(tx)
            out.append(("tx", tx))
        else:
            _k, which, after, label, named = item
            tx = txs[which % len(txs)] if txs else None
            base = tx["ts_ms"] if tx else T0
            doc = {"tx_id": tx["tx_id"] if tx else "x", "label": label, "ts_ms": base + after}
            if named and tx:
                doc |= {"account_id": tx["account_id"], "counterparty_id": tx["counterparty_id"]}
            out.append(("label", doc))
    return out


def run_pipeline(records, cuts, restarts):
    pipeline = RiskPipeline()
    store: dict = {}
    got: dict = {}
    bounds = sorted({0, len(records), *(c % (len(records) + 1) for c in cuts)})
    offsets = {"tx": 0, "label": 0}
    for k, (lo, hi) in enumerate(zip(bounds, bounds[1:], strict=False)):
        batch = []
        for kind, doc in records[lo:hi]:
            topic = "transactions" if kind == "tx" else pipeline.labels_topic
            batch.append(RawRecord(topic, 0, offsets[kind], None, orjson.dumps(doc)))
            offsets[kind] += 1
        result = pipeline.process_local(batch, store)
        assert not result.dead
        for _key, value in result.scores:
            s = orjson.loads(value)
            got[s["tx_id"]] = FEATURE_SPEC.as_dict(s["features"])
        if k in restarts:  # a new worker: its state from JSON, the internal topic's records
            fed, fed_offset = pipeline._fed_back, pipeline._fed_offset
            store = json.loads(json.dumps(store))
            pipeline = RiskPipeline()
            pipeline._fed_back, pipeline._fed_offset = fed, fed_offset
    return got, bounds


def reference(records, bounds):
    """Folds at the start of a batch what the batch before produced, as the pipeline."""
    payments: dict[str, list] = {}
    clabels: dict[str, list] = {}
    alabels: dict[str, list] = {}
    want: dict = {}
    pending: list = []
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        for kind, entity, item in pending:
            if kind == "pay":
                earlier = payments.setdefault(entity, [])
                item["new"] = not any(
                    p["payer"] == item["payer"]
                    and p["ts_ms"] > item["ts_ms"] - KEEP_HOURS * HOUR_MS
                    for p in earlier
                )
                earlier.append(item)
            elif kind == "la":
                alabels.setdefault(entity, []).append(item)
            else:
                clabels.setdefault(entity, []).append(item)
        pending = []
        for kind, doc in records[lo:hi]:
            if kind == "label":
                item = {"known_ms": doc["ts_ms"], "label": doc["label"]}
                if "account_id" in doc:
                    pending.append(("la", doc["account_id"], item))
                    pending.append(("lc", doc["counterparty_id"], item))
                continue
            cp = doc["counterparty_id"]
            payee = {"payments": payments.get(cp, []), "labels": clabels.get(cp, [])}
            feats = payee_features(doc, payee, {})
            feats |= account_label_features(doc, alabels.get(doc["account_id"], []))
            want[doc["tx_id"]] = feats
            if cp != doc["account_id"]:
                pending.append(
                    (
                        "pay",
                        cp,
                        {
                            "payer": doc["account_id"],
                            "ts_ms": doc["ts_ms"],
                            "amount": doc["amount"],
                        },
                    )
                )
    return want


def assert_same(got, want, where):
    for name in NAMES:
        g, w = got[name], want[name]
        if w is None:
            assert g is None or math.isnan(g), f"{where} {name}: {g} != None"
        else:
            assert g == pytest.approx(w, rel=1e-9, abs=1e-9), f"{where} {name}"


@given(
    st.lists(ITEM, min_size=1, max_size=60),
    st.lists(st.integers(0, 80), max_size=8),
    st.sets(st.integers(0, 8), max_size=3),
)
@settings(max_examples=150, deadline=None)
def test_payee_and_label_features_equal_the_brute_force_reference(items, cuts, restarts):
    records = build(items)
    got, bounds = run_pipeline(records, cuts, restarts)
    want = reference(records, bounds)
    assert got.keys() == want.keys()
    for tx_id in want:
        assert_same(got[tx_id], want[tx_id], tx_id)


def test_a_label_delivered_early_is_not_seen_before_it_is_known_not_even_after_a_restart():
    # the label of t0 is known 3 days after it, but the stream delivers it at once
    records = build(
        [
            ("tx", "a0", "m0", 0, 40.0, "card"),
            ("label", 0, 3 * DAY_MS, 1, True),
            ("tx", "a1", "m0", 2 * HOUR_MS, 40.0, "card"),  # 2 h later: not known yet
            ("tx", "a0", "m0", DAY_MS, 40.0, "card"),  # 26 h later: not known yet
            ("tx", "a2", "m0", 2 * DAY_MS, 40.0, "card"),  # 3 d 2 h later: known
        ]
    )
    for restarts in (set(), {0, 1, 2}):
        got, bounds = run_pipeline(records, [1, 2, 3, 4], restarts)
        assert [got[f"t{i}"]["payee_frauds_30d"] for i in range(4)] == [0, 0, 0, 1]
        assert [got[f"t{i}"]["account_frauds_30d"] for i in (0, 2)] == [0, 0]
        assert got["t3"]["payee_fraud_risk_30d"] == 1.0
        assert got["t1"]["payee_count_24h"] == 1  # t0's payment, folded a batch later
        want = reference(records, bounds)
        for tx_id, feats in want.items():
            assert_same(got[tx_id], feats, tx_id)


def test_a_record_on_the_labels_topic_that_is_no_label_is_dead_lettered():
    pipeline = RiskPipeline()
    bad = [
        b"{",
        b'{"tx_id": "t", "label": 2, "ts_ms": 1}',
        b'{"tx_id": "t", "label": 1, "ts_ms": 1, "account_id": 7}',
    ]
    records = [RawRecord(pipeline.labels_topic, 0, i, None, v) for i, v in enumerate(bad)]
    result = pipeline.process_local(records, {})
    assert len(result.dead) == 3
    assert all(b"not a label" in d for _k, d in result.dead)
    assert [json.loads(d)["reason"] for _k, d in result.dead] == ["label"] * 3
    assert pipeline.counters["dlq:label"] == 3


def test_the_side_features_are_in_the_spec_as_the_reference_names_them():
    ops = {n for n, op in FEATURES.items() if isinstance(op, Payee)}
    assert ops <= set(NAMES)
    assert {"account_frauds_30d", "payee_fraud_risk_7d", "payee_count_30d"} <= set(NAMES)


def test_a_busy_counterparty_keeps_its_newest_payers_and_a_bounded_number_of_them():
    from vigil.streams.features.library import HOUR_MS, MAX_PAYERS, PAYERS_SLACK
    from vigil.streams.features.payee import P_NEW, PayeeLog

    log, t0 = PayeeLog(), 1_767_225_600_000
    n = 3 * MAX_PAYERS
    for i in range(n):  # payer i pays at minute i (one fold each, as batches come)
        log.fold_payments([("m", float(i + 1), t0 + i * 60_000, 10.0, 0, i)])
        assert len(log.payers) <= MAX_PAYERS + PAYERS_SLACK
        newest = range(max(0, i + 1 - MAX_PAYERS), i + 1)
        assert all(log.paid_before(float(j + 1)) for j in newest[:: max(1, len(newest) // 50)])
    assert not log.paid_before(1.0)  # the first payer was forgotten long ago...
    before = sum(r[P_NEW] for r in log.rows)
    log.fold_payments([("m", 1.0, t0 + n * 60_000, 10.0, 0, n)])
    assert sum(r[P_NEW] for r in log.rows) == before + 1  # ...so it counts as new again
    assert log.rows[-1][0] == (t0 + n * 60_000) // HOUR_MS


def test_the_fraud_episode_features_tell_its_first_label_from_its_latest():
    # by hand: fraud labels known at hours 10 and 40 (a legit one at 60); at hour 100 the
    # 30-day window starts at hour -620, so both frauds are in it
    import numpy as np

    from vigil.streams.features.payee import LabelEntry, PayeeLog
    from vigil.streams.features.payee import payee_features as engine_payee_features

    base_hour = T0 // HOUR_MS
    log = PayeeLog()
    log.fold_labels(
        [
            LabelEntry("m0", "c", (base_hour + h) * HOUR_MS + 5, fraud, 0, i)
            for i, (h, fraud) in enumerate(((10, 1), (40, 1), (60, 0)))
        ]
    )
    ops = {n: op for n, op in FEATURES.items() if isinstance(op, Payee)}
    ts = np.array([(base_hour + 100) * HOUR_MS + 7, (base_hour + 750) * HOUR_MS])
    got = engine_payee_features(ops, ["m0", "m0"], np.array([1.0, 1.0]), ts, {"m0": log})
    assert got["payee_fraud_first_hours_30d"][0] == 90
    assert got["payee_fraud_last_hours_30d"][0] == 60
    # at hour 750 the window starts at hour 30: the hour-10 label has left it, not hour 40
    assert got["payee_fraud_first_hours_30d"][1] == 710
    assert got["payee_fraud_last_hours_30d"][1] == 710


def test_big_and_small_counterparties_read_together_get_their_own_windows():
    # logs above and below KEEP_ARRAY_ROWS, interleaved in one batch, read three times:
    # arrays made, then kept, then one made again after a fold; each event's window sums
    # against plain loops over its own counterparty's buckets
    import numpy as np

    from vigil.streams.features.payee import (
        KEEP_ARRAY_ROWS,
        P_COUNT,
        P_SUM,
        PayeeLog,
    )
    from vigil.streams.features.payee import payee_features as engine_payee_features

    base = T0 // HOUR_MS
    sizes = {"m0": 3, "m1": KEEP_ARRAY_ROWS + 5, "m2": 1, "m3": 2 * KEEP_ARRAY_ROWS, "m4": 0}
    logs = {}
    for k, (cp, n) in enumerate(sizes.items()):
        log = PayeeLog()
        log.fold_payments(
            [(cp, 1.0, (base + 2 * h) * HOUR_MS, 10.0 + h + k, 0, h) for h in range(n)]
        )
        logs[cp] = log
    ops = {
        n: op for n, op in FEATURES.items() if isinstance(op, Payee) and op.kind in ("count", "sum")
    }
    payees = ["m1", "m0", "m3", "m2", "m1", "m4", "m3", "m0"]
    ts = np.array([(base + 2 * KEEP_ARRAY_ROWS + 30 * i) * HOUR_MS + 9 for i in range(8)])

    def check():
        got = engine_payee_features(ops, payees, np.ones(len(payees)), ts, logs)
        for name, op in ops.items():
            col, w = (P_COUNT if op.kind == "count" else P_SUM), op.window_ms // HOUR_MS
            for i, cp in enumerate(payees):
                hour = int(ts[i]) // HOUR_MS
                want = sum(r[col] for r in logs[cp].rows if hour - w < r[0] <= hour)
                assert got[name][i] == pytest.approx(want), (name, i, cp)

    check()
    assert logs["m1"].kept() is not None and logs["m0"].kept() is None
    check()  # the big ones from their kept arrays
    logs["m1"].fold_payments([("m1", 2.0, (base + 2 * KEEP_ARRAY_ROWS + 100) * HOUR_MS, 5.0, 1, 0)])
    assert logs["m1"].kept() is None  # the fold replaced its buckets
    check()
