"""Money coming in: the pipeline's repartitioned inflows (fan-in, pass-through, round trips,
scatter-gather) against a brute-force reference of the whole micro-batch run (hypothesis),
plus exactly-once folding and bad inflow records."""

import base64

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference import features_by_batch, wire
from vigil.streams.features.inflows import InflowLog, InflowRecord, decode_inflows, encode_inflows
from vigil.streams.features.library import CHANNELS, DAY_MS, FEATURE_SPEC, GRACE_MS
from vigil.streams.partitioning import partition_for
from vigil.streams.pipeline import RULE_NAMES, RiskPipeline
from vigil.streams.rules import default_ruleset
from vigil.streams.schemas import RawRecord

T0 = 1_767_225_600_000
ACCOUNTS = 5
EVENT = st.tuples(
    st.integers(0, ACCOUNTS - 1),  # payer
    st.integers(0, ACCOUNTS + 1),  # payee: another account, or an outsider (>= ACCOUNTS)
    st.one_of(
        st.integers(0, 20 * 60_000), st.integers(0, 2 * DAY_MS), st.integers(-GRACE_MS + 1, 0)
    ),
    st.floats(1, 50_000, allow_nan=False),
    st.sampled_from(CHANNELS),
)


def make_stream(events) -> list[dict]:
    """Accounts paying each other (and outsiders) on one clock that goes back at most the
    grace behind the latest event."""
    clock = latest = T0
    out = []
    for i, (payer, payee, gap, amount, channel) in enumerate(events):
        clock = max(clock + gap, latest - GRACE_MS + 1)
        latest = max(latest, clock)
        out.append(
            {
                "tx_id": f"t{i}",
                "ts_ms": clock,
                "account_id": f"a{payer}",
                "counterparty_id": f"a{payee}" if payee < ACCOUNTS else f"x{payee}",
                "amount": round(amount, 2),
                "currency": "EUR",
                "channel": channel,
                "country": "DE",
                "device_id": None,
                "merchant_category": None,
            }
        )
    return out


def run(stream: list[dict], cuts: list[int]) -> tuple[list[list[dict]], dict[str, dict]]:
    bounds = sorted({0, len(stream), *(c % (len(stream) + 1) for c in cuts)})
    batches = [stream[lo:hi] for lo, hi in zip(bounds, bounds[1:], strict=False)]
    pipeline = RiskPipeline(default_ruleset(RULE_NAMES))
    store: dict = {}
    got = {}
    offset = 0
    for batch in batches:
        records = []
        for tx in batch:
            records.append(RawRecord("vigil.transactions", 0, offset, None, orjson.dumps(tx)))
            offset += 1
        result = pipeline.process_local(records, store)
        assert not result.dead
        for _, value in result.scores:
            score = orjson.loads(value)
            got[score["tx_id"]] = FEATURE_SPEC.as_dict(score["features"])
    return batches, got


@given(st.lists(EVENT, min_size=1, max_size=40), st.lists(st.integers(0, 50), max_size=5))
@settings(max_examples=150, deadline=None)
def test_inflow_features_equal_the_brute_force_reference(events, cuts):
    stream = make_stream(events)
    batches, got = run(stream, cuts)
    want = features_by_batch(batches)
    for tx in stream:
        g, w = got[tx["tx_id"]], want[tx["tx_id"]]
        for name, value in w.items():
            where = f"{tx['tx_id']} {name}"
            if value is None:
                assert g[name] is None, f"{where}: {g[name]} != None"
            else:
                assert g[name] == pytest.approx(value, rel=1e-7, abs=1e-6), where


def payments(*moves: tuple[str, str, int, float]) -> list[dict]:
    """Wires (payer, payee, minutes after T0, amount) in this order."""
    return [wire(f"t{i}", *move) for i, move in enumerate(moves)]


def scenario() -> list[dict]:
    """Three payers fan in to c (one of them twice), c pays most of it on, then pays one
    payer back."""
    return payments(
        ("p1", "c", 0, 1000.0),
        ("p2", "c", 10, 2000.0),
        ("p3", "c", 20, 3000.0),
        ("p1", "c", 30, 500.0),
        ("c", "out", 90, 6000.0),
        ("c", "p2", 120, 100.0),
    )


