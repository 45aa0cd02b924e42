"""The Fraud Detection Handbook benchmark: its metrics against brute-force references, its
protocol's folds and test-set rule, and the data read as the contract (on a slice of the
shared data; skipped when it is absent)."""

import datetime as dt
import itertools

import numpy as np
import orjson
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from sklearn.metrics import roc_auc_score

from vigil.models.metrics import card_precision_at_k, roc_auc
from vigil.models.risk.handbook import Fold, folds, known_compromised_removed, label_visible
from vigil.streams.schemas import Label, Transaction
from vigil.streams.sources.handbook import (
    Handbook,
    default_data_dir,
    merged_replay,
    read_handbook,
)

HANDBOOK = default_data_dir() / "fraud-handbook"
needs_data = pytest.mark.skipif(
    not HANDBOOK.is_dir(),
    reason=f"the Fraud Detection Handbook data is not at {HANDBOOK} "
    "(set VIGIL_SHARED_DATA to the shared data folder)",
)


def brute_auc(y, s) -> float:
    pos = [b for a, b in zip(y, s, strict=True) if a == 1]
    neg = [b for a, b in zip(y, s, strict=True) if a == 0]
    wins = sum(1.0 if p > n else 0.5 if p == n else 0.0 for p, n in itertools.product(pos, neg))
    return wins / (len(pos) * len(neg))


@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from([0.0, 0.2, 0.2, 0.5, 0.7, 1.0])),
        min_size=2,
        max_size=60,
    )
)
@settings(max_examples=200, deadline=None)
def test_auc_roc_is_the_share_of_positive_negative_pairs_ranked_right(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs])
    if y.min() == y.max():
        assert np.isnan(roc_auc(y, s))
        return
    assert roc_auc(y, s) == pytest.approx(brute_auc(y, s), abs=1e-12)
    assert roc_auc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def brute_cp(days, cards, labels, scores, k):
    """The handbook's card_precision_top_k, step by step on plain lists."""
    caught, per_day = [], []
    for day in sorted(set(days)):
        rows = [
            (c, s, y)
            for d, c, s, y in zip(days, cards, scores, labels, strict=True)
            if d == day and c not in caught
        ]
        grouped = {}
        for c, s, y in rows:
            best = grouped.get(c)
            grouped[c] = (s, y) if best is None else (max(best[0], s), max(best[1], y))
        ranked = sorted(grouped, key=lambda c: (-grouped[c][0], c))[:k]
        found = [c for c in ranked if grouped[c][1] == 1]
        per_day.append(len(found) / k)
        caught.extend(found)
    return per_day


@given(
    st.lists(
        st.tuples(
            st.integers(0, 3),  # day
            st.integers(0, 12),  # card
            st.integers(0, 1),  # label
            st.sampled_from([0.1, 0.3, 0.3, 0.6, 0.9]),
        ),
        min_size=1,
        max_size=80,
    ),
    st.integers(1, 5),
)
@settings(max_examples=200, deadline=None)
def test_card_precision_matches_the_handbooks_procedure(rows, k):
    days, cards, labels, scores = (np.array(c) for c in zip(*rows, strict=True))
    got = card_precision_at_k(days, cards, labels, scores, k)
    want = brute_cp(days.tolist(), cards.tolist(), labels.tolist(), scores.tolist(), k)
    assert got["per_day"] == pytest.approx(want)
    assert got["mean"] == pytest.approx(np.mean(want))


def test_card_precision_by_hand():
    # day 0: card 1 (fraud, 0.9) and card 2 (0.8, genuine) on top; k=2 -> 1/2.
    # day 1: card 1 was caught and is out; card 3 fraud at 0.7, card 2 at 0.1 -> 1/2.
    days = np.array([0, 0, 0, 1, 1, 1])
    cards = np.array([1, 2, 1, 1, 3, 2])
    labels = np.array([1, 0, 0, 1, 1, 0])
    scores = np.array([0.9, 0.8, 0.2, 0.99, 0.7, 0.1])
    got = card_precision_at_k(days, cards, labels, scores, 2)
    assert got["per_day"] == [0.5, 0.5]
    assert got["compromised_per_day"] == [1, 1]


def test_the_protocols_folds_are_the_handbooks():
    (ch3,) = folds("ch3")
    assert ch3.describe() == {"train": "2018-07-25..2018-07-31", "test": "2018-08-08..2018-08-14"}
    ch5 = [f.describe()["test"] for f in folds("ch5")]
    assert ch5 == [
        "2018-08-08..2018-08-14",
        "2018-08-15..2018-08-21",
        "2018-08-22..2018-08-28",
        "2018-08-29..2018-09-04",
    ]
    # the handbook's model selection: training from 2018-07-11 back, one fold a week
    valid = [f.describe() for f in folds("ch5-valid")]
    assert [v["train"] for v in valid] == [
        "2018-06-20..2018-06-26",
        "2018-06-27..2018-07-03",
        "2018-07-04..2018-07-10",
        "2018-07-11..2018-07-17",
    ]
    assert valid[-1]["test"] == "2018-07-25..2018-07-31"


