"""The risk pipeline on one micro-batch: decode -> features -> rules -> model -> outputs.

A micro-batch may mix transactions with inflow records (the repartitioned payee side of
transfers, see streams.features.inflows): inflows are folded first, then the transactions
are scored, and each scored transfer yields an inflow record for its payee.

Pure: no broker code. The worker (apps/risk.py) feeds it raw records and per-account
state snapshots, and writes back what it returns.

Exactly-once *effects* on at-least-once delivery: each account's state remembers the last
source offset applied per partition, and an event at or below it is skipped, so a worker
restart that redelivers events does not count them twice. The worker makes outputs durable
before it saves state, so a skipped event's score record was already delivered.

No exception loses an event: ``process_isolated`` runs a batch and, where anything raises
(a rule, a reason template, the model, an output over the record size, a bug), splits it
in halves until the records that fail stand alone; each of those is dead-lettered with the
exception and every other record is scored. A failed attempt changes nothing the caller
keeps (its states and counts are thrown away), so offsets and per-account positions move
only past what was scored or dead-lettered.

Memory is bounded: per key by the feature library (a horizon and a row cap), and in keys
by ``IdleSweep``, which picks the states idle for longer than a TTL in event time.

A score the pipeline cannot stand behind is never ``allow``: where a feature is infinite
or the model's score is not a number in [0, 1], the transaction is scored ``review`` (at
least) with the reason ``INVALID_SCORE``, and the model's part is left out of its score.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import math
import sys
import time
from collections import Counter, OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import orjson

from vigil.errors import UsageError, VigilError
from vigil.streams.currency import Rates, RatesError, default_rates
from vigil.streams.features import FeatureError
from vigil.streams.features.engine import (
    AMOUNT,
    TS,
    WM,
    AccountLog,
    FeatureEngine,
    event_rows,
    key_hash,
)
from vigil.streams.features.inflows import (
    InflowLog,
    InflowRecord,
    SideBatch,
    decode_side,
    encode_side,
    funds_paths,
)
from vigil.streams.features.library import (
    FEATURE_SPEC,
    GRACE_MS,
    HORIZON_MS,
    HOUR_MS,
    KEEP_HOURS,
    TRANSFER_CHANNELS,
)
from vigil.streams.features.payee import LabelEntry, LabelLog, PayeeLog, PaymentRow
from vigil.streams.partitioning import partition_for
from vigil.streams.rules import (
    NUM,
    TX_FIELDS,
    Firing,
    Ruleset,
    Thresholds,
    alert_id,
    combine,
    decide,
    default_ruleset,
)
from vigil.streams.schemas import (
    MAX_RECORD_BYTES,
    DeadLetter,
    Label,
    RawRecord,
    Transaction,
    decode_transactions,
    dlq_counter,
)
from vigil.streams.scorers import ModelHolder

__all__ = [
    "AccountState",
    "BatchResult",
    "IdleSweep",
    "OutputTooLarge",
    "RiskPipeline",
    "RULE_NAMES",
    "GC_THRESHOLDS",
    "fewer_collections",
    "now_ms",
]

log = logging.getLogger(__name__)

_SMALLEST = sys.float_info.min

# What a rule may refer to: transaction fields and every feature, with their types.
RULE_NAMES: dict[str, str] = {**TX_FIELDS, **dict.fromkeys(FEATURE_SPEC.names, NUM)}
STATE_VERSION = FEATURE_SPEC.label


# The collector's thresholds for long runs over account state (the worker, in-process
# replays): full collections, which walk every object kept, 10x rarer (gen-2 threshold
# 100, not 10). With everything loaded before frozen: bench risk's per-batch p99 ~150-200
# ms -> ~45 ms at 5,000 tx/s; replaying the handbook 4,500 -> 5,700 tx/s.
GC_THRESHOLDS = (700, 20, 100)


@contextlib.contextmanager
def fewer_collections() -> Iterator[None]:
    """Run the block with ``GC_THRESHOLDS``, everything allocated before it out of the
    collector's sight (``gc.freeze``); then restore both (what was frozen before the block
    stays frozen)."""
    before, frozen = gc.get_threshold(), gc.get_freeze_count()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)
    try:
        yield
    finally:
        gc.set_threshold(*before)
        if not frozen:
            gc.unfreeze()


def now_ms() -> int:
    return time.time_ns() // 1_000_000


class OutputTooLarge(VigilError, ValueError):
    """An output record is over the record size the broker takes."""


class AccountState:
    """Feature state of one id, as a payer (its own log and the source offsets applied) and
    as a payee (inflows, payments received, labels), each part made when first used: most
    ids are only one of the two, and a state is made for every id a batch touches."""

    __slots__ = ("_features", "offsets", "_inflows", "_payee", "_labels")

    def __init__(
        self,
        features: AccountLog | None = None,
        offsets: dict[int, int] | None = None,
        inflows: InflowLog | None = None,
        payee: PayeeLog | None = None,
        labels: LabelLog | None = None,
    ) -> None:
        self._features = features
        self.offsets: dict[int, int] = {} if offsets is None else offsets  # partition -> offset
        self._inflows = inflows  # money in (as a payee of transfers)
        self._payee = payee  # as a counterparty, every channel
        self._labels = labels  # labels of its own transactions

    @property
    def features(self) -> AccountLog:
        if self._features is None:
            self._features = AccountLog()
        return self._features

    @property
    def inflows(self) -> InflowLog:
        if self._inflows is None:
            self._inflows = InflowLog()
        return self._inflows

    @property
    def payee(self) -> PayeeLog:
        if self._payee is None:
            self._payee = PayeeLog()
        return self._payee

    @property
    def labels(self) -> LabelLog:
        if self._labels is None:
            self._labels = LabelLog()
        return self._labels

    def applied(self, record: RawRecord) -> bool:
        return record.offset <= self.offsets.get(record.partition, -1)

    def last_ms(self) -> int | None:
        """Event time of the newest payment this account made or received (plain floats:
        this runs for every saved state, and numpy's reductions cost microseconds each)."""
        own = self._features
        newest = float(own.scalars[WM]) if own is not None else math.nan  # NaN: never paid
        latest = []
        if self._inflows is not None and len(self._inflows):
            latest.append(float(self._inflows.rows[-1, TS]))
        if self._payee:  # the end of its newest bucket's hour
            latest.append((self._payee.rows[-1][0] + 1) * HOUR_MS - 1)
        if self._labels:
            latest.append((self._labels.rows[-1][0] + 1) * HOUR_MS - 1)
        for t in latest:
            newest = t if newest != newest else max(newest, t)
        return None if newest != newest else int(newest)

    def snapshot(self) -> dict[str, Any]:
        state: dict[str, Any] = {"v": STATE_VERSION}
        if self.offsets:  # it paid (an entity that only received has no own log)
            state["features"] = self.features.snapshot()
            state["offsets"] = {str(p): o for p, o in self.offsets.items()}
        if self._inflows is not None and self._inflows.folded:
            state["inflows"] = self._inflows.snapshot()
        if self._payee is not None and (self._payee.folded or self._payee.labels_folded):
            state["payee"] = self._payee.snapshot()
        if self._labels is not None and self._labels.folded:
            state["labels"] = self._labels.snapshot()
        last_ms = self.last_ms()
        if last_ms is not None:
            state["last_ms"] = last_ms  # read by IdleSweep without decoding the logs
        return state

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> AccountState:
        if state.get("v") != STATE_VERSION:
            raise FeatureError(
                f"state has feature version {state.get('v')!r}, "
                f"this worker computes {STATE_VERSION!r}"
            )
        offsets = {int(p): int(o) for p, o in state.get("offsets", {}).items()}
        inflows = InflowLog.from_snapshot(state["inflows"]) if "inflows" in state else None
        payee = PayeeLog.from_snapshot(state["payee"]) if "payee" in state else None
        labels = LabelLog.from_snapshot(state["labels"]) if "labels" in state else None
        features = AccountLog.from_snapshot(state["features"]) if "features" in state else None
        return cls(features, offsets, inflows, payee, labels)


@dataclass
class BatchResult:
    scores: list[tuple[bytes, bytes]] = field(default_factory=list)  # (key, JSON value)
    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)
    dead: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    inflows: list[tuple[int, bytes]] = field(default_factory=list)  # (partition, inflow batch)
    states: dict[str, AccountState] = field(default_factory=dict)  # touched accounts
    # account -> source partition of its last record (its changelog partition)
    partition: dict[str, int] = field(default_factory=dict)
    counts: Counter[str] = field(default_factory=Counter)  # added to the pipeline's counters
    failed: int = 0  # records dead-lettered because processing them raised
    watermark_ms: int = 0  # the median event time of the batch's scored transactions