def test_fan_in_pass_through_and_round_trip_of_a_known_case():
    txs = scenario()
    _, got = run(txs, cuts=[1, 2, 3, 4, 5])  # one transaction per batch
    out, back = got["t4"], got["t5"]
    assert out["distinct_payers_24h"] == 3.0
    assert out["inflow_count_24h"] == 4.0 and out["inflow_sum_24h"] == 6500.0
    assert out["inflow_max_24h"] == 3000.0
    assert out["pass_through_24h"] == pytest.approx(6000 / 6500)
    assert out["time_since_inflow_ms"] == 60 * 60_000
    assert out["round_trip_7d"] == 0.0
    assert back["round_trip_7d"] == 1.0  # p2 paid c earlier: money goes back
    assert got["t0"]["inflow_count_24h"] == 0.0 and got["t0"]["pass_through_24h"] is None


def test_scatter_gather_payers_share_their_latest_source_of_funds():
    txs = payments(
        ("z", "m1", 0, 50.0),  # m1's earlier, unrelated money
        ("s", "m1", 60, 4000.0),  # s scatters to three mules...
        ("s", "m2", 61, 4000.0),
        ("s", "m3", 62, 4000.0),
        ("m1", "g", 120, 3800.0),  # ...which gather at g
        ("m2", "g", 121, 3800.0),
        ("m3", "g", 122, 3800.0),
        ("g", "out", 200, 11000.0),
    )
    _, got = run(txs, cuts=range(1, len(txs)))
    assert got["t7"]["shared_source_payers_7d"] == 3.0  # all three funded last by s
    assert got["t7"]["distinct_payers_24h"] == 3.0
    assert got["t4"]["shared_source_payers_7d"] == 0.0  # m1 received nothing funded


def test_inflows_of_a_batch_are_seen_from_the_next_batch_on():
    txs = scenario()
    _, together = run(txs, cuts=[])  # all in one batch: c has received nothing yet
    assert together["t4"]["inflow_count_24h"] == 0.0
    _, split = run(txs, cuts=[4])
    assert split["t4"]["inflow_count_24h"] == 4.0


def record(payer: float, offset: int, src_partition: int = 0, ts: int = T0) -> InflowRecord:
    return InflowRecord("c", payer, ts, 100.0, (0.0,) * 4, src_partition, offset, f"t{offset}")


def test_an_inflow_is_folded_once_however_often_it_is_delivered():
    log = InflowLog()
    assert log.fold([record(1.0, 5), record(2.0, 6, src_partition=1)]) == 2
    # redelivered, and re-published after a restart (same source offsets): skipped
    assert log.fold([record(1.0, 5), record(2.0, 6, src_partition=1), record(1.0, 4)]) == 0
    assert log.fold([record(3.0, 7)]) == 1
    assert len(log) == 3
    again = InflowLog.from_snapshot(orjson.loads(orjson.dumps(log.snapshot())))
    assert again.fold([record(3.0, 7)]) == 0
    assert (again.rows == log.rows).all()


def test_old_inflows_fall_out_of_the_log():
    log = InflowLog()
    log.fold([record(1.0, 0, ts=T0)])
    log.fold([record(2.0, 1, ts=T0 + 9 * DAY_MS)])
    assert len(log) == 1 and log.rows[0, 2] == 2.0


GOOD = ["c", "t1", 7, T0, 5.0, 0, 0, 1]


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (b"not json", "inflow batch malformed"),
        (b'{"v": 4, "inflows": []}', "unknown inflow batch version"),
        (orjson.dumps({"v": 3, "inflows": [[*GOOD, [1, 2, 3, 4]]]}), "a path of 4"),
        (orjson.dumps({"v": 3, "inflows": [[*GOOD, [1], [2]]]}), "10 fields"),
        (orjson.dumps({"v": 1, "inflows": [GOOD, GOOD[:5]]}), "not enough values"),
        (orjson.dumps({"v": 1, "inflows": [GOOD[:4] + [-5.0] + GOOD[5:]]}), "inflow 0: payee"),
        (orjson.dumps({"v": 1, "inflows": [[""] + GOOD[1:]]}), "inflow 0: payee"),
    ],
)
def test_a_bad_inflow_batch_goes_to_the_dead_letter_topic_whole(value, error):
    pipeline = RiskPipeline()
    rec = RawRecord(pipeline.inflow_topic, 2, 9, None, value)
    store: dict = {}
    result = pipeline.process([rec], store.get)
    assert len(result.dead) == 1
    letter = orjson.loads(result.dead[0][1])
    assert error in letter["error"] and letter["source_topic"] == pipeline.inflow_topic
    assert pipeline.counters["dlq"] == 1 and not result.scores
    assert pipeline.counters["inflows"] == 0 and "c" not in result.states  # nothing folded


