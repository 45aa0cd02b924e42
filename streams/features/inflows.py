"""Money into an account: the payee side of other accounts' transfers.

A transaction is keyed by its payer, so the payer's worker never sees what the payee
received. Fan-in, pass-through, round-tripping and scatter-gather all need that, so the
risk worker repartitions: every transfer (``TRANSFER_CHANNELS``) it scores is re-published
for its payee on the internal topic ``vigil.risk.inflows``.

How it scales: that topic has the partition count of ``vigil.transactions``, and an inflow
goes to the partition Kafka's default (murmur2) partitioner gives its payee's id, which is
where the payee's own transactions are (streams.partitioning). faust assigns co-partitioned
topics together, so the worker that scores X also folds X's inflows, into the same state
entry: no remote lookups, no shared store, and adding partitions and workers scales the
inflow side with the transaction side. The inflows of one micro-batch travel as one message
per destination partition (a few messages per batch, not one per transfer); the payee side
costs a bounded log per payee (``MAX_INFLOW_ROWS`` newest inflows within the horizon), so a
merchant-like hot payee cannot grow without bound.

Semantics: a micro-batch first folds the inflow records it received, then scores its
transactions; a transaction sees the inflows folded so far whose event time lies in
``(ts - window, ts]``. Each inflow carries its source transaction's (partition, offset);
the payee remembers the highest offset folded per source partition and skips anything at
or below it, so redelivery and re-publication after a restart are counted once.

Each inflow also carries the payer's *source of funds*: the payer of the payer's latest
inflow (within a week, as of the transfer), and that one's source, and so on: the path the
money came along, ``PATH_HOPS`` accounts back. A payee whose payers share one source
received money that fanned out from one account and gathered again: scatter-gather. A
payment to an account that is on the path of the payer's own recent inflows closes a
cycle: money that went round a ring of 2 to ``PATH_HOPS + 1`` accounts (``cycle_7d``).
"""

from __future__ import annotations

import base64
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import orjson

from vigil.errors import DataError
from vigil.streams.features.base import FeatureError
from vigil.streams.features.library import (
    GRACE_MS,
    HORIZON_MS,
    MAX_INFLOW_ROWS,
    WEEK_MS,
    Inflow,
)
from vigil.streams.features.payee import LabelEntry, PaymentRow, payment_row

__all__ = [
    "InflowLog",
    "InflowRecord",
    "SideBatch",
    "decode_inflows",
    "decode_side",
    "encode_inflows",
    "encode_side",
    "funds_paths",
    "inflow_features",
]

# Inflow log columns (float64): event time, amount, payer hash, then the path of the
# money before it (hashes, 0 where unknown): the payer's source of funds, its source, ...
TS, AMOUNT, PAYER, SOURCE, HOP3, HOP4, HOP5 = range(7)
NCOL = 7
PATH = slice(PAYER, NCOL)  # the accounts the money came through, nearest first
PATH_HOPS = NCOL - PAYER  # 5: a ring of up to 6 accounts shows
_NCOL_V1 = 4  # snapshots and records before the path (payer and source only)
_EMPTY = {  # a feature's value when the window holds no inflow
    "count": 0.0,
    "sum": 0.0,
    "max": np.nan,
    "distinct_payers": 0.0,
    "time_since": np.nan,
    "round_trip": 0.0,
    "shared_source": 0.0,
    "cycle": 0.0,
}


class InflowRecord:
    """One transfer as its payee receives it."""

    __slots__ = (
        "payee",
        "payer",
        "ts_ms",
        "amount",
        "path",
        "src_partition",
        "src_offset",
        "tx_id",
    )

    def __init__(self, payee, payer, ts_ms, amount, path, src_partition, src_offset, tx_id):
        self.payee: str = payee
        self.payer: float = payer  # hash of the payer's account id
        self.ts_ms: int = ts_ms
        self.amount: float = amount
        # hashes of the accounts the money came through before the payer, nearest (its
        # source of funds) first, 0 where unknown: PATH_HOPS - 1 of them
        self.path: tuple[float, ...] = path
        self.src_partition: int = src_partition
        self.src_offset: int = src_offset
        self.tx_id: str = tx_id

    @property
    def source(self) -> float:
        """The payer's source of funds (hash), 0 if none."""
        return self.path[0]

    def row(self) -> list:
        return [
            self.payee,
            self.tx_id,
            int(self.payer),
            self.ts_ms,
            self.amount,
            int(self.path[0]),
            self.src_partition,
            self.src_offset,
            [int(h) for h in self.path[1:]],
        ]


