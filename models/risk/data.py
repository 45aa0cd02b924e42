"""The risk model's data: labelled histories featurised through the worker's own pipeline
(generated, or JSONL transactions with their labels), split in time."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace

import numpy as np
import orjson

from vigil.errors import DataError
from vigil.streams.currency import Rates, default_rates
from vigil.streams.features.library import DAY_MS, FEATURE_SPEC
from vigil.streams.sources.synthetic import GeneratorConfig

Progress = Callable[[str], None]


NetData = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # features, labels, GBDT logit


@dataclass
class History:
    """Featurised, labelled transactions in arrival order."""

    features: np.ndarray  # float32, rows x FEATURE_SPEC.names, NaN = no value
    labels: np.ndarray  # 0/1
    ts_ms: np.ndarray
    rule_scores: np.ndarray  # the rules-only score the worker gave each transaction
    typologies: list[str | None]
    tx_ids: list[str]
    accounts: list[str] | None = None  # the paying account of each row
    cases: list[str | None] | None = None  # the injected case of each row (generated)

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, mask: np.ndarray) -> History:
        idx = np.flatnonzero(mask)
        return History(
            self.features[idx],
            self.labels[idx],
            self.ts_ms[idx],
            self.rule_scores[idx],
            [self.typologies[i] for i in idx],
            [self.tx_ids[i] for i in idx],
            None if self.accounts is None else [self.accounts[i] for i in idx],
            None if self.cases is None else [self.cases[i] for i in idx],
        )


def featurise(
    lines: Iterable[bytes],
    truth: dict[str, tuple[int, str | None]] | dict[str, tuple[int, str | None, str | None]],
    batch: int = 100,
    rates: Rates | None = None,
) -> History:
    """Run raw transaction JSON through the risk pipeline (rules-only; amounts converted
    with ``rates``, default the built-in table) and keep the feature vector, the rules'
    score and the label of every labelled, valid transaction."""
    from vigil.streams.pipeline import RiskPipeline, fewer_collections
    from vigil.streams.schemas import record_batches

    pipeline = RiskPipeline(rates=rates, reporting_currency=(rates or default_rates()).base)
    store: dict = {}
    rows, labels, ts, rule, typ, ids, payers, cases = [], [], [], [], [], [], [], []
    with fewer_collections():
        for records in record_batches(lines, "history", batch):
            result = pipeline.process_local(records, store)
            vectors = []
            for _key, value in result.scores:
                s = orjson.loads(value)
                known = truth.get(s["tx_id"])
                if known is None:
                    continue
                vectors.append(s["features"])
                labels.append(known[0])
                typ.append(known[1])
                ts.append(s["ts_ms"])
                rule.append(s["score"])
                ids.append(s["tx_id"])
                payers.append(s["account_id"])
                cases.append(known[2] if len(known) > 2 else None)
            rows.append(feature_matrix(vectors))
    return History(
        np.concatenate(rows) if rows else feature_matrix([]),
        np.array(labels, dtype=np.int8),
        np.array(ts, dtype=np.int64),
        np.array(rule, dtype=float),
        typ,
        ids,
        payers,
        cases,
    )


def feature_matrix(vectors: list[list[float | None]]) -> np.ndarray:
    """Score records' ``features`` lists as float32 rows (None: NaN). Kept as one array per
    micro-batch, not a list per row: a list of 168 floats is 5 KB where the row is 672
    bytes, and the collector walks every element of every list at each full collection
    (replaying the handbook's 690,000 transactions spent half its time there)."""
    return np.array(vectors, dtype=np.float32).reshape(-1, len(FEATURE_SPEC.names))


# Days of history run through the pipeline before the first row a model trains on: the
# longest windows (30 days: an account's, its counterparty's) are full only after them. On
# a history that starts at one point, a 30-day count grows with the clock for its first 30
# days, so later days would lie outside the range the model learnt (1 day held out of 8:
# the hybrid expected 4x the positives it met).
WARMUP_DAYS = 30


def history_from_generator(
    days: int,
    seed: int = 7,
    accounts: int = 1000,
    typology_rate: float = 0.004,
    flow_typology_rate: float = 0.002,
    warmup_days: int = 0,
    stream: GeneratorConfig | None = None,
) -> History:
    """``days`` of the seeded synthetic population with its injected, labelled cases,
    after ``warmup_days`` more that only fill the state (models train on what follows:
    ``WARMUP_DAYS`` for training). ``stream``: the generator's whole configuration instead
    (its seed, accounts and rates; the history starts at its ``start_ms``)."""
    from vigil.streams.sources import TransactionGenerator
    from vigil.streams.sources.synthetic import DEFAULT_START_MS

    if stream is None:
        stream = GeneratorConfig(
            seed=seed,
            accounts=accounts,
            typology_rate=typology_rate,
            flow_typology_rate=flow_typology_rate,
            start_ms=DEFAULT_START_MS,
        )
    cfg = replace(stream, start_ms=stream.start_ms - warmup_days * DAY_MS)
    begin_ms = stream.start_ms
    end_ms = begin_ms + days * DAY_MS
    truth: dict[str, tuple[int, str | None, str | None]] = {}
    lines = []
    for g in TransactionGenerator(cfg):
        if g.tx is None:
            continue
        if g.tx["ts_ms"] >= end_ms:
            break
        if g.tx["ts_ms"] >= begin_ms:  # the warm-up's rows are featurised, not kept
            truth[g.tx["tx_id"]] = (g.label, g.typology, g.case)
        lines.append(g.value)
    return featurise(lines, truth)


def history_from_files(
    tx_path: str, labels_path: str, rates: Rates | None = None, warmup_days: float = 0
) -> History:
    """A JSONL history (contract transactions) and its labels (``vigil.labels`` records);
    amounts converted with ``rates`` (default: the built-in table). Rows of the first
    ``warmup_days`` (from the earliest labelled transaction) are featurised, not kept: they
    only fill the state. DataError when nothing is left after them."""
    from vigil.streams.sources import read_jsonl, read_labels

    truth = read_labels(labels_path)
    history = featurise((line for _k, line in read_jsonl(tx_path)), truth, rates=rates)
    if not warmup_days or not len(history):
        return history
    begin_ms = int(history.ts_ms.min()) + int(warmup_days * DAY_MS)
    kept = history.take(history.ts_ms >= begin_ms)
    if not len(kept):
        raise DataError(
            f"no labelled transaction after the {warmup_days:g} warm-up days of {tx_path}"
        )
    return kept


def temporal_split(history: History, holdout_days: float) -> tuple[History, History]:
    """Train on everything before the last ``holdout_days`` (by event time), test on those."""
    cut = history.ts_ms.max() - holdout_days * DAY_MS
    return history.take(history.ts_ms <= cut), history.take(history.ts_ms > cut)
