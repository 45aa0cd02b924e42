"""Amounts in one reporting currency: rates tables, conversion in the pipeline, the rules'
view of it, unknown currencies, swaps, extremes. References: plain arithmetic on the
transaction and the table written in the test."""

import base64
import json
import math
import string

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tests.reference import reference_rates, wire
from vigil.streams.currency import (
    MAX_CURRENCIES,
    RatesError,
    default_rates,
    parse_rates,
    read_rates,
)
from vigil.streams.features import engine
from vigil.streams.features.engine import AccountLog
from vigil.streams.features.library import FEATURE_SPEC
from vigil.streams.pipeline import RULE_NAMES, RiskPipeline
from vigil.streams.rules import default_ruleset
from vigil.streams.schemas import Alert, RawRecord, ScoreRecord

AML = default_ruleset(RULE_NAMES)
LOG10 = FEATURE_SPEC.index("amount_log10")
ROUND = FEATURE_SPEC.index("is_round")


def amount_of(score: dict) -> float:
    """The amount the features saw."""
    return 10 ** score["features"][LOG10]


def table(**rates: float) -> dict:
    return {"name": "treasury", "version": "7", "base": "EUR", "rates": rates}


def paid(tx_id: str, amount: float, currency: str, minutes: int = 0, account: str = "a") -> dict:
    return {**wire(tx_id, account, "b", minutes, amount), "currency": currency}


def run(pipeline: RiskPipeline, txs: list[dict], store: dict | None = None, offset: int = 0):
    recs = [
        RawRecord("vigil.transactions", 0, i, t["account_id"].encode(), json.dumps(t).encode())
        for i, t in enumerate(txs, offset)
    ]
    result = pipeline.process_local(recs, {} if store is None else store)
    scores = {s["tx_id"]: s for s in map(json.loads, (v for _, v in result.scores))}
    alerts = {a["tx_id"]: a for a in map(json.loads, (v for _, v in result.alerts))}
    return scores, alerts, [json.loads(v) for _, v in result.dead]


def test_the_built_in_table_is_the_reference_file_and_in_eur():
    rates = default_rates()
    assert rates.base == "EUR" and rates.label == "reference:2026-12"
    assert rates.rates == reference_rates()


@pytest.mark.parametrize(
    ("document", "said"),
    [
        ([1, 2], "a mapping, not list"),
        ({"name": "x"}, "version: Field required"),
        (table(usd=0.9), "'usd' is not an ISO-4217 code"),
        (table(USD=float("nan")), "rate of USD is nan"),
        (table(USD=float("inf")), "rate of USD is inf"),
        (table(USD=0.0), "rate of USD is 0.0"),
        (table(USD=-0.86), "rate of USD is -0.86"),
        (table(USD=1e300), "rate of USD is 1e+300"),
        (table(USD="0.86"), "rates.USD: Input should be a valid number"),
        (table(USD=True), "rates.USD: Input should be a valid number"),
        (table(EUR=2.0), "the base EUR must have rate 1"),
        ({**table(USD=0.86), "base": "euro"}, "base: String should match"),
        ({**table(USD=0.86), "extra": 1}, "extra: Extra inputs are not permitted"),
        (table(), "rates: Dictionary should have at least 1 item"),
        (
            table(
                **{
                    f"{a}{b}{c}": 1.0
                    for a in string.ascii_uppercase
                    for b in string.ascii_uppercase
                    for c in "AB"
                }
            ),
            f"at most {MAX_CURRENCIES}",
        ),
    ],
)
def test_a_bad_table_is_refused_with_what_is_wrong(document, said):
    with pytest.raises(RatesError) as exc:
        parse_rates(document)
    assert said in str(exc.value)


def test_hostile_documents_are_refused_before_they_are_built():
    deep = "rates: " + "[" * 100 + "]" * 100
    with pytest.raises(RatesError, match="nested over 16 levels"):
        read_rates(deep)
    with pytest.raises(RatesError, match="anchors and aliases"):
        read_rates("a: &x [1]\nb: *x\n")
    with pytest.raises(RatesError, match="bytes, at most"):
        read_rates("x" * 2_000_000)
    with pytest.raises(RatesError, match="not UTF-8"):
        read_rates(b"\xff\xfe")


def test_amounts_are_converted_before_features_and_rules_and_the_payment_kept_in_reasons():
    rate = default_rates().rates["JPY"]
    txs = [
        paid("jpy-13k-eur", 2_062_001.52, "JPY", 0, "j1"),  # the demo's: ~12,000 EUR
        paid("jpy-big", 100_000_000.0, "JPY", 1, "j2"),  # 580,000 EUR
        paid("eur-big", 600_000.0, "EUR", 2, "e1"),
    ]
    scores, alerts, dead = run(RiskPipeline(AML), txs)
    assert not dead
    for tx in txs:
        s = ScoreRecord.model_validate(scores[tx["tx_id"]])
        want = tx["amount"] * (rate if tx["currency"] == "JPY" else 1.0)
        assert 10 ** s.features[LOG10] == pytest.approx(want, rel=1e-12)
        assert s.rates_version == "reference:2026-12"
    assert "jpy-13k-eur" not in alerts or not any(
        h["rule"] == "large_transfer" for h in alerts["jpy-13k-eur"]["rule_hits"]
    )
    big = Alert.model_validate(alerts["jpy-big"])
    assert (big.amount, big.currency) == (100_000_000.0, "JPY")
    assert (big.reporting_amount, big.reporting_currency) == (pytest.approx(1e8 * rate), "EUR")
    [reason] = [r for r in big.reasons if r.code == "LARGE_TRANSFER"]
    assert reason.detail == (
        f"amount {1e8 * rate:,.2f} EUR exceeds 500,000 (paid 100,000,000.00 JPY)"
    )
    assert [r.detail for r in Alert.model_validate(alerts["eur-big"]).reasons][0] == (
        "amount 600,000.00 EUR exceeds 500,000 (paid 600,000.00 EUR)"
    )


