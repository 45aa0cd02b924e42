"""``vigil bench handbook``: the Fraud Detection Handbook's protocol, run on Vigil.

The handbook (Le Borgne et al., ULB / Worldline) measures fraud detectors on its simulated
card transactions with a fixed protocol, and publishes its models' results on it:

- labels are known 7 days after their transaction: a model trained on days up to D uses
  labels of transactions up to D, and a feature at time t only labels known by t;
- chapter 3: train on 2018-07-25..31, skip the 7 days of delay, test on 08-08..14;
  chapter 5 (prequential): four such folds whose test weeks cover 2018-08-08..09-04;
- cards already known to be compromised are removed from each test day (frauds in the
  training week, and for test day d the frauds up to the day before d's delay period ends);
- metrics: AUC ROC and average precision per transaction, and Card Precision@100 per day
  (``models.metrics.card_precision_at_k``), the mean over the test days.

Here every transaction goes through the worker's own pipeline (``RiskPipeline``), with the
labels published on ``vigil.labels`` when they become known (their transaction's time plus
the delay), from ``warmup_days`` before the first training day (the longest feature window)
to the end of the last test week. Each fold trains the hybrid (LightGBM + NN) on its
training week and scores its test week; rules only, LightGBM, NN only and the hybrid are
compared with the handbook's published numbers.
"""

from __future__ import annotations

import datetime as dt
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from vigil.errors import UsageError
from vigil.models.metrics import (
    ap_difference,
    average_precision,
    card_precision_at_k,
    roc_auc,
)
from vigil.models.risk.data import History, Progress, feature_matrix
from vigil.models.risk.evaluation import model_scores
from vigil.models.risk.training import TabularConfig, train
from vigil.streams.sources.handbook import (
    DAY_MS,
    SCENARIOS,
    Handbook,
    day_ms,
    merged_replay,
    read_handbook,
)

__all__ = [
    "PROTOCOLS",
    "PUBLISHED",
    "Fold",
    "folds",
    "label_visible",
    "known_compromised_removed",
    "run_handbook",
]

DELAY_DAYS = 7
# The handbook's published results (its own notebooks), on this data and protocol.
PUBLISHED = {
    "ch3": {
        "logistic regression": {"auc_roc": 0.871, "ap": 0.606, "cp100": 0.291},
        "random forest": {"auc_roc": 0.867, "ap": 0.658, "cp100": 0.287},
        "XGBoost": {"auc_roc": 0.862, "ap": 0.639, "cp100": 0.273},
    },
    "ch5": {
        "XGBoost, tuned (best published)": {"auc_roc": 0.869, "ap": 0.687, "cp100": 0.303},
        "random forest, tuned": {"auc_roc": 0.870, "ap": 0.678, "cp100": 0.299},
        "feed-forward NN (ch. 7)": {"auc_roc": 0.876, "ap": 0.675, "cp100": 0.303},
        "LSTM, last 5 transactions (ch. 7)": {"auc_roc": 0.876, "ap": 0.665, "cp100": 0.297},
    },
}
MODELS = ("rules_only", "lightgbm", "nn", "hybrid")


@dataclass(frozen=True)
class Fold:
    """Train on ``train_days`` from ``train_start``, wait ``delay_days``, test ``test_days``."""

    train_start: dt.date
    train_days: int = 7
    delay_days: int = DELAY_DAYS
    test_days: int = 7

    @property
    def test_start(self) -> dt.date:
        return self.train_start + dt.timedelta(days=self.train_days + self.delay_days)

    @property
    def end(self) -> dt.date:
        return self.test_start + dt.timedelta(days=self.test_days)

    def describe(self) -> dict:
        train_end = self.train_start + dt.timedelta(days=self.train_days - 1)
        return {
            "train": f"{self.train_start}..{train_end}",
            "test": f"{self.test_start}..{self.end - dt.timedelta(days=1)}",
        }


PROTOCOLS = ("ch3", "ch5", "ch5-valid")