class IdleSweep:
    """Which account states to forget: those whose newest payment (made or received) is
    older than ``ttl_ms`` behind the event-time watermark, and those that only ever
    received money or labels (their features are windows over them) once it is older than
    the longest of those windows. Forgetting an account restarts its running statistics
    (age, dormancy, history mean), so ``ttl_ms`` should be longer than the dormancy that matters.

    Two phases: a state picked by one sweep is forgotten by the next only if it is still
    the very same object, so it was not written in between, and its source offsets had
    all that time to be committed (a redelivered event never meets a forgotten state)."""

    def __init__(self, ttl_ms: int, payee_ttl_ms: int = KEEP_HOURS * HOUR_MS + GRACE_MS) -> None:
        longest = max(HORIZON_MS, KEEP_HOURS * HOUR_MS) + GRACE_MS
        if ttl_ms < longest:
            raise UsageError(
                f"state TTL {ttl_ms} ms is shorter than the longest feature window "
                f"({longest} ms with its grace)"
            )
        self.ttl_ms, self.payee_ttl_ms = ttl_ms, payee_ttl_ms
        self._picked: dict[Any, dict[str, Any]] = {}

    def due(self, store: Mapping[Any, dict[str, Any]], watermark_ms: int) -> list[Any]:
        """The keys of ``store`` to forget now (and picks the ones for the next sweep)."""
        due = [k for k, snap in self._picked.items() if store.get(k) is snap]
        forgotten = set(due)
        self._picked = {}
        for key, snap in store.items():
            if key in forgotten or not isinstance(snap, dict):
                continue
            last_ms = snap.get("last_ms")
            if last_ms is None:
                continue  # no event time yet (or a snapshot from before last_ms): kept
            own = snap.get("features")  # absent: it only ever received
            wm = None if own is None else own["s"][WM]  # NaN in memory, null through JSON
            paid = wm is not None and wm == wm
            ttl = self.ttl_ms if paid else self.payee_ttl_ms
            if last_ms < watermark_ms - ttl:
                self._picked[key] = snap
        return due


