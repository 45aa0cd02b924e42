"""The rule expression language against a plain-Python reference, and its error messages."""

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vigil.streams.rules import NUM, STR, ExpressionError, compile_expression
from vigil.streams.rules.language import Context, as_mask

CTX = Context({"a": NUM, "b": NUM, "c": STR}, {"hr": frozenset({"KP", "IR"})})

# (expression, reference over one row)
CASES = [
    ("a > 3", lambda r: r["a"] > 3),
    ("a + b * 2 >= 10", lambda r: r["a"] + r["b"] * 2 >= 10),
    ("(a + b) * 2 >= 10", lambda r: (r["a"] + r["b"]) * 2 >= 10),
    ("-a < b - 1", lambda r: -r["a"] < r["b"] - 1),
    ("a / b > 0.5", lambda r: r["b"] != 0 and r["a"] / r["b"] > 0.5),
    ("a % 3 == 1", lambda r: math.fmod(r["a"], 3) == 1),
    (
        "not a > 3 or b < 2 and c == 'KP'",
        lambda r: (not r["a"] > 3) or (r["b"] < 2 and r["c"] == "KP"),
    ),
    ("c in lists.hr", lambda r: r["c"] in {"KP", "IR"}),
    ("c not in ['DE', 'FR']", lambda r: r["c"] not in {"DE", "FR"}),
    (
        "abs(a - b) > 2 and max(a, b) < 8",
        lambda r: abs(r["a"] - r["b"]) > 2 and max(r["a"], r["b"]) < 8,
    ),
    ("c != 'DE' and a != 1", lambda r: r["c"] != "DE" and r["a"] != 1),
    ("true and a >= 0", lambda r: r["a"] >= 0),
]

rows = st.lists(
    st.fixed_dictionaries(
        {
            "a": st.integers(-10, 10).map(float),
            "b": st.integers(-10, 10).map(float),
            "c": st.sampled_from(["KP", "IR", "DE", "FR", "US"]),
        }
    ),
    min_size=1,
    max_size=30,
)


@given(rows)
@settings(max_examples=60, deadline=None)
def test_vectorised_evaluation_equals_the_row_by_row_reference(data):
    cols = {
        "a": np.array([r["a"] for r in data]),
        "b": np.array([r["b"] for r in data]),
        "c": np.array([r["c"] for r in data], dtype=object),
    }
    for text, ref in CASES:
        got = as_mask(compile_expression(text, CTX), cols, len(data)).tolist()
        assert got == [bool(ref(r)) for r in data], text


def test_missing_values_never_satisfy_a_comparison():
    cols = {
        "a": np.array([np.nan, 5.0]),
        "b": np.array([1.0, 1.0]),
        "c": np.array([None, "KP"], dtype=object),
    }
    for text, want in [
        ("a > 1", [False, True]),
        ("a <= 1", [False, False]),
        ("is_null(a)", [True, False]),
        ("coalesce(a, 0) < 1", [True, False]),
        ("is_null(c)", [True, False]),
        ("c in lists.hr", [False, True]),
    ]:
        assert as_mask(compile_expression(text, CTX), cols, 2).tolist() == want, text


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("amout > 3", "unknown name 'amout'"),
        ("aa > 3", "did you mean 'a'?"),
        ("a > 'x'", "'>' needs num, got str"),
        ("c + 1 > 2", "'+' needs num, got str"),
        ("a == c", "cannot compare num with str"),
        ("a and b", "'and' needs bool, got num"),
        ("a > ", "expected a value, found end of expression (at column 5)"),
        ("(a > 1", "expected ')'"),
        ("a > 1 b", "unexpected 'b' (at column 7)"),
        ("a $ 1", "unexpected character '$' (at column 3)"),
        ("c in lists.nope", "unknown list 'nope'"),
        ("c in b", "'in' needs lists.NAME"),
        ("__import__('os')", "unknown function '__import__'"),
        ("max(a) > 1", "max() takes 2 argument(s), got 1"),
        ("lists.hr", "a list can only follow 'in'"),
        ("", "empty expression"),
    ],
)
def test_invalid_expressions_say_what_and_where(text, message):
    with pytest.raises(ExpressionError) as exc:
        compile_expression(text, CTX)
    assert message in str(exc.value)
