"""The counterparty's side and the labels: what an entity received and what is known of it.

Each counterparty (merchant, terminal, beneficiary account) has its own state, kept with the
partition that owns its id, exactly as the inflows are (``streams.features.inflows``): the
worker that scores a payment re-publishes it on the internal repartition topic for its
counterparty's partition, and the worker that owns that partition folds it into the
counterparty's ``PayeeLog``. Labels (``vigil.labels``, keyed by transaction) travel the same
way: a label naming its transaction's account and counterparty is routed to both, and folds
into the account's ``LabelLog`` and the counterparty's ``PayeeLog``.

Memory per key is bounded: hour buckets over ``KEEP_HOURS`` (31 days) at most, and at least
the newest ``MAX_PAYERS`` payers remembered per counterparty, at most ``PAYERS_SLACK`` more
(a busier counterparty's "new payer" counts payers it has forgotten as new; it forgets in
bulk, once every ``PAYERS_SLACK`` new payers, not at every payment). Restarts count
nothing twice: each log remembers the highest source offset folded per source partition,
and skips the rest.

Windows are hour-aligned. A payment counts in the windows of hour buckets ``(H - w, H]``,
H the hour of the event scored (the current hour so far included). A label counts by the
hour it became known (its ``ts_ms``), and only in buckets ``[H - w, H)``: hours before the
event's own, so a feature at time t reflects only labels known by t, whatever order the
stream delivered them in and across restarts (the buckets are the state).
"""

from __future__ import annotations

import bisect
from collections.abc import Mapping, Sequence
from itertools import chain, pairwise
from typing import Any

import numpy as np

from vigil.streams.features.base import FeatureError
from vigil.streams.features.library import (
    HOUR_MS,
    KEEP_HOURS,
    MAX_PAYERS,
    PAYERS_SLACK,
    Labels,
    Payee,
)

__all__ = [
    "KEEP_HOURS",
    "LabelEntry",
    "LabelLog",
    "PayeeLog",
    "PaymentRow",
    "payment_row",
    "label_features",
    "payee_features",
]

# PayeeLog bucket columns: hour, payments, amount, payments from a new payer, labels known,
# fraud labels known
P_HOUR, P_COUNT, P_SUM, P_NEW, P_LABELLED, P_FRAUD = range(6)
P_NCOL = 6
# LabelLog bucket columns: hour known, labels, fraud labels
L_HOUR, L_LABELLED, L_FRAUD = range(3)
L_NCOL = 3
# a payee log with this many buckets keeps their array until its next fold (smaller ones
# are made again by every batch that reads them: cheaper than keeping them)
KEEP_ARRAY_ROWS = 48


# A payment as its counterparty's partition receives it: a plain row (one per scored
# transaction, so no object per payment): payee, payer hash, event time, amount, source
# partition and offset.
PaymentRow = tuple[str, float, int, float, int, int]


def payment_row(row: Sequence) -> PaymentRow:
    """A decoded payment row, checked; ValueError when it is not one."""
    payee, payer, ts_ms, amount, partition, offset = row
    out = (str(payee), float(payer), int(ts_ms), float(amount), int(partition), int(offset))
    if not (out[0] and out[1] > 0 and out[3] > 0):
        raise ValueError("a payment needs a payee, a payer and a positive amount")
    return out


class LabelEntry:
    """One label as an account ("a") or counterparty ("c") partition receives it."""

    __slots__ = ("entity", "role", "known_ms", "fraud", "src_partition", "src_offset")

    def __init__(self, entity, role, known_ms, fraud, src_partition, src_offset):
        self.entity: str = entity
        self.role: str = role
        self.known_ms: int = known_ms
        self.fraud: int = fraud
        self.src_partition: int = src_partition
        self.src_offset: int = src_offset

    def row(self) -> list:
        return [
            self.entity,
            self.role,
            self.known_ms,
            self.fraud,
            self.src_partition,
            self.src_offset,
        ]

    @classmethod
    def from_row(cls, row: Sequence) -> LabelEntry:
        entity, role, known_ms, fraud, partition, offset = row
        entry = cls(str(entity), str(role), int(known_ms), int(fraud), int(partition), int(offset))
        if not entry.entity or entry.role not in ("a", "c") or entry.fraud not in (0, 1):
            raise ValueError("a label entry needs an entity, a role a/c and a label 0/1")
        return entry


# A bucket: its hour, then the counts and sums of its columns. A tuple of floats: the
# collector stops tracking those, and a busy payee holds hundreds of buckets (as lists,
# the buckets of the handbook's 10,000 terminals made full collections walk millions of
# objects: half the time of a replay).
Bucket = tuple[float, ...]