class RiskPipeline:
    """Scores micro-batches of raw transaction records. Counters: ``self.counters``."""

    def __init__(
        self,
        ruleset: Ruleset | None = None,
        model: ModelHolder | None = None,
        thresholds: Thresholds | None = None,
        live_states: int = 100_000,
        inflow_topic: str = "vigil.risk.inflows",
        partitions: int = 1,
        max_record_bytes: int = MAX_RECORD_BYTES,
        labels_topic: str = "vigil.labels",
        rates: Rates | None = None,
        reporting_currency: str = "EUR",
    ) -> None:
        self.ruleset = ruleset or default_ruleset(RULE_NAMES)
        self.reporting_currency = reporting_currency
        self.set_rates(rates or default_rates(), counted=False)
        self.shadow: Ruleset | None = None
        self.model = model or ModelHolder()
        self.thresholds = thresholds or Thresholds()
        self.counters: Counter[str] = Counter()
        self.stage_seconds: Counter[str] = Counter()  # wall time per pipeline stage
        self.engine = FeatureEngine()
        # Deserialised states of recently saved accounts (see ``remember``).
        self._live: OrderedDict[str, tuple[dict[str, Any], AccountState]] = OrderedDict()
        self.live_states = live_states
        self.inflow_topic = inflow_topic
        self.labels_topic = labels_topic
        # whether a counterparty's state is held here (the worker owns its partition); where
        # not, its payee features are NaN
        self.payee_here: Callable[[str], bool] = lambda _id: True
        self.partitions = partitions  # of the transaction and inflow topics
        self._fed_back: list[tuple[int, bytes]] = []  # process_local: next batch's inflows
        self._fed_offset = 0
        self.max_record_bytes = max_record_bytes  # key + value of any output record
        # event-time watermark: the highest median event time of a batch (a few records
        # with far-future times do not move it, so they cannot make every state look idle)
        self.watermark_ms = 0

    def process_isolated(
        self,
        records: Sequence[RawRecord],
        load_state: Callable[[str], dict[str, Any] | None],
        consumed_ms: int | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> Iterator[BatchResult]:
        """``process`` on ``records``, or, where it raises, on halves of them in order,
        down to single records, which are dead-lettered with the exception.

        A generator: the caller must save each result's states (so that ``load_state``
        returns them) before it asks for the next, which may read them."""
        try:
            result = self.process(records, load_state, consumed_ms, clock)
        except Exception as exc:  # anything: a record must never be lost to it
            if len(records) > 1:
                log.warning(
                    "a batch of %d records raised %s: %s; isolating the records that fail",
                    len(records),
                    type(exc).__name__,
                    _short(exc),
                )
                mid = len(records) // 2
                yield from self.process_isolated(records[:mid], load_state, consumed_ms, clock)
                yield from self.process_isolated(records[mid:], load_state, consumed_ms, clock)
                return
            record = records[0]
            log.error(
                "record %s:%s@%s dead-lettered: processing it raised",
                record.topic,
                record.partition,
                record.offset,
                exc_info=exc,
            )
            error = f"processing raised {type(exc).__name__}: {_short(exc)}"
        else:
            yield result
            return
        out = BatchResult(failed=1)
        self._dead(out, record, DeadLetter.of(record, error, clock(), "raised"))
        out.counts["events"] += 1
        out.counts["failed"] += 1
        self.counters.update(out.counts)
        yield out

    def process(
        self,
        records: Sequence[RawRecord],
        load_state: Callable[[str], dict[str, Any] | None],
        consumed_ms: int | None = None,
        clock: Callable[[], int] = now_ms,
    ) -> BatchResult:
        consumed_ms = clock() if consumed_ms is None else consumed_ms
        out = BatchResult()
        t0 = time.perf_counter()
        inflow_records = [r for r in records if r.topic == self.inflow_topic]
        label_records = [r for r in records if r.topic == self.labels_topic]
        if inflow_records or label_records:
            side = (self.inflow_topic, self.labels_topic)
            records = [r for r in records if r.topic not in side]
        self._check_routing(out, records)
        valid, dead = decode_transactions(records, clock())
        rates = self.rates  # one table for the whole batch
        valid = self._convert(valid, rates, dead, clock)
        t1 = time.perf_counter()
        out.counts["events"] += len(records)
        for record, letter in dead:
            self._dead(out, record, letter)
        if inflow_records:
            self._fold_inflows(out, inflow_records, load_state, clock)
        routed: dict[int, SideBatch] = {}  # partition -> what goes there
        if label_records:
            self._route_labels(out, label_records, routed, clock)

        # The events these states have not applied yet, in partition order.
        fresh: list[Transaction] = []
        sources: list[RawRecord] = []
        amounts: list[float] = []  # in the reporting currency
        logs: dict[str, AccountLog] = {}
        inflows: dict[str, InflowLog] = {}
        for record, tx, amount in valid:
            try:
                state = self._state(out, tx.account_id, load_state)
            except (FeatureError, KeyError, TypeError, ValueError) as exc:
                error = f"account state unreadable: {exc}"
                self._dead(out, record, DeadLetter.of(record, error, clock(), "state"))
                continue
            if state.applied(record):
                out.counts["redelivered"] += 1
                continue
            fresh.append(tx)
            sources.append(record)
            amounts.append(amount)
            logs[tx.account_id] = state.features
            if state._inflows is not None and len(state._inflows):
                inflows[tx.account_id] = state._inflows
            state.offsets[record.partition] = record.offset
            out.partition[tx.account_id] = record.partition

        t2 = time.perf_counter()
        if fresh:
            out.watermark_ms = int(np.median([tx.ts_ms for tx in fresh]))
        accounts = [tx.account_id for tx in fresh]
        rows = event_rows(fresh, amounts)
        # extreme amounts may overflow a ratio: an infinite feature is caught below
        counterparties = [tx.counterparty_id for tx in fresh]
        payees = self._payees(out, counterparties, load_state)
        labels = {a: out.states[a]._labels for a in logs if out.states[a]._labels}
        with np.errstate(over="ignore", divide="ignore", invalid="ignore"):
            matrix = self.engine.compute(
                accounts, rows, logs, inflows, counterparties, payees, labels
            )
        self._publish_side(out, fresh, sources, rows, inflows, routed)
        t3 = time.perf_counter()
        spec_label = FEATURE_SPEC.label
        scorer = self.model.current  # one model and one ruleset for the whole batch
        ruleset, shadow = self.ruleset, self.shadow  # swapped only between batches
        ruleset_version = ruleset.label
        model_scores = scorer.score_batch(matrix)
        alerts: list[tuple[int, bytes, dict]] = []  # (row, key, alert): explained, then encoded
        needed = ruleset.names | (shadow.names if shadow else frozenset())
        cols = self._columns(fresh, rows, rates, matrix, needed)
        all_firings = ruleset.evaluate_batch(cols, len(fresh))
        shadow_firings = shadow.evaluate_batch(cols, len(fresh)) if shadow else None
        t4 = time.perf_counter()
        processed_ms = clock()
        invalid = self._invalid_rows(matrix, model_scores)
        for i, tx in enumerate(fresh):
            firings = all_firings[i]
            model_score = None if model_scores is None else float(model_scores[i])
            if invalid is not None and invalid[i]:
                model_score, firings = None, [*firings, self._invalid_score(matrix[i], model_score)]
                out.counts["invalid_scores"] += 1
            score = combine(firings, model_score)
            decision = decide(score, self.thresholds)
            if invalid is not None and invalid[i] and decision == "allow":
                decision = "review"
            hits = [{"rule": f.rule, "typology": f.typology, "score": f.score} for f in firings]
            key = tx.account_id.encode()
            record = {
                "tx_id": tx.tx_id,
                "account_id": tx.account_id,
                "ts_ms": tx.ts_ms,
                "score": score,
                "decision": decision,
                "rule_hits": hits,
                "model_version": scorer.version,
                "ruleset_version": ruleset_version,
                "rates_version": rates.label,
                "processed_ms": processed_ms,
                "consumed_ms": consumed_ms,
                "feature_spec": spec_label,
                "features": matrix[i],  # spec order; NaN (no value) is written as null
            }
            if shadow_firings is not None:
                record["shadow"] = self._shadow(out, shadow, shadow_firings[i], model_score)
            value = orjson.dumps(record, option=orjson.OPT_SERIALIZE_NUMPY)
            out.scores.append((key, self._fits("score", tx, key, value)))
            if decision != "allow":
                alert = {
                    "alert_id": alert_id(tx.tx_id, decision, firings, scorer.version),
                    "tx_id": tx.tx_id,
                    "account_id": tx.account_id,
                    "ts_ms": tx.ts_ms,
                    "amount": tx.amount,  # as paid
                    "currency": tx.currency,
                    "reporting_amount": amounts[i],
                    "reporting_currency": rates.base,
                    "score": score,
                    "decision": decision,
                    "reasons": [
                        {"code": f.code, "detail": f.detail, "weight": f.score} for f in firings
                    ],
                    "rule_hits": hits,
                    "model_version": scorer.version,
                    "ruleset_version": ruleset_version,
                    "rates_version": rates.label,
                    "processed_ms": processed_ms,
                }
                alerts.append((i, key, alert))
        if alerts and model_scores is not None and hasattr(scorer, "explain"):
            self._explain(alerts, scorer, matrix, model_scores)
        out.alerts = [
            (key, self._fits("alert", fresh[i], key, orjson.dumps(alert)))
            for i, key, alert in alerts
        ]
        out.counts["scored"] += len(out.scores)
        out.counts["alerts"] += len(out.alerts)
        self.counters.update(out.counts)  # only now: a batch that raised counts nothing
        self.watermark_ms = max(self.watermark_ms, out.watermark_ms)
        spent = self.stage_seconds
        spent["decode"] += t1 - t0
        spent["state"] += t2 - t1
        spent["features"] += t3 - t2
        spent["rules"] += t4 - t3  # includes the model call
        spent["outputs"] += time.perf_counter() - t4
        return out

    def _fits(self, what: str, tx: Transaction, key: bytes, value: bytes) -> bytes:
        size = len(key) + len(value)
        if size > self.max_record_bytes:
            raise OutputTooLarge(
                f"the {what} record of transaction {tx.tx_id!r} is {size} bytes, over the "
                f"{self.max_record_bytes}-byte record limit"
            )
        return value

    @staticmethod
    def _invalid_rows(matrix: np.ndarray, model_scores: np.ndarray | None) -> np.ndarray | None:
        """Rows whose features are infinite or whose model score is not in [0, 1] (None:
        no such row, the usual case)."""
        bad = np.isinf(matrix).any(axis=1)
        if model_scores is not None:
            scores = np.asarray(model_scores, dtype=float)
            with np.errstate(invalid="ignore"):
                bad |= ~((scores >= 0) & (scores <= 1))  # NaN fails both
        return bad if bad.any() else None

    def _invalid_score(self, row: np.ndarray, model_score: float | None) -> Firing:
        """The reason a transaction whose score cannot be trusted is reviewed."""
        infinite = [FEATURE_SPEC.names[j] for j in np.flatnonzero(np.isinf(row))]
        if infinite:
            what = f"features {', '.join(infinite[:5])} are infinite"
        else:
            what = f"the model scored {model_score!r}"
        return Firing(
            "invalid_score",
            "invalid_score",
            self.thresholds.review,
            "INVALID_SCORE",
            f"{what}: the model's score is left out and the transaction reviewed, not allowed",
        )

    def _check_routing(self, out: BatchResult, records: Sequence[RawRecord]) -> None:
        """Spot-check (one record per partition and batch) that producers place keys with
        Kafka's default partitioner: the inflow repartition relies on it."""
        if self.partitions < 2:
            return
        checked: set[int] = set()
        for r in records:
            if r.key is None or r.partition in checked:
                continue
            checked.add(r.partition)
            expected = partition_for(r.key, self.partitions)
            if expected != r.partition:
                if not self.counters["misrouted"] and not out.counts["misrouted"]:
                    log.warning(
                        "transaction key %r arrived on partition %d, Kafka's default "
                        "partitioner puts it on %d: producers must use it (librdkafka: "
                        "partitioner=murmur2_random) or inflow features will be incomplete",
                        r.key,
                        r.partition,
                        expected,
                    )
                out.counts["misrouted"] += 1

    def _fold_inflows(
        self,
        out: BatchResult,
        records: list[RawRecord],
        load_state: Callable[[str], dict[str, Any] | None],
        clock: Callable[[], int],
    ) -> None:
        """Fold internal records into the logs of the entities they name: inflows into
        payees' inflow logs, payments into counterparties' payee logs, labels into accounts'
        label logs and counterparties' payee logs (duplicates skipped)."""
        inflows: dict[str, list[InflowRecord]] = {}
        payments: dict[str, list[PaymentRow]] = {}
        labels: dict[tuple[str, str], list[LabelEntry]] = {}
        received = 0
        for record in records:
            try:
                batch = decode_side(record.value)
                entities = {
                    *(r.payee for r in batch.inflows),
                    *(r[0] for r in batch.payments),
                    *(r.entity for r in batch.labels),
                }
                for entity in entities:
                    self._state(out, entity, load_state)
            except (FeatureError, KeyError, TypeError, ValueError) as exc:
                self._dead(
                    out,
                    record,
                    DeadLetter.of(record, f"inflows not folded: {exc}", clock(), "internal"),
                )
                continue
            received += len(batch.inflows)
            for r in batch.inflows:
                inflows.setdefault(r.payee, []).append(r)
            for p in batch.payments:
                payments.setdefault(p[0], []).append(p)
            for e in batch.labels:
                labels.setdefault((e.entity, e.role), []).append(e)
            for entity in entities:
                out.partition[entity] = record.partition  # co-partitioned
        folded = sum(out.states[p].inflows.fold(b) for p, b in inflows.items())
        out.counts["inflows"] += folded
        out.counts["inflows_redelivered"] += received - folded
        out.counts["payments_folded"] += sum(
            out.states[p].payee.fold_payments(b) for p, b in payments.items()
        )
        for (entity, role), entries in labels.items():
            state = out.states[entity]
            if role == "a":
                out.counts["labels_folded"] += state.labels.fold(entries)
            else:
                out.counts["labels_folded"] += state.payee.fold_labels(entries)

    def _route_labels(
        self,
        out: BatchResult,
        records: list[RawRecord],
        routed: dict[int, SideBatch],
        clock: Callable[[], int],
    ) -> None:
        """Send each label to the partitions of its transaction's account and counterparty
        (where it names them: ``account_id``, ``counterparty_id``); a record that is not a
        label is dead-lettered; a label naming neither is counted (training still reads it)."""
        for record in records:
            try:
                label = Label.model_validate_json(record.value or b"")
                extra = label.model_extra or {}
                ids = [(extra.get("account_id"), "a"), (extra.get("counterparty_id"), "c")]
                for entity, _role in ids:
                    if entity is not None and not (
                        isinstance(entity, str) and 0 < len(entity) <= 128
                    ):
                        raise ValueError(f"{entity!r} is not an account or counterparty id")
            except ValueError as exc:
                error = f"not a label: {_short(exc)}"
                self._dead(out, record, DeadLetter.of(record, error, clock(), "label"))
                continue
            named = [(e, role) for e, role in ids if e is not None]
            if not named:
                out.counts["labels_unrouted"] += 1
                continue
            out.counts["labels"] += 1
            for entity, role in named:
                entry = LabelEntry(
                    entity, role, label.ts_ms, label.label, record.partition, record.offset
                )
                partition = partition_for(entity.encode(), self.partitions)
                routed.setdefault(partition, SideBatch()).labels.append(entry)

    def _payees(
        self,
        out: BatchResult,
        counterparties: list[str],
        load: Callable[[str], dict[str, Any] | None],
    ) -> dict[str, PayeeLog | None]:
        """The payee log of each counterparty (read, not changed: a counterparty's state is
        not saved for being read), None where its state is not held here."""
        logs: dict[str, PayeeLog | None] = {}
        for cp in counterparties:
            if cp in logs:
                continue
            state = out.states.get(cp)
            if state is not None:
                logs[cp] = state._payee or PayeeLog()
            elif not self.payee_here(cp):
                logs[cp] = None
            else:
                snapshot = load(cp)
                if snapshot is None:
                    logs[cp] = PayeeLog()
                    continue
                live = self._live.get(cp)
                if live is not None and live[0] is snapshot:
                    logs[cp] = live[1]._payee or PayeeLog()
                    continue
                try:
                    peeked = AccountState.from_snapshot(snapshot)
                except (FeatureError, KeyError, TypeError, ValueError):
                    logs[cp] = None  # unreadable: the owner's own batch dead-letters it
                    continue
                self.remember(cp, snapshot, peeked)
                logs[cp] = peeked._payee or PayeeLog()
        return logs

    def _publish_side(
        self,
        out: BatchResult,
        txs: list[Transaction],
        records: list[RawRecord],
        rows: np.ndarray,
        inflows: dict[str, InflowLog],
        routed: dict[int, SideBatch],
    ) -> None:
        """The batch's payments for their counterparties (every channel; transfers also as
        inflows of their payee accounts) and its routed labels, one message per partition."""
        transfers = [
            i
            for i, tx in enumerate(txs)
            if tx.channel in TRANSFER_CHANNELS
            and tx.counterparty_id
            and tx.counterparty_id != tx.account_id
        ]
        paths = funds_paths([txs[i].account_id for i in transfers], rows[transfers, TS], inflows)
        sources = dict(zip(transfers, map(tuple, paths.tolist()), strict=True))
        amounts = rows[:, AMOUNT].tolist()  # in the reporting currency
        for i, tx in enumerate(txs):
            payee = tx.counterparty_id
            if not payee or payee == tx.account_id:
                continue
            record = records[i]
            batch = routed.setdefault(partition_for(payee.encode(), self.partitions), SideBatch())
            payer = key_hash(tx.account_id)
            amount = amounts[i]
            batch.payments.append(
                (payee, int(payer), tx.ts_ms, amount, record.partition, record.offset)
            )
            if i in sources:
                batch.inflows.append(
                    InflowRecord(
                        payee,
                        payer,
                        tx.ts_ms,
                        amount,
                        sources[i],
                        record.partition,
                        record.offset,
                        tx.tx_id,
                    )
                )
        for partition, batch in sorted(routed.items()):
            out.inflows.extend((partition, value) for value in self._side_values(batch))

    def _side_values(self, batch: SideBatch) -> Iterator[bytes]:
        """``batch`` as internal records, in halves where one would be over the record size
        (an entry is at most a few hundred bytes: ids are at most 128 characters)."""
        value = encode_side(batch)
        if len(value) <= self.max_record_bytes or len(batch) == 1:
            yield value
            return
        for half in batch.halves():
            if len(half):
                yield from self._side_values(half)

    @staticmethod
    def _explain(alerts: list[tuple[int, bytes, dict]], scorer, matrix, model_scores) -> None:
        """Add the model's reason to alerts: its score and the GBDT's top contributing
        features (computed for alerted rows only)."""
        tops = scorer.explain(matrix[[i for i, _, _ in alerts]], FEATURE_SPEC.names)
        for (i, _key, alert), top in zip(alerts, tops, strict=True):
            listed = ", ".join(f"{name} ({weight:+.2f})" for name, weight in top)
            alert["reasons"].append(
                {
                    "code": "model",
                    "detail": f"model score {model_scores[i]:.2f}; top features: {listed or '-'}",
                    "weight": round(float(model_scores[i]), 6),
                    "features": [{"name": n, "contribution": round(w, 6)} for n, w in top],
                }
            )

    def _shadow(
        self, out: BatchResult, shadow: Ruleset, firings: list[Firing], model_score: float | None
    ) -> dict:
        """What the shadow ruleset would have decided: recorded, never alerted."""
        score = combine(firings, model_score)
        if firings:
            out.counts["shadow_hits"] += 1
        return {
            "ruleset_version": shadow.label,
            "score": score,
            "decision": decide(score, self.thresholds),
            "rule_hits": [
                {"rule": f.rule, "typology": f.typology, "score": f.score} for f in firings
            ],
        }

    def set_ruleset(self, ruleset: Ruleset) -> None:
        """Install a live or shadow ruleset; takes effect at the next micro-batch."""
        if ruleset.mode == "shadow":
            self.shadow = ruleset
        else:
            self.ruleset = ruleset
        self.counters["ruleset_swaps"] += 1

    def set_rates(self, rates: Rates, counted: bool = True) -> None:
        """Install a rates table; takes effect at the next micro-batch. One in another base
        than the reporting currency is refused (``RatesError``): the rules' thresholds and
        the model were set in that one."""
        if rates.base != self.reporting_currency:
            raise RatesError(
                f"rates table {rates.label} is in {rates.base}, but the reporting currency "
                f"is {self.reporting_currency} (setting reporting_currency): refused"
            )
        self.rates = rates
        if counted:
            self.counters["rates_swaps"] += 1

    @staticmethod
    def _convert(
        valid: list[tuple[RawRecord, Transaction]],
        rates: Rates,
        dead: list[tuple[RawRecord, DeadLetter]],
        clock: Callable[[], int],
    ) -> list[tuple[RawRecord, Transaction, float]]:
        """Each transaction with its amount in the reporting currency; one in a currency
        the table does not list goes to ``dead``. An amount too small for a double after
        conversion counts as the smallest normal one (a log of it stays finite)."""
        table = rates.rates
        out = []
        for record, tx in valid:
            rate = table.get(tx.currency)
            if rate is None:
                error = (
                    f"currency {tx.currency} is not in rates table {rates.label} "
                    f"({len(table)} currencies, base {rates.base})"
                )
                dead.append((record, DeadLetter.of(record, error, clock(), "currency")))
                continue
            out.append((record, tx, max(tx.amount * rate, _SMALLEST)))
        return out

    @staticmethod
    def _columns(
        txs: list[Transaction],
        rows: np.ndarray,
        rates: Rates,
        features: np.ndarray,
        names: frozenset[str],
    ) -> dict[str, np.ndarray]:
        """The batch as columns, only those the ruleset reads (missing numbers: NaN)."""
        cols: dict[str, np.ndarray] = {}
        for name in names:
            kind = TX_FIELDS.get(name)
            if kind is None:
                cols[name] = features[:, FEATURE_SPEC.index(name)]
            elif name == "amount":
                cols[name] = rows[:, AMOUNT]
            elif name == "original_amount":
                cols[name] = np.array([tx.amount for tx in txs], dtype=float)
            elif name == "paid":
                cols[name] = np.array([f"{tx.amount:,.2f} {tx.currency}" for tx in txs], object)
            elif name == "reporting_currency":
                cols[name] = np.full(len(txs), rates.base, dtype=object)
            elif kind == NUM:
                cols[name] = np.array([getattr(tx, name) for tx in txs], dtype=float)
            else:
                cols[name] = np.array([getattr(tx, name) for tx in txs], dtype=object)
        return cols

    def process_local(
        self, records: Sequence[RawRecord], store: dict[str, dict[str, Any]], consumed_ms: int = 0
    ) -> BatchResult:
        """One micro-batch of an in-process run (bench, backtest, tests): account states in
        the plain dict ``store``, and this batch's inflow records delivered at the start of
        the next call, as the inflow topic would deliver them to the worker."""
        fed = [
            RawRecord(self.inflow_topic, partition, self._fed_offset + i, None, value)
            for i, (partition, value) in enumerate(self._fed_back)
        ]
        self._fed_offset += len(fed)
        result = self.process([*fed, *records], store.get, consumed_ms)
        saving = time.perf_counter()
        self.save_states(result, store)
        self.stage_seconds["state"] += time.perf_counter() - saving
        self._fed_back = result.inflows
        return result

    def save_states(self, result: BatchResult, store: dict[str, dict[str, Any]]) -> None:
        """Keep a batch's account states in a plain dict (in-process runs: bench, backtest)."""
        for account_id, state in result.states.items():
            snapshot = state.snapshot()
            store[account_id] = snapshot
            self.remember(account_id, snapshot, state)

    def remember(self, account_id: str, snapshot: dict[str, Any], state: AccountState) -> None:
        """Record that ``snapshot`` of ``state`` was saved: while the store still returns
        that very object, the next batch reuses ``state`` instead of restoring it."""
        self._live[account_id] = (snapshot, state)
        self._live.move_to_end(account_id)
        if len(self._live) > self.live_states:
            self._live.popitem(last=False)

    def forget(self, account_id: str) -> None:
        """Drop an account forgotten by the store from the live-state cache."""
        self._live.pop(account_id, None)

    def _state(
        self, out: BatchResult, account_id: str, load: Callable[[str], dict[str, Any] | None]
    ) -> AccountState:
        state = out.states.get(account_id)
        if state is None:
            snapshot = load(account_id)
            live = self._live.pop(account_id, None)  # popped: it is about to change
            if snapshot is None:
                state = AccountState()
            elif live is not None and live[0] is snapshot:
                state = live[1]
            else:
                state = AccountState.from_snapshot(snapshot)
            out.states[account_id] = state
        return state

    def _dead(self, out: BatchResult, record: RawRecord, letter: DeadLetter) -> None:
        out.counts["dlq"] += 1
        out.counts[dlq_counter(letter.reason)] += 1
        log.debug(
            "dead letter %s:%s@%s: %s", record.topic, record.partition, record.offset, letter.error
        )
        out.dead.append(letter.encode(record, self.max_record_bytes))


def _short(exc: BaseException, limit: int = 300) -> str:
    text = str(exc)
    return text if len(text) <= limit else text[: limit - 3] + "..."