def test_inflow_batches_round_trip():
    recs = [record(1.0, 5), record(2.0, 6, src_partition=3)]
    back = decode_inflows(encode_inflows(recs))
    assert [r.row() for r in back] == [r.row() for r in recs]


def test_only_transfers_to_another_account_are_republished_to_the_payees_partition():
    txs = scenario()
    txs[0]["channel"] = "card"
    txs[1]["counterparty_id"] = txs[1]["account_id"]
    pipeline = RiskPipeline(partitions=4)
    records = [
        RawRecord("vigil.transactions", 0, i, None, orjson.dumps(t)) for i, t in enumerate(txs)
    ]
    result = pipeline.process(records, {}.get)
    sent = {}
    for partition, value in result.inflows:
        for inflow in decode_inflows(value):
            assert partition == partition_for(inflow.payee.encode(), 4)
            sent[inflow.tx_id] = inflow
    assert sorted(sent) == ["t2", "t3", "t4", "t5"]
    assert [sent[t].payee for t in sorted(sent)] == ["c", "c", "out", "p2"]
    assert (sent["t2"].src_partition, sent["t2"].src_offset, sent["t2"].amount) == (0, 2, 3000.0)


def test_transactions_placed_by_another_partitioner_are_counted_and_logged(caplog):
    pipeline = RiskPipeline(partitions=4)
    tx = scenario()[0]
    key = tx["account_id"].encode()
    right = partition_for(key, 4)
    ok = RawRecord("vigil.transactions", right, 0, key, orjson.dumps(tx))
    pipeline.process([ok], {}.get)
    assert pipeline.counters["misrouted"] == 0
    wrong = RawRecord("vigil.transactions", (right + 1) % 4, 0, key, orjson.dumps(tx))
    pipeline.process([wrong], {}.get)
    assert pipeline.counters["misrouted"] == 1
    assert "murmur2_random" in caplog.text


@pytest.mark.parametrize(("size", "seen"), [(2, 2.0), (4, 4.0), (6, 6.0), (7, 0.0)])
def test_a_payment_that_closes_a_ring_counts_its_accounts(size, seen):
    """a0 -> a1 -> ... -> a0, one micro-batch per hop (an inflow is seen from the next batch
    on): the closing payment sees its payee on the path its money came along, up to five
    accounts back, so rings of 2 to 6 accounts show and a longer one does not."""
    ring = [wire(f"r{i}", f"a{i}", f"a{(i + 1) % size}", 60 * i, 500.0 - i) for i in range(size)]
    _, got = run(ring, list(range(1, size)))
    assert [got[f"r{i}"]["cycle_7d"] for i in range(size)] == [0.0] * (size - 1) + [seen]
    assert got[f"r{size - 1}"]["round_trip_7d"] == float(size == 2)


def test_a_path_is_carried_on_and_older_records_and_snapshots_still_read():
    v2 = decode_inflows(orjson.dumps({"v": 2, "inflows": [GOOD]}))[0]  # before the path
    assert (v2.source, v2.path) == (0.0, (0.0, 0.0, 0.0, 0.0))
    rec = InflowRecord("c", 7.0, T0, 5.0, (1.0, 2.0, 3.0, 4.0), 0, 1, "t1")
    assert decode_inflows(encode_inflows([rec]))[0].path == (1.0, 2.0, 3.0, 4.0)
    log = InflowLog()
    log.fold([rec])
    assert log.rows.tolist() == [[T0, 5.0, 7.0, 1.0, 2.0, 3.0, 4.0]]
    rows = np.array([[T0, 5.0, 7.0, 1.0]])
    old = {"rows": base64.b64encode(rows.tobytes()).decode(), "folded": {"0": 1}}
    assert InflowLog.from_snapshot(old).rows.tolist() == [[T0, 5.0, 7.0, 1.0, 0.0, 0.0, 0.0]]
    assert InflowLog.from_snapshot(log.snapshot()).rows.tolist() == log.rows.tolist()