def encode_inflows(records: Sequence[InflowRecord]) -> bytes:
    """The value of one ``vigil.risk.inflows`` record (internal): the inflows of one source
    micro-batch whose payees map to one partition. Batching them keeps the repartition at a
    few messages per micro-batch instead of one per transfer."""
    return orjson.dumps({"v": 1, "inflows": [r.row() for r in records]})


def decode_inflows(value: bytes | None) -> list[InflowRecord]:
    return decode_side(value).inflows


class SideBatch:
    """What one ``vigil.risk.inflows`` record carries to one partition: transfers for their
    payees' inflow logs, payments (every channel) for their counterparties' payee logs, and
    labels for their accounts' and counterparties' logs (``streams.features.payee``)."""

    __slots__ = ("inflows", "payments", "labels")

    def __init__(self, inflows=None, payments=None, labels=None) -> None:
        self.inflows: list[InflowRecord] = inflows or []
        self.payments: list[PaymentRow] = payments or []
        self.labels: list[LabelEntry] = labels or []

    def __len__(self) -> int:
        return len(self.inflows) + len(self.payments) + len(self.labels)

    def halves(self) -> tuple[SideBatch, SideBatch]:
        a, b = SideBatch(), SideBatch()
        for name in self.__slots__:
            items = getattr(self, name)
            mid = len(items) // 2
            setattr(a, name, items[:mid])
            setattr(b, name, items[mid:])
        return a, b


def encode_side(batch: SideBatch) -> bytes:
    """Version 3 of the internal record (version 1 carried inflows only, version 2 no
    path beyond the source of funds)."""
    doc: dict[str, Any] = {"v": 3}
    if batch.inflows:
        doc["inflows"] = [r.row() for r in batch.inflows]
    if batch.payments:
        doc["payments"] = batch.payments  # rows already
    if batch.labels:
        doc["labels"] = [r.row() for r in batch.labels]
    return orjson.dumps(doc)


def decode_side(value: bytes | None) -> SideBatch:
    """A version 1, 2 or 3 internal record; FeatureError when it is malformed."""
    try:
        doc = orjson.loads(value or b"")
        if doc.get("v") not in (1, 2, 3):
            raise DataError(f"unknown inflow batch version {doc.get('v')!r}")
        payments = [payment_row(r) for r in doc.get("payments", ())]
        labels = [LabelEntry.from_row(r) for r in doc.get("labels", ())]
        out = []
        for i, row in enumerate(doc.get("inflows", ())):
            payee, tx_id, payer, ts_ms, amount, source, partition, offset, *rest = row
            further = [float(h) for h in (rest[0] if rest else ())]
            if len(rest) > 1 or len(further) > PATH_HOPS - 2:
                raise DataError(f"inflow {i}: {len(row)} fields, a path of {len(further)}")
            further += [0.0] * (PATH_HOPS - 2 - len(further))
            rec = InflowRecord(
                str(payee),
                float(payer),
                int(ts_ms),
                float(amount),
                (float(source), *further),
                int(partition),
                int(offset),
                str(tx_id),
            )
            if not (rec.amount > 0 and rec.payer > 0 and rec.payee):
                raise DataError(f"inflow {i}: payee, payer and amount must be set and positive")
            out.append(rec)
    except (orjson.JSONDecodeError, AttributeError, KeyError, TypeError, ValueError) as exc:
        raise FeatureError(f"inflow batch malformed: {exc}") from exc
    return SideBatch(out, payments, labels)