def folds(protocol: str) -> list[Fold]:
    """ch3: one fold; ch5: the four prequential folds (oldest first); ch5-valid: the
    handbook's model-selection folds, the ch5 folds five weeks earlier (test weeks
    2018-07-04..31), for choosing settings without looking at the test weeks."""
    first = dt.date(2018, 7, 25)
    if protocol == "ch3":
        return [Fold(first)]
    starts = {"ch5": first, "ch5-valid": first - dt.timedelta(days=7 * 5)}
    if protocol not in starts:
        raise UsageError(f"unknown protocol {protocol!r}: {', '.join(PROTOCOLS)}")
    return [Fold(starts[protocol] + dt.timedelta(days=7 * k)) for k in range(4)]


def known_compromised_removed(
    fold: Fold, days: np.ndarray, customers: np.ndarray, fraud: np.ndarray
) -> np.ndarray:
    """The test rows that stay (bool mask over all rows): the handbook's
    ``get_train_test_set`` keeps a test day's transactions except those of customers known
    to be compromised by then (a fraud in the training week, or on any day from the
    training week's end up to the day before the delay period ends for that test day).
    ``days``: each row's UTC day as a date ordinal."""
    t0 = fold.train_start.toordinal()
    train = (days >= t0) & (days < t0 + fold.train_days)
    known = set(customers[train & (fraud == 1)].tolist())
    keep = np.zeros(len(days), dtype=bool)
    for d in range(fold.test_days):
        delay_day = t0 + fold.train_days + d - 1
        known |= set(customers[(days == delay_day) & (fraud == 1)].tolist())
        test_day = t0 + fold.train_days + fold.delay_days + d
        on_day = np.flatnonzero(days == test_day)
        keep[on_day] = ~np.isin(customers[on_day], list(known))
    return keep


# how long a compromised terminal's known frauds tell of it: the label windows' 30 days
VISIBLE_FOR_DAYS = 30


def label_visible(hb: Handbook, rows: np.ndarray) -> np.ndarray:
    """Which of ``hb``'s ``rows`` are frauds that the labels known at their time can show: a
    compromised-terminal fraud (scenario 2) only once an earlier fraud of that scenario on
    the same terminal has its label known (its transaction ``DELAY_DAYS`` or more before,
    within ``VISIBLE_FOR_DAYS`` of becoming known); every other fraud (an amount over 220,
    a compromised customer's inflated amount) shows in the transaction itself. The first
    ``DELAY_DAYS`` of a terminal's compromise look, in every feature, like its genuine
    payments: no model can rank them above chance."""
    rows = np.asarray(rows, dtype=np.int64)
    s2 = np.flatnonzero(hb.scenario == 2)
    # (terminal, time) as one int64: terminals as dense codes (fewer than 2**21 rows in
    # the handbook's whole file) above the times (ms since 1970 below 2**42 until 2109)
    _, code = np.unique(np.concatenate([hb.terminal[s2], hb.terminal[rows]]), return_inverse=True)
    code = code.astype(np.int64) << np.int64(42)
    keys = np.sort(code[: len(s2)] + hb.ts_ms[s2])
    base = code[len(s2) :] + hb.ts_ms[rows]
    lo = np.searchsorted(keys, base - (DELAY_DAYS + VISIBLE_FOR_DAYS) * DAY_MS, "left")
    hi = np.searchsorted(keys, base - DELAY_DAYS * DAY_MS, "right")
    return (hb.fraud[rows] == 1) & ((hb.scenario[rows] != 2) | (hi > lo))