def test_an_unknown_currency_is_dead_lettered_and_the_rest_scored():
    txs = [paid("ok", 50.0, "EUR"), paid("odd", 50.0, "XAU", 1), paid("ok2", 70.0, "USD", 2)]
    scores, _alerts, dead = run(RiskPipeline(AML), txs)
    assert set(scores) == {"ok", "ok2"}
    [letter] = dead
    assert json.loads(base64.b64decode(letter["value_b64"]))["tx_id"] == "odd"
    assert letter["error"] == (
        f"currency XAU is not in rates table reference:2026-12 "
        f"({len(reference_rates())} currencies, base EUR)"
    )


def test_a_new_table_applies_from_the_next_batch_and_one_in_another_base_is_refused():
    pipeline, store = RiskPipeline(AML), {}
    first, _, _ = run(pipeline, [paid("t1", 1000.0, "USD")], store)
    assert amount_of(first["t1"]) == pytest.approx(1000.0 * reference_rates()["USD"])
    with pytest.raises(RatesError, match="in USD, but the reporting currency is EUR"):
        pipeline.set_rates(parse_rates({**table(EUR=0.9), "base": "USD"}))
    pipeline.set_rates(parse_rates(table(USD=0.5)))
    later, _, dead = run(
        pipeline, [paid("t2", 1000.0, "USD", 5), paid("t3", 9.0, "GBP", 6)], store, 1
    )
    assert (
        amount_of(later["t2"]) == pytest.approx(500.0)
        and later["t2"]["rates_version"] == "treasury:7"
    )
    assert [d["error"].split(" is not")[0] for d in dead] == ["currency GBP"]  # not in the new one
    # the account's history was in EUR all along: its 24 h sum adds the two conversions
    sum_24h = later["t2"]["features"][FEATURE_SPEC.index("sum_24h")]
    assert sum_24h == pytest.approx(1000.0 * reference_rates()["USD"] + 500.0)
    assert pipeline.counters["rates_swaps"] == 1


def test_roundness_is_the_amount_as_paid():
    rate = default_rates().rates["JPY"]
    txs = [
        paid("round-yen", 345_000.0, "JPY", 0, "r1"),  # round in yen, not in euro
        paid("round-euro", 2000 / rate, "JPY", 1, "r2"),  # 2,000 EUR, not round in yen
    ]
    scores, _, _ = run(RiskPipeline(AML), txs)
    assert scores["round-yen"]["features"][ROUND] == 1.0
    assert scores["round-euro"]["features"][ROUND] == 0.0


@settings(max_examples=60, deadline=None)
@given(
    amount=st.sampled_from([1e-300, 5e-324, 1e-9, 0.01, 1.0, 1e9, 1e15]),
    rate=st.sampled_from([1e-9, 1e-3, 1.0, 1e3, 1e9]),
)
def test_whatever_table_and_amount_are_accepted_the_worker_scores(amount, rate):
    pipeline = RiskPipeline(AML, rates=parse_rates(table(ZZZ=rate)))
    txs = [paid("x0", amount, "ZZZ"), paid("x1", amount, "ZZZ", 1), paid("x2", 3.0, "EUR", 2)]
    scores, _, dead = run(pipeline, txs)
    assert not dead and set(scores) == {"x0", "x1", "x2"}
    for s in scores.values():
        ScoreRecord.model_validate(s)
        assert 0 <= s["score"] <= 1
    got = amount_of(scores["x0"])
    assert got > 0 and math.isfinite(got)
    assert got == pytest.approx(max(amount * rate, np.finfo(float).tiny), rel=1e-12)


def test_a_snapshot_from_before_roundness_was_kept_loads_with_it_recomputed():
    rows = np.array([[1.0, 300.0, 2, 3, 4, 0, 0.5], [2.0, 301.5, 2, 3, 4, 0, 0.5]])
    old = {"rows": base64.b64encode(rows.tobytes()).decode(), "s": [None] * engine.NSCAL}
    log = AccountLog.from_snapshot(old)
    assert log.rows.shape == (2, engine.NCOL)
    assert log.rows[:, engine.ROUND].tolist() == [1.0, 0.0]
    assert AccountLog.from_snapshot(log.snapshot()).rows.tolist() == log.rows.tolist()
