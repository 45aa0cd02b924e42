"""Seed features against a brute-force reference over random streams (hypothesis)."""

import json
import random

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from streams.features import GRACE_MS, HOUR_MS, EventLog, FeatureError, FeatureSet, WindowSum
from streams.schemas import Transaction
from tests.reference import account_features

T0 = 1_767_225_600_000


def make_history(steps: list[tuple[int, float, int]]) -> list[dict]:
    """steps: (ms since previous, amount, counterparty index); negative gaps within the
    grace make the stream out of order."""
    ts, out = T0, []
    latest = T0
    for i, (gap, amount, cp) in enumerate(steps):
        ts = max(ts + gap, latest - GRACE_MS + 1)  # never later than the grace
        latest = max(latest, ts)
        out.append(
            {
                "tx_id": f"t{i}",
                "ts_ms": ts,
                "account_id": "a",
                "counterparty_id": f"c{cp}",
                "amount": amount,
                "currency": "EUR",
                "channel": "card",
                "country": "DE",
            }
        )
    return out


gaps = st.one_of(
    st.integers(0, 10 * 60_000),  # minutes apart
    st.integers(0, 30 * HOUR_MS),  # hours apart: windows empty out
    st.integers(-GRACE_MS + 1, 0),  # late, within the grace
)
steps = st.lists(
    st.tuples(gaps, st.floats(0.01, 2_000_000, allow_nan=False), st.integers(0, 6)),
    min_size=1,
    max_size=60,
)


@given(steps)
@settings(max_examples=150, deadline=None)
def test_features_equal_brute_force_reference(s):
    history = make_history(s)
    fs = FeatureSet()
    got = [fs.update(Transaction(**tx)) for tx in history]
    want = account_features(history)
    for g, w in zip(got, want, strict=True):
        assert g.keys() == w.keys()
        for name in w:
            if w[name] is None:
                assert g[name] is None, name
            else:
                assert g[name] == pytest.approx(w[name], rel=1e-12, abs=1e-6), name


@given(steps, st.integers(0, 59))
@settings(max_examples=80, deadline=None)
def test_snapshot_restore_midway_gives_the_same_features(s, cut):
    history = make_history(s)
    cut = min(cut, len(history))
    straight = FeatureSet()
    expected = [straight.update(Transaction(**tx)) for tx in history]
    first = FeatureSet()
    got = [first.update(Transaction(**tx)) for tx in history[:cut]]
    # through JSON, as the faust table's changelog carries it
    resumed = FeatureSet.from_snapshot(json.loads(json.dumps(first.snapshot())))
    got += [resumed.update(Transaction(**tx)) for tx in history[cut:]]
    assert got == expected


def test_state_is_bounded_by_horizon_plus_grace():
    fs = FeatureSet()
    rng = random.Random(1)
    ts = T0
    for i in range(2000):
        ts += rng.randrange(60_000, 600_000)
        fs.update(
            Transaction(
                tx_id=str(i),
                ts_ms=ts,
                account_id="a",
                counterparty_id="c",
                amount=5.0,
                currency="EUR",
                channel="card",
                country="DE",
            )
        )
    assert min(fs.log.ts) > ts - 25 * HOUR_MS
    assert len(fs.log.ts) < 25 * 60 // 1 + 1


def test_bad_snapshots_and_windows_are_rejected_with_a_reason():
    with pytest.raises(FeatureError, match="bad snapshot"):
        FeatureSet.from_snapshot({"log": {}})
    log = EventLog(("amount",), HOUR_MS)
    with pytest.raises(FeatureError, match="columns differ"):
        log.restore({"ts": [1, 2], "wm": 2, "amount": [1.0]})
    with pytest.raises(FeatureError, match="exceeds the log horizon"):
        WindowSum("amount", 2 * HOUR_MS).value(log, T0)