def featurise_handbook(
    hb: Handbook, delay_ms: int, with_labels: bool, batch: int, say: Progress
) -> tuple[History, np.ndarray, int]:
    """Every row of ``hb`` through the worker's pipeline (rules only) with its labels
    published when known: the featurised history (rows aligned with ``hb``: ``take`` by the
    returned row index), the ``hb`` row of each history row, and how many rows the pipeline
    dead-lettered (amount 0.00 is not a payment under the contract)."""
    from vigil.streams.pipeline import RiskPipeline, fewer_collections
    from vigil.streams.schemas import RawRecord

    pipeline = RiskPipeline()
    store: dict = {}
    rows: dict[str, int] = {}
    feats, ts, rule, which = [], [], [], []
    offsets = {"transactions": 0, "labels": 0}
    records: list[RawRecord] = []
    started, done = time.monotonic(), 0

    def flush() -> None:
        result = pipeline.process_local(records, store)
        vectors = []
        for _key, value in result.scores:
            s = orjson.loads(value)
            vectors.append(s["features"])
            ts.append(s["ts_ms"])
            rule.append(s["score"])
            which.append(rows[s["tx_id"]])
        feats.append(feature_matrix(vectors))
        records.clear()

    with fewer_collections():
        for kind, i, value in merged_replay(hb, delay_ms, labels=with_labels):
            topic = pipeline.labels_topic if kind == "labels" else "transactions"
            records.append(RawRecord(topic, 0, offsets[kind], None, value))
            offsets[kind] += 1
            if kind == "transactions":
                rows[hb.tx_id(i)] = i
                done += 1
                if done % 100_000 == 0:
                    say(
                        f"  {done:,} of {len(hb):,} transactions through the pipeline "
                        f"({done / (time.monotonic() - started):,.0f}/s)"
                    )
            if len(records) >= batch:
                flush()
        if records:
            flush()
    idx = np.array(which, dtype=np.int64)
    history = History(
        np.concatenate(feats) if feats else feature_matrix([]),
        hb.fraud[idx].astype(np.int8),
        np.array(ts, dtype=np.int64),
        np.array(rule, dtype=float),
        [hb.typology(int(i)) for i in idx],
        [hb.tx_id(int(i)) for i in idx],
    )
    return history, idx, pipeline.counters["dlq"]


def _metrics(y, s, days, customers, scenarios=None) -> dict:
    cp = card_precision_at_k(days, customers, y, s, 100)
    out = {
        "auc_roc": round(roc_auc(y, s), 4),
        "ap": round(average_precision(y, s), 4),
        "cp100": round(cp["mean"], 4),
        "cp100_per_day": [round(v, 4) for v in cp["per_day"]],
    }
    if scenarios is None:
        return out
    by_scenario = {}
    for code, name in SCENARIOS.items():
        rows = (scenarios == code) | (y == 0)
        if (y[rows] == 1).any():
            by_scenario[name] = round(average_precision(y[rows], s[rows]), 4)
    return {**out, "ap_by_scenario": by_scenario}


@dataclass
class Replayed:
    """The handbook's rows of a protocol's period, featurised by the worker's pipeline."""

    protocol: str
    data: Path
    hb: Handbook
    history: History
    idx: np.ndarray  # the hb row of each history row
    dead: int
    with_labels: bool
    featurise_s: float


def replay_handbook(
    data: Path,
    protocol: str = "ch5",
    warmup_days: int = 30,
    with_labels: bool = True,
    batch: int = 500,
    say: Progress = print,
) -> Replayed:
    """Read the protocol's period (and ``warmup_days`` before it) and run it through the
    pipeline, labels published ``DELAY_DAYS`` after their transactions."""
    plan = folds(protocol)
    start = plan[0].train_start - dt.timedelta(days=warmup_days)
    end = plan[-1].end
    t0 = time.monotonic()
    hb = read_handbook(data, start, end)
    say(f"{len(hb):,} transactions {start}..{end - dt.timedelta(days=1)} read")
    history, idx, dead = featurise_handbook(hb, DELAY_DAYS * DAY_MS, with_labels, batch, say)
    featurise_s = time.monotonic() - t0
    say(f"featurised in {featurise_s:.0f} s ({dead} dead-lettered)")
    return Replayed(protocol, data, hb, history, idx, dead, with_labels, featurise_s)


def run_handbook(
    data: Path,
    protocol: str = "ch5",
    cfg: TabularConfig | None = None,
    warmup_days: int = 30,
    with_labels: bool = True,
    batch: int = 500,
    say: Progress = print,
) -> dict:
    """The benchmark: one JSON-able report (per fold, the mean over folds, per scenario,
    the published numbers beside, and the hybrid's lead over LightGBM with an interval)."""
    t0 = time.monotonic()
    replayed = replay_handbook(data, protocol, warmup_days, with_labels, batch, say)
    report = evaluate_handbook(replayed, cfg or TabularConfig(), say)
    report["seconds"] = round(time.monotonic() - t0, 1)
    return report


