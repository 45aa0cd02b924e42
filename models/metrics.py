"""Metrics for alerting models.

Ranking: AUC-PR (average precision) and recall at an alert rate. Ties are handled as a
random tie-break would on average, so a coarse score (the rules' few distinct values) is
not flattered or punished by the order of its ties.

Calibration, for scores that claim to be probabilities (the decision thresholds read them
as such): log-loss, Brier score, and the expected number of positives against the actual
one."""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "average_precision",
    "ap_difference",
    "brier_score",
    "calibration",
    "card_precision_at_k",
    "flagged_share",
    "log_loss",
    "paired_summary",
    "recall_at_rate",
    "roc_auc",
]


def average_precision(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the precision-recall curve as the step sum over distinct thresholds
    (the definition scikit-learn's ``average_precision_score`` uses)."""
    y = np.asarray(labels, dtype=float)
    positives = y.sum()
    if positives == 0:
        return float("nan")
    order = np.argsort(-np.asarray(scores, dtype=float), kind="stable")
    s, y = np.asarray(scores, dtype=float)[order], y[order]
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]  # end of each run of equal scores
    tp = np.cumsum(y)[last]
    flagged = last + 1
    recall = tp / positives
    precision = tp / flagged
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve: the chance that a random positive scores above a random
    negative, a tie counting one half (Mann-Whitney U over mid-ranks; scikit-learn's
    ``roc_auc_score`` gives the same)."""
    y = np.asarray(labels, dtype=float)
    s = np.asarray(scores, dtype=float)
    positives = y.sum()
    negatives = len(y) - positives
    if positives == 0 or negatives == 0:
        return float("nan")
    order = np.argsort(s, kind="stable")
    ranked = s[order]
    first = np.searchsorted(ranked, ranked, side="left")  # mid-rank of each run of ties
    last = np.searchsorted(ranked, ranked, side="right")
    ranks = np.empty(len(s))
    ranks[order] = (first + last + 1) / 2  # 1-based
    u = ranks[y == 1].sum() - positives * (positives + 1) / 2
    return float(u / (positives * negatives))


def card_precision_at_k(
    days: np.ndarray, cards: np.ndarray, labels: np.ndarray, scores: np.ndarray, k: int = 100
) -> dict:
    """Card Precision@k as the Fraud Detection Handbook computes it (Le Borgne et al., ch. 4):
    per day, the day's transactions grouped by card (customer) with the highest score and
    the highest label of each, the ``k`` highest-scored cards taken, and the share of them
    that were compromised (always over ``k``: a day with fewer cards cannot reach 1). A card
    found compromised in the top ``k`` of one day is left out of the later days. Equal
    scores rank by card id (the handbook's sort leaves their order to pandas).

    Returns the per-day values, their mean (the metric) and the compromised cards per day."""
    days, cards = np.asarray(days), np.asarray(cards)
    y, s = np.asarray(labels, dtype=float), np.asarray(scores, dtype=float)
    caught: set = set()
    per_day, compromised = [], []
    for day in np.unique(days):
        on = np.flatnonzero(days == day)
        best: dict = {}  # card -> (max score, max label)
        for i in on:
            card = cards[i].item() if hasattr(cards[i], "item") else cards[i]
            if card in caught:
                continue
            score, label = best.get(card, (-np.inf, 0.0))
            best[card] = (max(score, s[i]), max(label, y[i]))
        ranked = sorted(best.items(), key=lambda item: (-item[1][0], item[0]))[:k]
        found = [card for card, (_score, label) in ranked if label == 1]
        per_day.append(len(found) / k)
        compromised.append(sum(1 for _score, label in best.values() if label == 1))
        caught.update(found)
    return {
        "per_day": per_day,
        "mean": float(np.mean(per_day)) if per_day else float("nan"),
        "compromised_per_day": compromised,
    }


PROBABILITY_FLOOR = 1e-15  # log-loss of a certain, wrong score: -log(1e-15) = 34.5


def log_loss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean negative log-likelihood of the labels; probabilities are kept within
    ``PROBABILITY_FLOOR`` of 0 and 1, so one confident mistake costs 34.5, not infinity."""
    y = np.asarray(labels, dtype=float)
    p = np.clip(np.asarray(probs, dtype=float), PROBABILITY_FLOOR, 1 - PROBABILITY_FLOOR)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def brier_score(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean squared difference between probability and outcome."""
    y, p = np.asarray(labels, dtype=float), np.asarray(probs, dtype=float)
    return float(np.mean((p - y) ** 2))


def calibration(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """How well a probability score is calibrated: log-loss, Brier score, and the sum of
    the probabilities over the number of positives (``expected_over_actual``: 1.0 when the
    score predicts as many positives as there are; above, it over-alerts)."""
    if not np.all((np.asarray(probs) >= 0) & (np.asarray(probs) <= 1)):
        raise ValueError("calibration needs probabilities in [0, 1]")
    positives = float(np.asarray(labels, dtype=float).sum())
    expected = float(np.asarray(probs, dtype=float).sum())
    return {
        "log_loss": round(log_loss(labels, probs), 5),
        "brier": round(brier_score(labels, probs), 6),
        "expected_over_actual": round(expected / positives, 4) if positives else float("nan"),
    }


def flagged_share(scores: np.ndarray, rate: float) -> np.ndarray:
    """How much each row is flagged when the top ``rate`` share of rows is alerted: 1 above
    the threshold, a fraction for rows tied at it (the expected outcome of a random
    tie-break), 0 below."""
    s = np.asarray(scores, dtype=float)
    k = max(1, math.ceil(rate * len(s)))
    threshold = np.sort(s)[::-1][k - 1]
    above = s > threshold
    tied = s == threshold
    share = above.astype(float)
    share[tied] = (k - above.sum()) / tied.sum()
    return share


def recall_at_rate(labels: np.ndarray, scores: np.ndarray, rate: float = 0.01) -> float:
    y = np.asarray(labels, dtype=float)
    if y.sum() == 0:
        return float("nan")
    return float((flagged_share(scores, rate) * y).sum() / y.sum())


def ap_difference(
    labels: np.ndarray,
    a: np.ndarray,
    b: np.ndarray,
    blocks: np.ndarray,
    rounds: int = 1000,
    seed: int = 0,
) -> dict[str, float]:
    """How much better model ``a`` ranks than ``b`` by AUC-PR on the same rows, with a
    paired block bootstrap: whole blocks (e.g. hours: one injected case's transactions
    cluster in time, so rows are not independent) are resampled with replacement, and both
    models are scored on each resample. Returns the observed difference, its 95 % interval
    and the share of resamples in which ``a`` came out ahead."""
    y, sa, sb = (np.asarray(v, dtype=float) for v in (labels, a, b))
    ids, block_of = np.unique(np.asarray(blocks), return_inverse=True)
    members = [np.flatnonzero(block_of == k) for k in range(len(ids))]
    rng = np.random.default_rng(seed)
    diffs = np.empty(rounds)
    for r in range(rounds):
        idx = np.concatenate([members[k] for k in rng.integers(0, len(members), len(members))])
        diffs[r] = average_precision(y[idx], sa[idx]) - average_precision(y[idx], sb[idx])
    lo, hi = np.nanpercentile(diffs, [2.5, 97.5])
    return {
        "difference": round(average_precision(y, sa) - average_precision(y, sb), 4),
        "low": round(float(lo), 4),
        "high": round(float(hi), 4),
        "ahead_share": round(float(np.mean(diffs > 0)), 3),
    }


def paired_summary(differences: list[float], rounds: int = 10_000, seed: int = 0) -> dict:
    """One model's lead over another across independent runs (one difference per run,
    e.g. per synthetic history): the mean, its 95 % bootstrap interval over the runs, and
    how many runs it led, tied (a difference of 0) or trailed."""
    d = np.asarray(differences, dtype=float)
    if not len(d):
        raise ValueError("paired_summary needs at least one difference")
    means = np.random.default_rng(seed).choice(d, (rounds, len(d))).mean(axis=1)
    lo, hi = np.percentile(means, [2.5, 97.5])
    return {
        "mean": round(float(d.mean()), 5),
        "low": round(float(lo), 5),
        "high": round(float(hi), 5),
        "wins": int((d > 0).sum()),
        "ties": int((d == 0).sum()),
        "losses": int((d < 0).sum()),
    }