@given(
    st.lists(
        # whole days apart, so the 7- and 37-day edges are hit often
        st.tuples(st.integers(0, 1), st.integers(0, 60).map(lambda d: 24 * d), st.integers(0, 3)),
        min_size=1,
        max_size=80,
    )
)
@example([(0, 0, 2), (0, 24 * 7, 2), (0, 24 * 37, 2), (0, 24 * 38, 2), (1, 24 * 7, 2)])
@example([(0, 0, 2), (0, 24 * 6, 2), (1, 24 * 7, 0), (0, 24 * 7 + 1, 3)])
@settings(max_examples=200, deadline=None)
def test_a_compromised_terminal_shows_only_once_an_earlier_fraud_of_it_is_known(rows):
    # reference: plain loops over (terminal, hour, scenario); scenario 0 is genuine
    rows = sorted(rows, key=lambda r: r[1])
    hour = 3_600_000
    hb = Handbook(
        tx=np.arange(len(rows)),
        ts_ms=np.array([h * hour for _t, h, _s in rows], dtype=np.int64),
        customer=np.zeros(len(rows), dtype=np.int64),
        terminal=np.array([t for t, _h, _s in rows]),
        amount=np.ones(len(rows)),
        fraud=np.array([int(s > 0) for _t, _h, s in rows]),
        scenario=np.array([s for _t, _h, s in rows]),
    )
    got = label_visible(hb, np.arange(len(rows)))
    for i, (t, h, s) in enumerate(rows):
        known = any(tt == t and ss == 2 and 7 * 24 <= h - hh <= 37 * 24 for tt, hh, ss in rows)
        assert got[i] == (s in (1, 3) or (s == 2 and known)), rows[i]


@given(
    st.lists(
        st.tuples(st.integers(0, 20), st.integers(0, 8), st.integers(0, 1)),
        min_size=1,
        max_size=120,
    )
)
@settings(max_examples=200, deadline=None)
def test_known_compromised_cards_leave_the_test_days(rows):
    fold = Fold(dt.date(2018, 7, 25))
    t0 = fold.train_start.toordinal()
    days = np.array([t0 + r[0] for r in rows])
    customers = np.array([r[1] for r in rows])
    fraud = np.array([r[2] for r in rows])
    keep = known_compromised_removed(fold, days, customers, fraud)
    for i, (day, customer, _f) in enumerate(rows):
        if not 14 <= day < 21:
            assert not keep[i]  # not a test day
            continue
        d = day - 14
        # known by test day d: frauds of the training week and of days 6 .. 6 + d
        known = any(
            c == customer and f == 1 and (0 <= dd < 7 or 6 <= dd <= 6 + d) for dd, c, f in rows
        )
        assert keep[i] == (not known), (day, customer)


@needs_data
def test_a_day_of_the_handbook_reads_as_valid_contract_records():
    hb = read_handbook(default_data_dir(), dt.date(2018, 4, 1), dt.date(2018, 4, 2))
    assert 9000 < len(hb) < 10_500  # about 9,500 transactions a day
    assert (np.diff(hb.ts_ms) >= 0).all()
    start = int(dt.datetime(2018, 4, 1, tzinfo=dt.UTC).timestamp() * 1000)
    assert start <= hb.ts_ms.min() and hb.ts_ms.max() < start + 86_400_000
    delay = 7 * 86_400_000
    first = orjson.loads(hb.transaction(0))
    assert first == {
        "tx_id": "hb-0",
        "ts_ms": start + 31_000,  # 2018-04-01 00:00:31
        "account_id": "C596",
        "counterparty_id": "T3156",
        "amount": 57.16,
        "currency": "EUR",
        "channel": "card",
        "country": "BE",
    }
    valid = [Transaction.model_validate_json(hb.transaction(i)) for i in range(200)]
    assert all(v.amount > 0 for v in valid)
    fraud = int(np.flatnonzero(hb.fraud)[0])
    label = Label.model_validate_json(hb.label(fraud, delay))
    assert label.label == 1 and label.ts_ms == hb.ts_ms[fraud] + delay
    assert label.typology in {"amount_over_220", "compromised_terminal", "compromised_customer"}
    # the replay publishes each label when it becomes known, after the transactions before
    kinds = [(kind, i) for kind, i, _v in merged_replay(hb, 3_600_000)]
    seen_tx: set[int] = set()
    for kind, i in kinds:
        if kind == "transactions":
            seen_tx.add(i)
        else:
            assert i in seen_tx
            later = [j for k, j in kinds if k == "transactions" and j not in seen_tx]
            assert all(hb.ts_ms[j] >= hb.ts_ms[i] + 3_600_000 for j in later[:5])
    assert sum(k == "labels" for k, _i in kinds) < len(hb)  # the last hour's are not known yet


def test_missing_handbook_data_is_a_clear_error(tmp_path):
    from vigil.errors import DataError

    with pytest.raises(DataError, match="no Fraud Detection Handbook data"):
        read_handbook(tmp_path)
    bad = tmp_path / "transactions.csv.gz"
    bad.write_bytes(b"not gzip")
    with pytest.raises(DataError, match="cannot read"):
        read_handbook(tmp_path)


def test_a_handbook_file_out_of_time_order_or_with_a_bad_row_is_a_clear_error(tmp_path):
    import gzip

    from vigil.errors import DataError
    from vigil.streams.sources.handbook import COLUMNS

    def write(*rows: str):
        with gzip.open(tmp_path / "transactions.csv.gz", "wt") as fh:
            fh.write(",".join(COLUMNS) + "\n" + "".join(r + "\n" for r in rows))

    day1 = "0,2018-04-01 00:00:31,596,3156,57.16,0,0"
    day2 = "1,2018-04-02 00:00:01,597,3157,12.00,1,1"
    write(day1, day2)
    got = read_handbook(tmp_path, dt.date(2018, 4, 2), dt.date(2018, 4, 3))
    assert got.customer.tolist() == [597] and got.fraud.tolist() == [1]
    write(day2, day1)
    with pytest.raises(DataError, match=r"transactions.csv.gz:3: .* not in time order"):
        read_handbook(tmp_path, dt.date(2018, 4, 2), dt.date(2018, 4, 3))
    write(day1, "2,2018-04-01 00:01:00,x,3157,12.00,0,0")
    with pytest.raises(DataError, match=r"transactions.csv.gz:3: not a handbook row"):
        read_handbook(tmp_path)
