"""Rule documents as an attacker writes them: every bomb is a clear RuleError naming the
rule and the position, never a RecursionError; whatever validates, a worker evaluates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.streams.pipeline import RULE_NAMES
from vigil.streams.rules import LIMITS, RuleError, parse_ruleset, read_document
from vigil.streams.rules.language import NUM, STR, Context, ExpressionError, compile_expression


def doc(when: str = "amount > 1", reason: str = "r", **extra) -> dict:
    rule = {"name": "r1", "typology": "t", "when": when, "score": 0.5, "reason": reason}
    return {"ruleset": "x", "version": "1", "rules": [rule], **extra}


@pytest.mark.parametrize(
    ("when", "message"),
    [
        (" + ".join(["amount"] * 490) + " > 1", "too deep"),
        ("(" * 90 + "amount > 1" + ")" * 90, "nested too deeply"),
        ("not " * 200 + "amount > 1", "nested too deeply"),
        ("-" * 500 + "amount > 1", "nested too deeply"),
        ("abs(" * 50 + "amount" + ")" * 50 + " > 1", "nested too deeply"),
        (" or ".join(["amount > 1"] * 2100), "too long"),
        ("amount > " + "1" * 10_000, "too long"),
    ],
)
def test_expression_bombs_are_refused_with_the_rule_and_the_column(when, message):
    with pytest.raises(RuleError) as err:
        parse_ruleset(doc(when), RULE_NAMES)
    text = str(err.value)
    assert message in text and "rule 'r1', field 'when'" in text
    assert "column" in text or "characters" in text


def test_a_long_flat_chain_of_conditions_is_one_level_and_evaluates_like_python():
    amounts = np.array([0.5, 3.0, 150.0, np.nan, 299.0])
    when = " or ".join(f"amount == {k}" for k in range(300))  # 300 conditions, depth 2
    ruleset = parse_ruleset(doc(when), RULE_NAMES)
    mask = [bool(f) for f in ruleset.evaluate_batch({"amount": amounts}, len(amounts))]
    assert mask == [a in range(300) for a in [0.5, 3.0, 150.0, math.nan, 299.0]]
    both = " and ".join(f"amount != {k}" for k in range(300))
    ruleset = parse_ruleset(doc(both), RULE_NAMES)
    mask = [bool(f) for f in ruleset.evaluate_batch({"amount": amounts}, len(amounts))]
    assert mask == [True, False, False, True, False]  # NaN != k is true, like numpy's


@pytest.mark.parametrize("spec", [">1500000", ",.1000000f", "0>65", ".65e"])
def test_reason_templates_cannot_ask_for_huge_widths(spec):
    with pytest.raises(RuleError, match="width and precision are at most 64"):
        parse_ruleset(doc(reason=f"{{amount:{spec}}}"), RULE_NAMES)
    parse_ruleset(doc(reason="{amount:>64,.2f}"), RULE_NAMES)  # the limit itself is fine


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[" * 5000 + "]" * 5000, "nested over 16 levels"),
        ("[" * 100_000, "nested over 16 levels"),
        ("a: &a [x, x]\nb: [*a, *a]\n", "anchors and aliases are not allowed"),
        ("x: " + "y" * (LIMITS.document_bytes + 1), "at most 1048576"),
        (b"\xff\xfe", "not UTF-8"),
        ("rules: [\n", "not valid YAML/JSON"),
    ],
)
def test_document_bombs_are_refused_before_anything_is_built(text, message):
    with pytest.raises(RuleError, match=message):
        read_document(text)


def test_list_and_rule_counts_are_bounded():
    big = doc(lists={"l": ["A"] * (LIMITS.list_items + 1)})
    with pytest.raises(RuleError, match="at most 100000"):
        parse_ruleset(big, RULE_NAMES)
    many = doc()
    many["rules"] = [dict(many["rules"][0], name=f"r{i}") for i in range(LIMITS.rules + 1)]
    with pytest.raises(RuleError, match="at most 1000"):
        parse_ruleset(many, RULE_NAMES)


# ------------------------------------------------- whatever compiles, evaluates (property)

CTX = Context({"a": NUM, "b": NUM, "s": STR}, {"l": frozenset({"x", "y"})})
_leaf = st.sampled_from(["a", "b", "0", "1e308", "-1e308", "0.5", "null", "true"])
_expr = st.recursive(
    _leaf,
    lambda inner: st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "%"]), inner).map(" ".join),
        st.tuples(inner, st.sampled_from(["<", "<=", "==", "!=", ">"]), inner).map(" ".join),
        st.tuples(inner, st.sampled_from(["and", "or"]), inner).map(" ".join),
        inner.map(lambda e: f"({e})"),
        inner.map(lambda e: f"not {e}"),
        inner.map(lambda e: f"-{e}"),
        st.tuples(st.sampled_from(["abs", "log1p", "is_null"]), inner).map("{0[0]}({0[1]})".format),
        st.tuples(st.sampled_from(["min", "max", "coalesce"]), inner, inner).map(
            "{0[0]}({0[1]}, {0[2]})".format
        ),
        st.just("s in lists.l"),
        st.just("s not in ['x', null]"),
    ),
    max_leaves=60,
)
COLS = {
    "a": np.array([np.nan, np.inf, -np.inf, 0.0, -0.0, 5e-324, 1e308, -1e308, 1.0]),
    "b": np.array([0.0, np.nan, 1e-320, np.inf, 1.0, -1.0, 1e308, 2.0, np.nan]),
    "s": np.array(["x", None, "", "y" * 10_000, "é", "x", None, "z", "y"], dtype=object),
}


@settings(max_examples=300, deadline=None)
@given(_expr)
def test_whatever_compiles_evaluates_on_extreme_columns(text):
    try:
        expr = compile_expression(text, CTX)
    except ExpressionError:
        return
    out = expr.eval(COLS, 9)
    assert np.shape(out) in ((), (9,))
