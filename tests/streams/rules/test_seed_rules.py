import pytest

from streams.rules import (
    Firing,
    FrequentSmall,
    LargeTransfer,
    RuleError,
    Ruleset,
    Thresholds,
    alert_id,
    combine,
    decide,
    seed_ruleset,
)
from streams.schemas import Transaction


def tx(amount: float) -> Transaction:
    return Transaction(
        tx_id="t",
        ts_ms=1_767_225_600_000,
        account_id="a",
        counterparty_id="c",
        amount=amount,
        currency="EUR",
        channel="wire",
        country="DE",
    )


@pytest.mark.parametrize(
    ("amount", "fires"), [(500_000, False), (500_000.01, True), (1e7, True), (10, False)]
)
def test_large_transfer_fires_strictly_above_500k(amount, fires):
    hit = LargeTransfer().evaluate(tx(amount), {"small_count_24h": 0})
    assert (hit is not None) == fires
    if fires:
        assert (hit.rule, hit.typology, hit.score, hit.code) == (
            "large_transfer",
            "large_value",
            0.8,
            "LARGE_TRANSFER",
        )
        assert "EUR" in hit.detail and "500,000" in hit.detail


@pytest.mark.parametrize(("count", "fires"), [(None, False), (0, False), (10, False), (11, True)])
def test_frequent_small_fires_on_more_than_ten(count, fires):
    hit = FrequentSmall().evaluate(tx(50), {"small_count_24h": count})
    assert (hit is not None) == fires
    if fires:
        assert (hit.score, hit.typology) == (0.5, "structuring")
        assert hit.detail.startswith("11 transactions under 1,000 within 24 h")


def test_frequent_small_names_a_missing_feature():
    with pytest.raises(RuleError, match="small_count_24h"):
        FrequentSmall().evaluate(tx(50), {})


def test_combination_and_decisions():
    big = Firing("large_transfer", "large_value", 0.8, "X", "")
    small = Firing("frequent_small", "structuring", 0.5, "Y", "")
    t = Thresholds()
    assert combine([]) == 0.0 and decide(0.0, t) == "allow"
    assert combine([small]) == 0.5 and decide(0.5, t) == "review"
    assert combine([big]) == 0.8 and decide(0.8, t) == "review"
    assert (
        combine([big, small]) == pytest.approx(0.9) and decide(combine([big, small]), t) == "block"
    )
    assert combine([small], model_score=0.5) == pytest.approx(0.75)


def test_alert_id_is_deterministic_and_depends_on_decision_inputs():
    f = [Firing("large_transfer", "large_value", 0.8, "X", "detail ignored")]
    a = alert_id("t1", "review", f, "rules-only")
    assert a == alert_id("t1", "review", list(f), "rules-only")
    assert (
        len(
            {
                a,
                alert_id("t2", "review", f, "rules-only"),
                alert_id("t1", "block", f, "rules-only"),
                alert_id("t1", "review", f, "m2"),
            }
        )
        == 4
    )


def test_invalid_thresholds_and_duplicate_rules_are_rejected():
    with pytest.raises(RuleError, match="review <= block"):
        Thresholds(review=0.9, block=0.5)
    with pytest.raises(RuleError, match="duplicate rule names \\['large_transfer'\\]"):
        Ruleset("x", "1", (LargeTransfer(), LargeTransfer()))
    assert [r.name for r in seed_ruleset().rules] == ["large_transfer", "frequent_small"]
