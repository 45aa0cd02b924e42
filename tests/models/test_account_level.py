"""Account-level evaluation (an account's score is its highest transaction score) against
a per-account loop and scikit-learn's average precision."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score

from vigil.models.risk.data import History
from vigil.models.risk.evaluation import account_level

FLOWS = ("fan_in", "round_tripping")
ROW = st.tuples(
    st.integers(0, 7),  # account
    st.sampled_from([None, "fan_in", "round_tripping", "structuring"]),  # typology if positive
    st.sampled_from(["small", "large"]),
    st.floats(0, 1, allow_nan=False),  # model score
)


@given(st.lists(ROW, min_size=2, max_size=60))
@settings(max_examples=200, deadline=None)
def test_account_level_average_precision_equals_a_per_account_loop(rows):
    accounts = [f"acc{a}" for a, *_ in rows]
    typologies = [t for _, t, _, _ in rows]
    labels = np.array([t is not None for t in typologies], dtype=np.int8)
    cases = [None if t is None else f"{t}-{scale}-{i}" for i, (_, t, scale, _) in enumerate(rows)]
    score = np.array([s for *_, s in rows])
    n = len(rows)
    test = History(
        np.zeros((n, 1), np.float32),
        labels,
        np.arange(n),
        np.zeros(n),
        typologies,
        [f"t{i}" for i in range(n)],
        accounts,
        cases,
    )
    got = account_level(test, {"m": score})
    best = {a: max(s for b, s in zip(accounts, score, strict=True) if b == a) for a in accounts}
    labelled = {a for a, t in zip(accounts, typologies, strict=True) if t is not None}
    groups = {
        t: {a for a, tt in zip(accounts, typologies, strict=True) if tt == t} for t in FLOWS
    } | {
        scale: {
            a
            for a, tt, c in zip(accounts, typologies, cases, strict=True)
            if tt in FLOWS and c.split("-")[1] == scale
        }
        for scale in ("small", "large")
    }
    groups = {g: members for g, members in groups.items() if members}
    assert got["accounts"] == len(best) and got["labelled"] == len(labelled)
    assert got["positives"] == {g: len(m) for g, m in groups.items()}
    for g, members in groups.items():
        ranked = [a for a in best if a in members or a not in labelled]
        want = average_precision_score([a in members for a in ranked], [best[a] for a in ranked])
        assert got["models"]["m"][g] == pytest.approx(want, abs=1e-4)