class InflowLog:
    """One entity's recent inflows (sorted by event time) and the source offsets folded."""

    __slots__ = ("rows", "folded")

    def __init__(self, rows: np.ndarray | None = None, folded: dict[int, int] | None = None):
        self.rows = np.empty((0, NCOL)) if rows is None else rows
        self.folded = {} if folded is None else folded  # source partition -> highest offset

    def __len__(self) -> int:
        return len(self.rows)

    def fold(self, records: Sequence[InflowRecord]) -> int:
        """Add inflows not folded before (in the given order); returns how many were new."""
        new = []
        for r in records:
            if r.src_offset <= self.folded.get(r.src_partition, -1):
                continue
            self.folded[r.src_partition] = r.src_offset
            new.append((r.ts_ms, r.amount, r.payer, *r.path))
        if new:
            rows = np.concatenate([self.rows, np.array(new, dtype=float)])
            rows = rows[np.argsort(rows[:, TS], kind="stable")]
            oldest = rows[-1, TS] - HORIZON_MS - GRACE_MS
            keep = max(
                int(np.searchsorted(rows[:, TS], oldest, "right")), len(rows) - MAX_INFLOW_ROWS
            )
            self.rows = rows[keep:]
        return len(new)

    def snapshot(self) -> dict[str, Any]:
        return {
            "c": NCOL,
            "rows": base64.b64encode(np.ascontiguousarray(self.rows).tobytes()).decode(),
            "folded": {str(p): o for p, o in self.folded.items()},
        }

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> InflowLog:
        try:
            raw = base64.b64decode(state["rows"], validate=True)
            folded = {int(p): int(o) for p, o in state["folded"].items()}
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise FeatureError(f"inflow log snapshot malformed: {exc!r}") from exc
        ncol = state.get("c", _NCOL_V1)
        if ncol not in (NCOL, _NCOL_V1) or len(raw) % (8 * ncol):
            raise FeatureError("inflow log snapshot has the wrong shape")
        rows = np.frombuffer(raw, dtype=float).reshape(-1, ncol)
        if ncol == _NCOL_V1:  # no path beyond the source: unknown (0)
            rows = np.hstack([rows, np.zeros((len(rows), NCOL - ncol))])
        return cls(rows.copy(), folded)


def inflow_features(
    ops: Mapping[str, Inflow],
    accounts: Sequence[str],
    ts: np.ndarray,
    counterparties: np.ndarray,
    logs: Mapping[str, InflowLog],
) -> dict[str, np.ndarray]:
    """The ``Inflow`` features of events (account, event time, counterparty hash). Most
    accounts receive nothing: they get the empty values at numpy speed; the rest are
    computed per event over their (short) logs."""
    n = len(accounts)
    out = {name: np.full(n, _EMPTY[op.kind]) for name, op in ops.items()}
    if not logs:
        return out
    windows = sorted({op.window_ms for op in ops.values()})
    for i, account in enumerate(accounts):
        log = logs.get(account)
        if log is None or not len(log.rows):
            continue
        t = log.rows[:, TS]
        at = ts[i]
        hi = int(np.searchsorted(t, at, "right"))
        lo = {w: int(np.searchsorted(t, at - w, "right")) for w in windows}
        for name, op in ops.items():
            rows = log.rows[lo[op.window_ms] : hi]
            if len(rows):
                out[name][i] = _inflow_value(op.kind, rows, at, counterparties[i])
    return out


def _inflow_value(kind: str, rows: np.ndarray, at: float, counterparty: float) -> float:
    if kind == "count":
        return float(len(rows))
    if kind == "sum":
        return float(rows[:, AMOUNT].sum())
    if kind == "max":
        return float(rows[:, AMOUNT].max())
    if kind == "distinct_payers":
        return float(len(np.unique(rows[:, PAYER])))
    if kind == "time_since":
        return float(at - rows[-1, TS])
    if kind == "round_trip":
        return float(counterparty != 0 and bool((rows[:, PAYER] == counterparty).any()))
    if kind == "shared_source":
        sourced = rows[rows[:, SOURCE] != 0]
        if not len(sourced):
            return 0.0
        pairs = np.unique(sourced[:, [SOURCE, PAYER]], axis=0)  # distinct (source, payer)
        return float(np.unique(pairs[:, 0], return_counts=True)[1].max())
    if kind == "cycle":  # accounts in the shortest ring this payment closes, 0 if none
        if counterparty == 0:
            return 0.0
        hit = (rows[:, PATH] == counterparty).any(axis=0)
        return float(np.argmax(hit) + 2) if hit.any() else 0.0
    raise FeatureError(f"unknown inflow feature kind {kind!r}")


def funds_paths(
    accounts: Sequence[str], ts: np.ndarray, logs: Mapping[str, InflowLog]
) -> np.ndarray:
    """Each payer's path of funds as of its transfer (one row of ``PATH_HOPS - 1`` hashes
    each): its source of funds, the payer of its latest inflow with event time in
    ``(ts - 1 week, ts]``, then that inflow's own path; zeros if none."""
    out = np.zeros((len(accounts), PATH_HOPS - 1))
    for i, account in enumerate(accounts):
        log = logs.get(account)
        if log is None or not len(log.rows):
            continue
        t = log.rows[:, TS]
        hi = int(np.searchsorted(t, ts[i], "right"))
        if hi and t[hi - 1] > ts[i] - WEEK_MS:
            out[i] = log.rows[hi - 1, PAYER : NCOL - 1]
    return out
