import json

from tests.reference import expected_decision, features_by_tx, reporting
from vigil.streams.schemas import RawRecord, decode_transactions
from vigil.streams.sources import MALFORMED_KINDS, GeneratorConfig, TransactionGenerator, read_jsonl


def test_same_seed_same_stream_and_event_time_order():
    a = TransactionGenerator(GeneratorConfig(seed=11)).take(3000)
    b = TransactionGenerator(GeneratorConfig(seed=11)).take(3000)
    assert [g.value for g in a] == [g.value for g in b]
    ts = [g.tx["ts_ms"] for g in a if g.tx]
    assert ts == sorted(ts)
    assert TransactionGenerator(GeneratorConfig(seed=12)).take(10)[0].value != a[0].value


def test_injected_cases_trigger_their_rules_and_normal_traffic_rarely_does():
    gen = TransactionGenerator(GeneratorConfig(seed=5, accounts=500)).take(30_000)
    txs = [g.tx for g in gen]
    feats = features_by_tx(txs)
    fired = {t["tx_id"]: expected_decision(t, feats[t["tx_id"]])[1] for t in txs}
    large = [g for g in gen if g.typology == "large_value"]
    assert large and all("large_transfer" in fired[g.tx["tx_id"]] for g in large)
    # every structuring burst (12-16 small payments) pushes its account over 10 in 24 h
    burst_accounts = {g.key for g in gen if g.typology == "structuring"}
    flagged = {
        t["account_id"]
        for t in txs
        if "frequent_small" in fired[t["tx_id"]]
        and t["tx_id"] in {g.tx["tx_id"] for g in gen if g.label}
    }
    assert burst_accounts == flagged
    # Normal payments of accounts that never had an injected case: measured 0.085 % flagged
    # (seed 5). An injected account's own later payments inside the 24 h window are flagged
    # too, by design: the account is under suspicion.
    injected = {g.key for g in gen if g.label}
    clean = [g for g in gen if g.key not in injected]
    false_positive_rate = sum(1 for g in clean if fired[g.tx["tx_id"]]) / len(clean)
    assert false_positive_rate < 0.002, false_positive_rate


def test_malformed_records_cover_every_kind_and_all_fail_validation():
    gen = TransactionGenerator(GeneratorConfig(seed=2, malformed_rate=0.2)).take(2000)
    bad = [g for g in gen if g.raw is not None]
    assert {g.typology.split(":")[1] for g in bad} == set(MALFORMED_KINDS)
    recs = [RawRecord("t", 0, i, None, g.raw) for i, g in enumerate(bad)]
    valid, dead = decode_transactions(recs, 0)
    assert valid == [] and len(dead) == len(bad)


def test_jsonl_replay_passes_lines_through_unchanged(tmp_path):
    path = tmp_path / "tx.jsonl"
    lines = [json.dumps({"account_id": "a1", "x": 1}), "", "not json", '["a"]']
    path.write_text("\n".join(lines) + "\n")
    assert list(read_jsonl(path)) == [
        ("a1", lines[0].encode()),
        (None, b"not json"),
        (None, b'["a"]'),
    ]


def test_typology_cases_are_labelled_and_dormant_accounts_have_old_history():
    from vigil.streams.sources.synthetic import TYPOLOGIES

    gen = TransactionGenerator(GeneratorConfig(seed=4, typology_rate=0.01)).take(20_000)
    labelled = [g for g in gen if g.label]
    assert {g.typology for g in labelled} >= set(TYPOLOGIES)
    assert all(g.label_record()["typology"] == g.typology for g in labelled)
    by_account: dict[str, list] = {}
    for g in gen:
        by_account.setdefault(g.key, []).append(g)
    dormant = [a for a in by_account if a.startswith("dor-")]
    assert dormant
    for account in dormant:
        first, *rest = by_account[account]
        assert first.label == 0 and rest and all(g.typology == "dormant_activation" for g in rest)
        assert min(g.tx["ts_ms"] for g in rest) - first.tx["ts_ms"] >= 60 * 86_400_000 - 1


def test_flow_cases_move_money_between_accounts_as_labelled():
    from collections import defaultdict

    from vigil.streams.sources.synthetic import FLOW_TYPOLOGIES

    gen = TransactionGenerator(GeneratorConfig(seed=6, flow_typology_rate=0.01)).take(20_000)
    cases = [g.tx for g in gen if g.label and g.typology in FLOW_TYPOLOGIES]
    assert {g.typology for g in gen if g.label} >= set(FLOW_TYPOLOGIES)
    payers = {g.key for g in gen if g.tx is not None}
    by_typology = defaultdict(list)
    for g in gen:
        if g.label:
            by_typology[g.typology].append(g.tx)
    # every flow case pays at least one account that itself pays on (an inflow is visible)
    assert any(tx["counterparty_id"] in payers for tx in cases)
    # fan-in: a collector receives from 10+ distinct accounts within 6 h, then pays out
    # (collectors whose payout lies beyond the end of the taken stream are skipped)
    into: dict[str, set[str]] = defaultdict(set)
    for tx in by_typology["fan_in"]:
        if tx["counterparty_id"].startswith("col-"):
            into[tx["counterparty_id"]].add(tx["account_id"])
    paid_out = {t["account_id"] for t in by_typology["fan_in"] if t["account_id"] in into}
    assert paid_out and all(len(into[c]) >= 10 for c in paid_out)
    # round trip: what went out comes back (a little less) to the sender, later
    sent = {(t["account_id"], t["counterparty_id"]): t for t in by_typology["round_tripping"]}
    trips = [
        (out, sent[(b, a)]) for (a, b), out in sent.items() if (b, a) in sent and b[:4] == "rtp-"
    ]
    assert trips  # (a return may also lie beyond the end of the taken stream)
    for out, back in trips:
        # (in EUR: the two accounts may pay in different currencies)
        assert back["ts_ms"] > out["ts_ms"]
        assert reporting(back)["amount"] < reporting(out)["amount"]
    # pass-through: the mule sends on 85-98 % of what it received, within 6 h
    got = {
        t["counterparty_id"]: t
        for t in by_typology["pass_through"]
        if t["counterparty_id"].startswith("mul-")
    }
    assert any(t["account_id"] in got for t in by_typology["pass_through"])
    for t in by_typology["pass_through"]:
        if t["account_id"] in got:
            inflow = got[t["account_id"]]
            assert (
                0.85 - 1e-4 <= reporting(t)["amount"] / reporting(inflow)["amount"] <= 0.98 + 1e-4
            )
            assert 0 < t["ts_ms"] - inflow["ts_ms"] <= 6 * 3_600_000