def evaluate_handbook(replayed: Replayed, cfg: TabularConfig, say: Progress = print) -> dict:
    """Train and test on every fold of the replayed protocol (see ``run_handbook``)."""
    plan = folds(replayed.protocol)
    hb, history, idx = replayed.hb, replayed.history, replayed.idx
    days = (hb.ts_ms[idx] // DAY_MS + dt.date(1970, 1, 1).toordinal()).astype(np.int64)
    customers, scenarios = hb.customer[idx], hb.scenario[idx]
    y = history.labels.astype(float)
    report: dict = {
        "protocol": replayed.protocol,
        "data": str(replayed.data),
        "transactions": len(hb),
        "dead_lettered": replayed.dead,
        "labels_in_features": replayed.with_labels,
        "featurise_s": round(replayed.featurise_s, 1),
        "folds": [],
    }
    pooled: dict[str, list] = {"y": [], "hours": [], **{m: [] for m in MODELS}}
    for k, fold in enumerate(plan):
        lo, hi = day_ms(fold.train_start), day_ms(fold.train_start) + fold.train_days * DAY_MS
        train_rows = (history.ts_ms >= lo) & (history.ts_ms < hi)
        test_rows = known_compromised_removed(fold, days, customers, hb.fraud[idx])
        say(
            f"fold {k + 1}/{len(plan)} {fold.describe()}: train {int(train_rows.sum()):,} "
            f"({int(y[train_rows].sum())} frauds), test {int(test_rows.sum()):,} "
            f"({int(y[test_rows].sum())} frauds)"
        )
        t = time.monotonic()
        model = train(history.take(train_rows), cfg, say=lambda _m: None)
        test = history.take(test_rows)
        scores = model_scores(model, test)
        yt = y[test_rows]
        visible = label_visible(hb, idx[test_rows])
        entry = {
            **fold.describe(),
            "train_rows": int(train_rows.sum()),
            "train_frauds": int(y[train_rows].sum()),
            "test_rows": int(test_rows.sum()),
            "test_frauds": int(yt.sum()),
            "train_s": round(time.monotonic() - t, 1),
            "models": {
                m: _metrics(
                    yt, scores[m], days[test_rows], customers[test_rows], scenarios[test_rows]
                )
                for m in MODELS
            },
            # every fraud the labels can show ranked first, the rest (genuine payments and
            # the first week of each terminal compromise) tied below: the most any model
            # can be expected to reach on this week
            "invisible_frauds": int(yt.sum() - visible.sum()),
            "label_visible_oracle": _metrics(
                yt, visible.astype(float), days[test_rows], customers[test_rows]
            ),
        }
        report["folds"].append(entry)
        pooled["y"].append(yt)
        pooled["hours"].append(test.ts_ms // (DAY_MS // 24))
        for m in MODELS:
            pooled[m].append(scores[m])
        say(
            "  "
            + "  ".join(
                f"{m} AP {entry['models'][m]['ap']:.3f} CP@100 {entry['models'][m]['cp100']:.3f}"
                for m in MODELS
            )
        )
    report["mean"] = {
        m: {
            metric: round(float(np.mean([f["models"][m][metric] for f in report["folds"]])), 4)
            for metric in ("auc_roc", "ap", "cp100")
        }
        for m in MODELS
    }
    report["mean"]["label_visible_oracle"] = {
        metric: round(
            float(np.mean([f["label_visible_oracle"][metric] for f in report["folds"]])), 4
        )
        for metric in ("auc_roc", "ap", "cp100")
    }
    report["mean_ap_by_scenario"] = {
        m: {
            name: round(
                float(
                    np.mean(
                        [
                            f["models"][m]["ap_by_scenario"].get(name, np.nan)
                            for f in report["folds"]
                        ]
                    )
                ),
                4,
            )
            for name in SCENARIOS.values()
        }
        for m in MODELS
    }
    y_all = np.concatenate(pooled["y"])
    hours = np.concatenate(pooled["hours"])
    report["hybrid_vs_lightgbm_ap_pooled"] = ap_difference(
        y_all,
        np.concatenate(pooled["hybrid"]),
        np.concatenate(pooled["lightgbm"]),
        hours,
        rounds=500,
        seed=cfg.seed,
    )
    report["published"] = PUBLISHED.get(replayed.protocol, {})
    return report