def _add(rows: list[Bucket], hour: int, values: Mapping[int, float], ncol: int) -> None:
    """Add ``values`` to the bucket of ``hour`` in ``rows`` (sorted by hour; plain tuples:
    a fold touches one or two buckets, and numpy's per-call cost would dominate). A bucket
    that changes is replaced (tuples cannot change): a saved snapshot may hold the old one
    (copy on write; the caller copies the outer list before a fold)."""
    at = len(rows)
    if rows and rows[-1][0] >= hour:
        at -= 1
        if rows[at][0] != hour:
            at = bisect.bisect_left(rows, hour, key=lambda r: r[0])
    found = at < len(rows) and rows[at][0] == hour
    row = list(rows[at]) if found else [float(hour)] + [0.0] * (ncol - 1)
    for col, v in values.items():
        row[col] += v
    if found:
        rows[at] = tuple(row)
    else:
        rows.insert(at, tuple(row))


def _trim(rows: list[Bucket]) -> None:
    """Drop the buckets more than ``KEEP_HOURS`` before the newest."""
    if rows and rows[0][0] <= rows[-1][0] - KEEP_HOURS:
        del rows[: bisect.bisect_right(rows, rows[-1][0] - KEEP_HOURS, key=lambda r: r[0])]


def _fold_labels(
    rows: list[Bucket],
    folded: dict[int, int],
    entries: Sequence[LabelEntry],
    labelled: int,
    fraud: int,
    ncol: int,
) -> int:
    """Count labels not folded before into ``rows`` by the hour each became known."""
    new = 0
    for e in entries:
        if e.src_offset <= folded.get(e.src_partition, -1):
            continue
        folded[e.src_partition] = e.src_offset
        new += 1
        _add(rows, e.known_ms // HOUR_MS, {labelled: 1.0, fraud: float(e.fraud)}, ncol)
    if new:
        _trim(rows)
    return new


def _rows(value: Any, ncol: int) -> list[Bucket]:
    rows = [tuple(float(v) for v in row) for row in value]
    if any(len(r) != ncol for r in rows) or any(a[0] >= b[0] for a, b in pairwise(rows)):
        raise FeatureError("bucket snapshot has the wrong shape or order")
    return rows


def _offsets(state: Mapping[str, Any], key: str) -> dict[int, int]:
    return {int(p): int(o) for p, o in state.get(key, {}).items()}


class PayeeLog:
    """A counterparty's hour buckets (payments received, labels known), the payers it
    remembers (payer hash -> its latest payment's time), and the source offsets folded
    (payments per transaction partition, labels per label partition)."""

    __slots__ = ("rows", "payers", "folded", "labels_folded", "_array")

    def __init__(self, rows=None, payers=None, folded=None, labels_folded=None) -> None:
        self.rows: list[Bucket] = [] if rows is None else rows
        self.payers: dict[float, int] = {} if payers is None else payers
        self.folded: dict[int, int] = {} if folded is None else folded
        self.labels_folded: dict[int, int] = {} if labels_folded is None else labels_folded
        self._array: tuple[list, np.ndarray] | None = None  # (rows it was made of, array)

    def __bool__(self) -> bool:
        return bool(self.rows)

    def fold_payments(self, rows: Sequence[PaymentRow]) -> int:
        new = 0
        self.rows = list(self.rows)  # copy on write (see _add)
        payers, folded = self.payers, self.folded
        for _payee, payer, ts_ms, amount, partition, offset in rows:
            if offset <= folded.get(partition, -1):
                continue
            folded[partition] = offset
            new += 1
            last = payers.get(payer)
            # new: never seen, or not within the kept buckets' span
            fresh = last is None or last <= ts_ms - KEEP_HOURS * HOUR_MS
            payers[payer] = ts_ms if last is None else max(last, ts_ms)
            _add(
                self.rows,
                ts_ms // HOUR_MS,
                {P_COUNT: 1.0, P_SUM: amount, P_NEW: float(fresh)},
                P_NCOL,
            )
        if new:
            _trim(self.rows)
            if len(payers) > MAX_PAYERS + PAYERS_SLACK:  # forget those seen longest ago
                newest = sorted(payers.items(), key=lambda kv: kv[1])[-MAX_PAYERS:]
                self.payers = dict(newest)
        return new

    def fold_labels(self, entries: Sequence[LabelEntry]) -> int:
        self.rows = list(self.rows)  # copy on write (see _add)
        return _fold_labels(self.rows, self.labels_folded, entries, P_LABELLED, P_FRAUD, P_NCOL)

    def paid_before(self, payer: float) -> bool:
        return payer in self.payers

    def kept(self) -> np.ndarray | None:
        """The buckets as an array, where one is kept for this very list of them (a fold
        replaces the list: copy on write)."""
        kept = self._array
        return kept[1] if kept is not None and kept[0] is self.rows else None

    def keep(self, array: np.ndarray) -> None:
        self._array = (self.rows, array)

    def snapshot(self) -> dict[str, Any]:
        return {
            "rows": self.rows,  # folds copy on write: this list never changes
            "payers": list(self.payers.items()),
            "folded": {str(p): o for p, o in self.folded.items()},
            "labels_folded": {str(p): o for p, o in self.labels_folded.items()},
        }

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> PayeeLog:
        try:
            return cls(
                _rows(state["rows"], P_NCOL),
                {float(k): int(v) for k, v in state["payers"]},
                _offsets(state, "folded"),
                _offsets(state, "labels_folded"),
            )
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise FeatureError(f"payee log snapshot malformed: {exc!r}") from exc


class LabelLog:
    """An account's own labels: hour buckets by the hour each became known."""

    __slots__ = ("rows", "folded")

    def __init__(self, rows=None, folded=None) -> None:
        self.rows: list[Bucket] = [] if rows is None else rows
        self.folded: dict[int, int] = {} if folded is None else folded

    def __bool__(self) -> bool:
        return bool(self.rows)

    def fold(self, entries: Sequence[LabelEntry]) -> int:
        self.rows = list(self.rows)  # copy on write (see _add)
        return _fold_labels(self.rows, self.folded, entries, L_LABELLED, L_FRAUD, L_NCOL)

    def kept(self) -> None:
        return None  # few buckets: made again for every batch that reads them

    def snapshot(self) -> dict[str, Any]:
        rows = self.rows  # folds copy on write: this list never changes
        return {"rows": rows, "folded": {str(p): o for p, o in self.folded.items()}}

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> LabelLog:
        try:
            return cls(_rows(state["rows"], L_NCOL), _offsets(state, "folded"))
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise FeatureError(f"label log snapshot malformed: {exc!r}") from exc


class _Buckets:
    """The hour buckets of several logs as one array keyed by (log slot, hour), with column
    prefix sums: a window's sum for many events is two ``searchsorted`` calls.

    ``slot_of[k]``: the slot of the k-th log. The logs that keep an array of their buckets
    (``KEEP_ARRAY_ROWS`` or more) go last, one array each; the others first, all of them
    from one pass over their rows (a batch reads a thousand small logs: an array per log
    cost five times that pass)."""

    _SHIFT = 32  # hours since 1970 stay below 2**32

    def __init__(self, logs: Sequence[PayeeLog | LabelLog], ncol: int) -> None:
        kept = [log.kept() for log in logs]
        made = [k for k, a in enumerate(kept) if a is None]
        have = [k for k, a in enumerate(kept) if a is not None]
        self.slot_of = np.empty(len(logs), dtype=np.int64)
        self.slot_of[made + have] = np.arange(len(logs))
        lengths = [len(logs[k].rows) for k in made]
        cells = chain.from_iterable(chain.from_iterable(logs[k].rows for k in made))
        count = sum(lengths) * ncol
        fresh = np.fromiter(cells, dtype=float, count=count).reshape(-1, ncol)
        at = 0
        for k, n in zip(made, lengths, strict=True):
            if n >= KEEP_ARRAY_ROWS:  # a copy: a view would hold the whole batch's array
                logs[k].keep(fresh[at : at + n].copy())
            at += n
        lengths += [len(kept[k]) for k in have]
        stacked = np.concatenate([fresh, *(kept[k] for k in have)]) if have else fresh
        slot = np.repeat(np.arange(len(logs), dtype=np.int64), lengths)
        self.key = (slot << self._SHIFT) + stacked[:, 0].astype(np.int64)
        self.csum = np.vstack([np.zeros((1, ncol)), np.cumsum(stacked, axis=0)])
        self._stacked = stacked

    def first_last(
        self, column: int, slots: np.ndarray, lo: np.ndarray, hi: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """Per event (its log's slot, hours ``[lo, hi)``): the first and the latest hour
        whose ``column`` is not 0 (-1 where none is)."""
        key = self.key[self._stacked[:, column] != 0]
        if not len(key):
            return np.full(len(slots), -1), np.full(len(slots), -1)
        base = slots.astype(np.int64) << self._SHIFT
        a = np.searchsorted(key, base + lo, "left")
        b = np.searchsorted(key, base + hi, "left")
        found, hour_of = b > a, (1 << self._SHIFT) - 1
        first = np.where(found, key[np.minimum(a, len(key) - 1)] & hour_of, -1)
        return first, np.where(found, key[np.maximum(b - 1, 0)] & hour_of, -1)

    def sums(self, slots: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
        """Per event (its log's slot, hours ``[lo, hi)``): every column's sum."""
        base = slots.astype(np.int64) << self._SHIFT
        a = np.searchsorted(self.key, base + lo, "left")
        b = np.searchsorted(self.key, base + hi, "left")
        return self.csum[b] - self.csum[a]


def _label_window(kind: str, labelled: np.ndarray, frauds: np.ndarray) -> np.ndarray:
    if kind == "frauds":
        return frauds
    if kind == "labelled":
        return labelled
    if kind == "fraud_rate":
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(labelled > 0, frauds / labelled, np.nan)
    raise FeatureError(f"unknown label feature kind {kind!r}")


def payee_features(
    ops: Mapping[str, Payee],
    payees: Sequence[str | None],
    payers: np.ndarray,
    ts: np.ndarray,
    logs: Mapping[str, PayeeLog | None],
) -> dict[str, np.ndarray]:
    """The ``Payee`` features of events (counterparty id, payer hash, event time). ``logs``:
    the counterparty's log, an empty one when it has none yet, or None where its state is
    not held here (the features are then NaN)."""
    n = len(payees)
    out = {name: np.full(n, np.nan) for name in ops}
    held = [(p, log) for p in dict.fromkeys(payees) if (log := logs.get(p)) is not None]
    slot_of = {p: k for k, (p, _log) in enumerate(held)}
    slots = np.array([slot_of.get(p, -1) for p in payees], dtype=np.int64)
    at = np.flatnonzero(slots >= 0)
    if not len(at):
        return out
    buckets = _Buckets([log for _p, log in held], P_NCOL)
    sl, hour = buckets.slot_of[slots[at]], (ts[at] // HOUR_MS).astype(np.int64)
    done: dict[tuple[str, int], np.ndarray] = {}
    for name, op in ops.items():
        if op.kind == "first_payment":
            known = [held[k][1].payers for k in slots[at].tolist()]
            out[name][at] = [
                0.0 if payer in seen else 1.0
                for payer, seen in zip(payers[at].tolist(), known, strict=True)
            ]
            continue
        w = op.window_ms // HOUR_MS
        if op.kind in ("fraud_first_hours", "fraud_last_hours"):
            which = ("fraud hours", w)  # both kinds from one search
            if which not in done:
                done[which] = np.stack(buckets.first_last(P_FRAUD, sl, hour - w, hour))
            at_hour = done[which][0 if op.kind == "fraud_first_hours" else 1]
            out[name][at] = np.where(at_hour >= 0, hour - at_hour, np.nan)
            continue
        labels = op.kind in ("frauds", "labelled", "fraud_rate")
        which = ("labels" if labels else "payments", w)
        if which not in done:  # labels: [H - w, H); payments: (H - w, H]
            lo, hi = (hour - w, hour) if labels else (hour - w + 1, hour + 1)
            done[which] = buckets.sums(sl, lo, hi)
        sums = done[which]
        if labels:
            out[name][at] = _label_window(op.kind, sums[:, P_LABELLED], sums[:, P_FRAUD])
        elif op.kind == "count":
            out[name][at] = sums[:, P_COUNT]
        elif op.kind == "sum":
            out[name][at] = sums[:, P_SUM]
        elif op.kind == "new_payers":
            out[name][at] = sums[:, P_NEW]
        elif op.kind == "new_payer_share":
            with np.errstate(divide="ignore", invalid="ignore"):
                count = sums[:, P_COUNT]
                out[name][at] = np.where(count > 0, sums[:, P_NEW] / count, np.nan)
        else:
            raise FeatureError(f"unknown payee feature kind {op.kind!r}")
    return out


def label_features(
    ops: Mapping[str, Labels],
    accounts: Sequence[str],
    ts: np.ndarray,
    logs: Mapping[str, LabelLog],
) -> dict[str, np.ndarray]:
    """The ``Labels`` features of events of accounts (their own labels known before the
    event's hour); most accounts have none: empty values at numpy speed."""
    n = len(accounts)
    out = {name: np.full(n, np.nan if op.kind == "fraud_rate" else 0.0) for name, op in ops.items()}
    if not logs or not ops:
        return out
    slot_of = {a: k for k, a in enumerate(logs)}
    slots = np.array([slot_of.get(a, -1) for a in accounts], dtype=np.int64)
    at = np.flatnonzero(slots >= 0)
    if not len(at):
        return out
    buckets = _Buckets(list(logs.values()), L_NCOL)
    sl, hour = buckets.slot_of[slots[at]], (ts[at] // HOUR_MS).astype(np.int64)
    done: dict[int, np.ndarray] = {}
    for name, op in ops.items():
        w = op.window_ms // HOUR_MS
        if w not in done:
            done[w] = buckets.sums(sl, hour - w, hour)
        sums = done[w]
        out[name][at] = _label_window(op.kind, sums[:, L_LABELLED], sums[:, L_FRAUD])
    return out
