"""Held-out evaluation of the hybrid against rules only, LightGBM only and NN only: AUC-PR,
recall at an alert rate, calibration, per typology, and the hybrid's lead with intervals."""

from __future__ import annotations

import numpy as np

from vigil.errors import DataError
from vigil.models.metrics import (
    ap_difference,
    average_precision,
    calibration,
    flagged_share,
    recall_at_rate,
)
from vigil.models.risk.data import History, Progress, temporal_split
from vigil.models.risk.net import net_logits
from vigil.models.risk.training import (
    HybridModel,
    TabularConfig,
    _calibrated,
    _gbdt_logit,
    _net_prob,
    train,
)
from vigil.streams.features.library import HOUR_MS


def model_scores(model: HybridModel, test: History) -> dict[str, np.ndarray]:
    """Each scorer's score per row: the rules' (as the worker gave it), and the calibrated
    probabilities of LightGBM, the NN alone and the hybrid. Float64: in float32 the
    confident end saturates at 1.0, and the ties would blur the ranking the metrics measure
    (decisions are unaffected)."""
    x = test.features
    return {
        "rules_only": test.rule_scores,
        "lightgbm": _calibrated(model.booster.predict(x, raw_score=True), *model.gbdt_calibration),
        "nn": _net_prob(model.nn_only, net_logits(model.nn_only, x, None)),
        "hybrid": _net_prob(
            model.hybrid, net_logits(model.hybrid, x, _gbdt_logit(model.booster, x))
        ),
    }


def evaluate(model: HybridModel, test: History, rate: float = 0.01, rounds: int = 1000) -> dict:
    """AUC-PR and recall at an alert rate for rules-only, LightGBM-only, NN-only and the
    hybrid on a held-out period; each one's recall per typology at that rate and AUC-PR per
    typology (its positives against all negatives); the calibration of the three
    probability models (``models.metrics.calibration``); and how far the hybrid's AUC-PR is
    ahead of each of the others (paired bootstrap over hours of the held-out period,
    ``rounds`` resamples: ``hybrid_vs``)."""
    scores = model_scores(model, test)
    y = test.labels
    typologies = sorted({t for t, label in zip(test.typologies, y, strict=True) if label and t})
    out: dict = {
        "rows": len(y),
        "positives": int(y.sum()),
        "alert_rate": rate,
        "models": {},
    }
    of_typology = {t: np.array([tt == t for tt in test.typologies]) & (y == 1) for t in typologies}
    for name, s in scores.items():
        share = flagged_share(s, rate)
        per_typology, ap_typology = {}, {}
        for t, mask in of_typology.items():
            per_typology[t] = round(float(share[mask].sum() / mask.sum()), 4)
            # this typology's positives ranked against every negative: what the model can
            # tell of it, whatever the alert budget (at 1 % of rows the top holds only
            # part of the positives, and recall_by_typology shows which ones fill it)
            rows = mask | (y == 0)
            ap_typology[t] = round(average_precision(y[rows], s[rows]), 4)
        out["models"][name] = {
            "auc_pr": round(average_precision(y, s), 4),
            "recall_at_rate": round(recall_at_rate(y, s, rate), 4),
            "recall_by_typology": per_typology,
            "auc_pr_by_typology": ap_typology,
            # the rules' score ranks but is no probability
            "calibration": None if name == "rules_only" else calibration(y, s),
        }
    if test.accounts is not None:
        out["accounts"] = account_level(test, scores)
    hours = test.ts_ms // HOUR_MS
    out["hybrid_vs"] = {
        name: ap_difference(y, scores["hybrid"], s, hours, rounds, seed=model.config.seed)
        for name, s in scores.items()
        if name != "hybrid"
    }
    return out


def account_level(test: History, scores: dict[str, np.ndarray]) -> dict:
    """Each model as an account monitor: an account's score is its highest transaction
    score in the held-out period; an account is positive for a flow typology when it paid
    within such a case there. AUC-PR per flow typology (its accounts against every account
    with no labelled payment), and over the small-value and the large flow cases."""
    from vigil.streams.sources.synthetic import FLOW_TYPOLOGIES, case_scale

    names, row_account = np.unique(np.asarray(test.accounts), return_inverse=True)
    n = len(names)
    y = test.labels == 1
    labelled = np.zeros(n, dtype=bool)
    np.logical_or.at(labelled, row_account, y)
    groups: dict[str, np.ndarray] = {}
    typologies = np.asarray([t or "" for t in test.typologies])
    scale = np.asarray([case_scale(c) or "" for c in (test.cases or [None] * len(y))])
    for name in (*FLOW_TYPOLOGIES, "small", "large"):
        rows = y & (typologies == name if name in FLOW_TYPOLOGIES else scale == name)
        rows &= np.isin(typologies, FLOW_TYPOLOGIES)
        if rows.any():
            members = np.zeros(n, dtype=bool)
            np.logical_or.at(members, row_account[rows], True)
            groups[name] = members
    out: dict = {
        "accounts": n,
        "labelled": int(labelled.sum()),
        "positives": {g: int(m.sum()) for g, m in groups.items()},
        "models": {},
    }
    for model, s in scores.items():
        best = np.full(n, -np.inf)
        np.maximum.at(best, row_account, s)
        out["models"][model] = {
            g: round(average_precision(m[m | ~labelled], best[m | ~labelled]), 4)
            for g, m in groups.items()
        }
    return out


def fit_and_evaluate(
    history: History, holdout_days: float, cfg: TabularConfig, say: Progress = print
) -> tuple[HybridModel, dict, History]:
    """Split ``history`` in time, train on the earlier part and evaluate on the last
    ``holdout_days``: the model, the evaluation and the held-out set. ValueError when the
    held-out days cannot be evaluated on."""
    train_set, test_set = temporal_split(history, holdout_days)
    say(
        f"{len(history)} labelled transactions: train {len(train_set)} "
        f"({int(train_set.labels.sum())} positive), hold-out {len(test_set)} "
        f"({int(test_set.labels.sum())} positive)"
    )
    if not len(test_set) or not test_set.labels.sum():
        raise DataError("the held-out days have no positive label to evaluate on")
    model = train(train_set, cfg, say=say)
    return model, evaluate(model, test_set), test_set
