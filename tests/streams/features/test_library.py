"""The feature library (vectorised engine) against a brute-force reference (hypothesis):
several accounts interleaved, random micro-batch splits, events out of order within the
grace, and state carried across batches through JSON snapshots."""

import json
import math

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference import (
    account_label_features,
    inflow_features,
    library_features,
    payee_features,
)
from vigil.streams.features import FeatureError
from vigil.streams.features.engine import AccountLog, FeatureEngine, event_rows
from vigil.streams.features.library import (
    CHANNELS,
    DAY_MS,
    FEATURE_SPEC,
    FEATURES,
    GRACE_MS,
    HOUR_MS,
    FeatureSpec,
)
from vigil.streams.schemas import Transaction

T0 = 1_767_225_600_000  # 2026-01-01, a Thursday
COUNTRIES = ("DE", "DE", "FR", "KY", "IR")
MCCS = (None, "5411", "7995", "0000")
AMOUNTS = st.one_of(
    st.floats(0.01, 2_000_000, allow_nan=False),
    st.sampled_from([100.0, 500.0, 9500.0, 9999.99, 10_000.0, 999.99]),
)
GAPS = st.one_of(
    st.integers(0, 10 * 60_000),  # minutes apart
    st.integers(0, 30 * HOUR_MS),  # hours apart
    st.integers(0, 9 * DAY_MS),  # beyond the week: windows empty out, the log is pruned
    st.integers(0, 35 * DAY_MS),  # beyond the month: the day buckets are pruned too
    st.integers(-GRACE_MS + 1, 0),  # late, within the grace
)
EVENT = st.tuples(
    st.integers(0, 2),  # account
    GAPS,
    AMOUNTS,
    st.integers(0, 4),  # counterparty
    st.one_of(st.none(), st.integers(0, 2)),  # device
    st.sampled_from(COUNTRIES),
    st.sampled_from(CHANNELS),
    st.sampled_from(MCCS),
)


def make_stream(events) -> list[dict]:
    """Interleaved accounts; each account's time moves by its own gaps, never later than
    the grace behind its latest event."""
    clock: dict[int, tuple[int, int]] = {}
    out = []
    for i, (acct, gap, amount, cp, dev, country, channel, mcc) in enumerate(events):
        ts, latest = clock.get(acct, (T0 + acct * 7_777_777, T0 + acct * 7_777_777))
        ts = max(ts + gap, latest - GRACE_MS + 1)
        clock[acct] = (ts, max(latest, ts))
        out.append(
            {
                "tx_id": f"t{i}",
                "ts_ms": ts,
                "account_id": f"a{acct}",
                "counterparty_id": f"c{cp}",
                "amount": amount,
                "currency": "EUR",
                "channel": channel,
                "country": country,
                "device_id": None if dev is None else f"d{dev}",
                "merchant_category": mcc,
            }
        )
    return out


def run_engine(stream: list[dict], cuts: list[int], via_json: bool) -> list[dict]:
    engine = FeatureEngine()
    logs: dict[str, AccountLog] = {}
    got: list[dict] = []
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    for lo, hi in zip(bounds, bounds[1:], strict=False):
        batch = [Transaction(**t) for t in stream[lo:hi]]
        values = engine.compute([t.account_id for t in batch], event_rows(batch), logs)
        got += [dict(zip(FEATURE_SPEC.names, row, strict=True)) for row in values]
        if via_json:  # what a faust table does between batches
            logs = {
                a: AccountLog.from_snapshot(json.loads(orjson.dumps(log.snapshot())))
                for a, log in logs.items()
            }
    return got


def reference(stream: list[dict]) -> list[dict]:
    per_account: dict[str, list[int]] = {}
    for i, tx in enumerate(stream):
        per_account.setdefault(tx["account_id"], []).append(i)
    want: list[dict] = [{}] * len(stream)
    for idx in per_account.values():
        for i, feats in zip(idx, library_features([stream[i] for i in idx]), strict=True):
            # nothing comes in; no counterparty state is passed in (its features are NaN)
            # and no label is known
            want[i] = {
                **feats,
                **inflow_features(stream[i], [], feats),
                **payee_features(stream[i], None, feats),
                **account_label_features(stream[i], []),
            }
    return want


def assert_same(got: dict, want: dict, where: str) -> None:
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        if w is None:
            assert math.isnan(g), f"{where} {name}: {g} != None"
        else:
            assert g == pytest.approx(w, rel=1e-7, abs=1e-6), f"{where} {name}"


@given(
    st.lists(EVENT, min_size=1, max_size=50),
    st.lists(st.integers(0, 60), max_size=6),
    st.booleans(),
)
@settings(max_examples=250, deadline=None)
def test_every_feature_equals_the_brute_force_reference(events, cuts, via_json):
    stream = make_stream(events)
    got = run_engine(stream, cuts, via_json)
    for i, (g, w) in enumerate(zip(got, reference(stream), strict=True)):
        assert_same(g, w, f"event {i} ({stream[i]['account_id']} @ {stream[i]['ts_ms']})")


def test_the_library_has_over_fifty_named_features_in_a_versioned_spec():
    assert len(FEATURE_SPEC.names) >= 50
    assert FEATURE_SPEC.names == tuple(FEATURES)
    assert len(set(FEATURE_SPEC.names)) == len(FEATURE_SPEC.names)
    assert FEATURE_SPEC.version and len(FEATURE_SPEC.digest) == 16


def test_a_spec_naming_an_unknown_feature_is_refused():
    bad = FeatureSpec("x", ("count_1h", "no_such_feature"), "0" * 16)
    with pytest.raises(FeatureError, match="no_such_feature"):
        FeatureEngine(bad)


def test_a_snapshot_of_the_wrong_shape_is_refused():
    with pytest.raises(FeatureError):
        AccountLog.from_snapshot({"rows": "AAAA", "s": [None] * 7})
    with pytest.raises(FeatureError):
        AccountLog.from_snapshot({"rows": "", "s": [1.0]})


def test_a_late_event_does_not_see_events_that_arrived_after_it_in_the_same_batch():
    # The third event arrives last but lies inside the second one's 1 h window by time: the
    # second must not count it (all three in one batch).
    stream = make_stream(
        [
            (0, 0, 10.0, 0, None, "DE", "card", None),
            (0, HOUR_MS, 20.0, 1, None, "DE", "card", None),
            (0, -30 * 60_000, 40.0, 2, None, "DE", "card", None),
        ]
    )
    got = run_engine(stream, [], via_json=False)
    assert [g["sum_1h"] for g in got] == [10.0, 20.0, 50.0]
    assert [g["count_1h"] for g in got] == [1.0, 1.0, 2.0]


def test_an_accounts_memory_is_bounded_by_its_horizon_and_the_months_day_buckets():
    from vigil.streams.features.library import HORIZON_MS, MONTH_DAYS_KEPT

    stream = make_stream([(0, 6 * HOUR_MS, 10.0, 0, None, "DE", "card", None)] * 400)  # 100 d
    engine, logs = FeatureEngine(), {}
    for tx in stream:
        batch = [Transaction(**tx)]
        row = engine.compute(["a0"], event_rows(batch), logs)[0]
    log = logs["a0"]
    assert len(log.days) <= MONTH_DAYS_KEPT
    assert len(log.rows) <= (HORIZON_MS + GRACE_MS) // (6 * HOUR_MS) + 1
    feats = dict(zip(FEATURE_SPEC.names, row, strict=True))
    assert feats["count_30d"] == 4 * 29 + 1 + (stream[-1]["ts_ms"] % DAY_MS) // (6 * HOUR_MS)
