"""Evaluates the feature library for a whole micro-batch with numpy.

State per account (``AccountLog``): the events of the last ``HORIZON_MS + GRACE_MS`` as one
float64 array (rows sorted by event time, equal times in arrival order) plus a few running
scalars. It snapshots to a compact JSON-safe dict, which is what faust tables carry.

For a batch, the logs of the accounts it touches and its new events are laid out as one
array sorted by (account, event time); every window becomes an index range ending at the
event, found with one ``searchsorted``; aggregates over all ranges at once come from
``ufunc.reduceat`` over the concatenated ranges. Distinct keys use the previous occurrence
of the same key (one stable sort per key column): an event in the range counts when its
previous occurrence lies before the range. Running statistics (Welford mean/variance, EWMA,
time since previous) advance in arrival order, vectorised across accounts.

An account's events inside one batch that go back in time (allowed within the grace) would
let an earlier arrival see a later one; the batch is then split into rounds at each such
step, so every event sees exactly the events that arrived before it.
"""

from __future__ import annotations

import base64
import math
import zlib
from collections.abc import Sequence
from typing import Any

import numpy as np

from vigil.streams.features.base import FeatureError
from vigil.streams.features.inflows import InflowLog, inflow_features
from vigil.streams.features.library import (
    CHANNELS,
    DAY_MS,
    EWM_ALPHA,
    FEATURE_SPEC,
    FEATURES,
    GRACE_MS,
    HIGH_RISK_COUNTRIES,
    HIGH_RISK_MCC,
    HORIZON_MS,
    HOUR_MS,
    MAX_ACCOUNT_ROWS,
    MCC_NONE_RISK,
    MCC_RISK,
    MCC_UNKNOWN_RISK,
    MONTH_DAYS_KEPT,
    MONTH_MS,
    NEAR_THRESHOLD_FROM,
    NIGHT_HOURS,
    REPORTING_THRESHOLD,
    ROUND_UNIT,
    SMALL_AMOUNT,
    ZSCORE_MIN_REL_STD,
    Current,
    Distinct,
    Entropy,
    FeatureSpec,
    Inflow,
    Labels,
    Payee,
    Ratio,
    Recent,
    Sequential,
    Windowed,
)
from vigil.streams.features.payee import LabelLog, PayeeLog, label_features, payee_features
from vigil.streams.schemas import Transaction

__all__ = ["AccountLog", "FeatureEngine", "key_hash", "event_rows"]

# Log columns (float64; keys are hashes < 2**33, exact in a double). AMOUNT is in the
# reporting currency; ROUND says whether the amount as paid, in its own currency, was round.
TS, AMOUNT, CP, DEV, CTRY, CHAN, MCC, ROUND = range(8)
NCOL = 8
_NCOL_V1 = 7  # snapshots before ROUND (amounts were taken as they came)
# Running scalars: latest event time, first event time, count, Welford mean and M2, EWMA,
# home country (country of the first event), NaN when unset.
WM, FIRST, N, MEAN, M2, EWM, HOME = range(7)
NSCAL = 7
_SHIFT = 44  # (account index << _SHIFT) + event time: one sortable int64 key
_CHANNEL_CODE = {c: float(i) for i, c in enumerate(CHANNELS)}


# Hashes of recent values (ids recur: an account's counterparties and devices). Bounded:
# at 1,000,000 entries it held some 150 MB, and a worker's RSS crept up for hours.
_HASHED: dict[str, float] = {}
_HASHED_MAX = 1 << 16


def key_hash(value: str | None) -> float:
    """Stable across processes (unlike ``hash``); 0 means no value."""
    if value is None:
        return 0.0
    h = _HASHED.get(value)
    if h is None:
        if len(_HASHED) >= _HASHED_MAX:
            _HASHED.clear()
        h = _HASHED[value] = float(zlib.crc32(value.encode()) + 1)
    return h


_HIGH_RISK_HASHES = np.array(sorted(key_hash(c) for c in HIGH_RISK_COUNTRIES))


def _mcc_risk(category: str | None) -> float:
    if category is None:
        return MCC_NONE_RISK
    return MCC_RISK.get(category, MCC_UNKNOWN_RISK)


def is_round(amount: np.ndarray) -> np.ndarray:
    """1.0 where ``amount`` is a positive multiple of ``ROUND_UNIT``, else 0.0."""
    return ((amount >= ROUND_UNIT) & (np.fmod(amount, ROUND_UNIT) == 0)).astype(float)


def event_rows(txs: Sequence[Transaction], amounts: Sequence[float] | None = None) -> np.ndarray:
    """Log rows of transactions (one row each, ``NCOL`` columns); ``amounts`` are theirs in
    the reporting currency (default: as paid)."""
    out = np.empty((len(txs), NCOL))
    out[:, TS] = [t.ts_ms for t in txs]
    paid = np.array([t.amount for t in txs], dtype=float)
    out[:, AMOUNT] = paid if amounts is None else amounts
    out[:, ROUND] = is_round(paid)
    out[:, CP] = [key_hash(t.counterparty_id) for t in txs]
    out[:, DEV] = [key_hash(t.device_id) for t in txs]
    out[:, CTRY] = [key_hash(t.country) for t in txs]
    out[:, CHAN] = [_CHANNEL_CODE[t.channel] for t in txs]
    out[:, MCC] = [_mcc_risk(t.merchant_category) for t in txs]
    return out


# Day bucket columns: UTC day number, events, amount
D_DAY, D_COUNT, D_SUM = range(3)
D_NCOL = 3


class AccountLog:
    """One account's recent events, the day buckets of the older ones it dropped (for the
    30-day windows), and running statistics."""

    __slots__ = ("rows", "scalars", "days")

    def __init__(
        self,
        rows: np.ndarray | None = None,
        scalars: np.ndarray | None = None,
        days: np.ndarray | None = None,
    ):
        self.rows = np.empty((0, NCOL)) if rows is None else rows
        self.scalars = np.full(NSCAL, np.nan) if scalars is None else scalars
        self.days = np.empty((0, D_NCOL)) if days is None else days

    def snapshot(self) -> dict[str, Any]:
        snap = {
            "c": NCOL,
            "rows": base64.b64encode(np.ascontiguousarray(self.rows).tobytes()).decode(),
            "s": self.scalars.tolist(),  # NaN: serialised as null (orjson) or NaN (json)
        }
        if len(self.days):
            snap["days"] = base64.b64encode(np.ascontiguousarray(self.days).tobytes()).decode()
        return snap

    @classmethod
    def from_snapshot(cls, state: dict[str, Any]) -> AccountLog:
        try:
            raw = base64.b64decode(state["rows"], validate=True)
            scalars = np.array(state["s"], dtype=float)  # None -> NaN
            days = base64.b64decode(state.get("days", ""), validate=True)
        except (AttributeError, KeyError, TypeError, ValueError) as exc:
            raise FeatureError(f"account log snapshot malformed: {exc!r}") from exc
        ncol = state.get("c", _NCOL_V1)
        if ncol not in (NCOL, _NCOL_V1):
            raise FeatureError(f"account log snapshot has {ncol!r} columns, not {NCOL}")
        if len(raw) % (8 * ncol) or scalars.shape != (NSCAL,) or len(days) % (8 * D_NCOL):
            raise FeatureError("account log snapshot has the wrong shape")
        rows = np.frombuffer(raw, dtype=float).reshape(-1, ncol)
        if ncol == _NCOL_V1:
            rows = np.column_stack([rows, is_round(rows[:, AMOUNT])])
        return cls(
            rows.copy(),
            scalars,
            np.frombuffer(days, dtype=float).reshape(-1, D_NCOL).copy(),
        )

    def drop(self, rows: np.ndarray) -> None:
        """Count ``rows`` (leaving the raw log) into the day buckets; keep the newest
        ``MONTH_DAYS_KEPT`` days."""
        if not len(rows):
            return
        buckets = {int(d): [n, t] for d, n, t in self.days.tolist()}
        for ts, amount in rows[:, [TS, AMOUNT]].tolist():
            bucket = buckets.setdefault(int(ts // DAY_MS), [0.0, 0.0])
            bucket[0] += 1.0
            bucket[1] += amount
        newest = max(buckets)
        kept = sorted(d for d in buckets if d > newest - MONTH_DAYS_KEPT)
        self.days = np.array([[d, *buckets[d]] for d in kept], dtype=float)


def _rounds(accounts: Sequence[str], ts: np.ndarray) -> np.ndarray:
    """Round of each event: a new round for an account whenever its time goes back."""
    out = np.zeros(len(accounts), dtype=np.int64)
    if len(set(accounts)) == len(accounts) or (np.diff(ts) >= 0).all():
        return out  # no account goes back in time (the usual case)
    latest: dict[str, tuple[int, float]] = {}
    for i, (a, t) in enumerate(zip(accounts, ts.tolist(), strict=True)):
        r, m = latest.get(a, (0, -math.inf))
        if t < m:
            r, m = r + 1, t
        latest[a] = (r, max(m, t))
        out[i] = r
    return out


def _ranges(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Concatenated index ranges ``[lo[i], hi[i]]`` (each non-empty): indices, the range each
    index belongs to, and where each range starts in the concatenation."""
    lengths = hi - lo + 1
    starts = np.zeros(len(lo), dtype=np.int64)
    np.cumsum(lengths[:-1], out=starts[1:])
    owner = np.repeat(np.arange(len(lo)), lengths)
    idx = np.arange(int(lengths.sum())) - starts[owner] + lo[owner]
    return idx, owner, starts


class FeatureEngine:
    """Computes ``spec.names`` for micro-batches of transactions, updating account logs."""

    def __init__(self, spec: FeatureSpec = FEATURE_SPEC) -> None:
        unknown = [n for n in spec.names if n not in FEATURES]
        if unknown:
            raise FeatureError(f"feature spec names unknown features: {unknown}")
        self.spec = spec
        self.ops = {n: FEATURES[n] for n in spec.names}
        self.inflow_ops = {n: op for n, op in self.ops.items() if isinstance(op, Inflow)}
        self.payee_ops = {n: op for n, op in self.ops.items() if isinstance(op, Payee)}
        self.label_ops = {n: op for n, op in self.ops.items() if isinstance(op, Labels)}
        self.recent_ops = {n: op for n, op in self.ops.items() if isinstance(op, Recent)}
        own = {n: op for n, op in self.ops.items() if not isinstance(op, Inflow | Payee | Labels)}
        self.windows = sorted({op.window_ms for op in own.values() if hasattr(op, "window_ms")})
        self.by_window = {
            w: [(n, op) for n, op in own.items() if getattr(op, "window_ms", None) == w]
            for w in self.windows
        }

    def compute(
        self,
        accounts: Sequence[str],
        rows: np.ndarray,
        logs: dict[str, AccountLog],
        inflows: dict[str, InflowLog] | None = None,
        counterparties: Sequence[str | None] | None = None,
        payees: dict[str, PayeeLog | None] | None = None,
        labels: dict[str, LabelLog] | None = None,
    ) -> np.ndarray:
        """Features (len(accounts) x len(spec.names), NaN = no value) of events in arrival
        order; ``logs`` holds every account's log (created if missing) and is updated;
        ``inflows`` holds the inflow logs of the accounts that have any, ``payees`` the
        payee log of each event's counterparty (``counterparties``; None: not held here)
        and ``labels`` the label logs of the accounts that have any (all read only)."""
        if not len(accounts):
            return np.full((0, len(self.spec.names)), np.nan)
        side = _Side(
            inflows or {},
            list(counterparties) if counterparties is not None else [None] * len(accounts),
            payees or {},
            labels or {},
        )
        rounds = _rounds(accounts, rows[:, TS])
        if not rounds.any():
            return self._round(list(accounts), rows, logs, side)
        out = np.full((len(accounts), len(self.spec.names)), np.nan)
        for r in range(int(rounds.max()) + 1):
            sel = np.flatnonzero(rounds == r)
            part = side.take(sel)
            out[sel] = self._round([accounts[i] for i in sel], rows[sel], logs, part)
        return out

    def _round(
        self,
        accounts: list[str],
        new: np.ndarray,
        logs: dict[str, AccountLog],
        side: _Side,
    ) -> np.ndarray:
        slot: dict[str, int] = {}
        for a in accounts:
            if a not in slot:
                slot[a] = len(slot)
                if a not in logs:
                    logs[a] = AccountLog()
        names = list(slot)
        who = np.array([slot[a] for a in accounts], dtype=np.int64)
        scal = np.stack([logs[a].scalars for a in names])
        seq = self._sequential(who, new, scal)  # also advances scal

        hist = [logs[a].rows for a in names]
        lengths = np.array([len(h) for h in hist], dtype=np.int64)
        all_rows = np.concatenate([*hist, new])
        owner = np.concatenate([np.repeat(np.arange(len(names)), lengths), who])
        key = (owner << _SHIFT) + all_rows[:, TS].astype(np.int64)
        order = np.argsort(key, kind="stable")  # history first at equal times, then arrivals
        key, owner = key[order], owner[order]
        all_rows = np.ascontiguousarray(all_rows.T)[:, order]  # one contiguous row per column
        pos = np.empty(len(order), dtype=np.int64)
        pos[order] = np.arange(len(order))
        at = pos[len(order) - len(new) :]  # where each new event sits

        cols = self._columns(all_rows, scal[owner, HOME])
        feats: dict[str, np.ndarray] = {**seq, "amount": new[:, AMOUNT]}
        prev = {}
        ts_int = new[:, TS].astype(np.int64)
        starts_at: dict[int, np.ndarray] = {}  # per window: where each event's window starts
        for w in self.windows:
            # the 30-day window is day-aligned: from the start of day D - 29 (see library)
            since = (ts_int // DAY_MS - 29) * DAY_MS - 1 if w == MONTH_MS else ts_int - w
            lo = starts_at[w] = np.searchsorted(key, (who << _SHIFT) + since, "right")
            idx, grp, starts = _ranges(lo, at)
            shared: dict[tuple, np.ndarray] = {}  # per window: gathered columns, counts, sums
            for name, op in self.by_window[w]:
                if isinstance(op, Windowed) and w == MONTH_MS:
                    feats[name] = self._month(op, cols, idx, starts, shared, who, new, logs, names)
                elif isinstance(op, Windowed):
                    feats[name] = self._windowed(op, cols, idx, grp, starts, shared)
                else:
                    k = cols[op.key]
                    if op.key not in prev:
                        prev[op.key] = _previous_same(owner, k)
                    p = prev[op.key]
                    if isinstance(op, Distinct):
                        counted = (p[idx] < lo[grp]) & (k[idx] != 0)
                        feats[name] = np.add.reduceat(counted.astype(float), starts)
                    else:  # FirstSeen
                        feats[name] = ((p[at] < lo) & (k[at] != 0)).astype(float)
        for name, op in self.ops.items():
            if isinstance(op, Current):
                feats[name] = cols[op.column][at]
        if self.recent_ops:
            # the account's events in (ts - 7 days, ts] sit at [lo, at) in the sorted log
            lo = starts_at.get(HORIZON_MS)
            if lo is None:  # a spec with no other 7-day feature
                lo = np.searchsorted(key, (who << _SHIFT) + ts_int - HORIZON_MS, "right")
            feats.update(self._recent(all_rows, at, lo))
        ts = new[:, TS]
        feats.update(inflow_features(self.inflow_ops, accounts, ts, new[:, CP], side.inflows))
        if self.payee_ops:
            payers = np.array([key_hash(a) for a in accounts])
            feats.update(
                payee_features(self.payee_ops, side.counterparties, payers, ts, side.payees)
            )
        feats.update(label_features(self.label_ops, accounts, ts, side.labels))
        for name, op in self.ops.items():
            if isinstance(op, Entropy):
                shares = np.stack([feats[s] for s in op.shares])
                with np.errstate(divide="ignore", invalid="ignore"):
                    terms = np.where(shares > 0, -shares * np.log(shares), 0.0)
                feats[name] = terms.sum(axis=0)
            elif isinstance(op, Ratio):
                num, den = feats[op.num], feats[op.den]
                with np.errstate(divide="ignore", invalid="ignore"):
                    feats[name] = np.where(den > 0, num * op.scale / den, np.nan)

        self._keep(names, key, all_rows, owner, scal, logs)
        return np.stack([feats[n] for n in self.spec.names], axis=1)

    def _recent(self, rows: np.ndarray, at: np.ndarray, lo: np.ndarray) -> dict[str, np.ndarray]:
        """``Recent`` features of the events at ``at`` in column-major sorted ``rows``, whose
        window starts at ``lo``: the step-th latest earlier event sits at ``at - step``."""
        out = {}
        ts, cp, amount = rows[TS], rows[CP], rows[AMOUNT]
        ts_at, cp_at, log_amount_at = ts[at], cp[at], np.log(amount[at])
        has_cp = cp_at != 0
        gathered: dict[int, tuple[np.ndarray, np.ndarray]] = {}
        for name, op in self.recent_ops.items():
            if op.step not in gathered:
                j = at - op.step
                there = j >= lo
                gathered[op.step] = (there, np.where(there, j, at))
            there, j = gathered[op.step]
            if op.kind == "hours_ago":
                v = (ts_at - ts[j]) / HOUR_MS
            elif op.kind == "log_amount_ratio":
                v = np.log(amount[j]) - log_amount_at
            elif op.kind == "same_counterparty":
                v = ((cp[j] == cp_at) & has_cp).astype(float)
            else:
                raise FeatureError(f"unknown Recent kind {op.kind!r}")
            out[name] = np.where(there, v, np.nan)
        return out

    @staticmethod
    def _columns(rows: np.ndarray, home: np.ndarray) -> dict[str, np.ndarray]:
        """Per-event columns of column-major ``rows``."""
        ts, amount = rows[TS], rows[AMOUNT]
        hour = np.floor_divide(ts, HOUR_MS) % 24
        weekday = (np.floor_divide(ts, DAY_MS) + 3) % 7  # 1970-01-01 was a Thursday; Mon = 0
        country = rows[CTRY]
        cols = {
            "amount": amount,
            "amount_log10": np.log10(amount),
            "small": (amount < SMALL_AMOUNT).astype(float),
            "near_threshold": (
                (amount >= NEAR_THRESHOLD_FROM) & (amount < REPORTING_THRESHOLD)
            ).astype(float),
            "round": rows[ROUND],
            "hour": hour,
            "night": ((hour >= NIGHT_HOURS[0]) & (hour < NIGHT_HOURS[1])).astype(float),
            "weekend": (weekday >= 5).astype(float),
            "cross_border": (country != home).astype(float),
            "high_risk_country": np.isin(country, _HIGH_RISK_HASHES).astype(float),
            "mcc_risk": rows[MCC],
            "high_risk_mcc": (rows[MCC] >= HIGH_RISK_MCC).astype(float),
            "counterparty": rows[CP],
            "device": rows[DEV],
            "country": country,
        }
        for code, ch in enumerate(CHANNELS):
            cols[f"channel_{ch}"] = (rows[CHAN] == code).astype(float)
        return cols

    @staticmethod
    def _windowed(
        op: Windowed,
        cols: dict[str, np.ndarray],
        idx: np.ndarray,
        grp: np.ndarray,
        starts: np.ndarray,
        shared: dict[tuple, np.ndarray],
    ) -> np.ndarray:
        def once(key: tuple, make) -> np.ndarray:
            if key not in shared:
                shared[key] = make()
            return shared[key]

        v = once(("v", op.column), lambda: cols[op.column][idx])
        if op.where is None:
            m = once(("ones",), lambda: np.ones(len(idx)))
        else:
            m = once(("m", op.where), lambda: cols[op.where][idx])
        count = once(("count", op.where), lambda: np.add.reduceat(m, starts))
        if op.agg == "count":
            return count
        vm = v if op.where is None else once(("vm", op.column, op.where), lambda: v * m)
        total = once(("sum", op.column, op.where), lambda: np.add.reduceat(vm, starts))
        if op.agg == "sum":
            return total
        with np.errstate(divide="ignore", invalid="ignore"):
            mean = np.where(count > 0, total / count, np.nan)
            if op.agg == "mean":
                return mean
            if op.agg == "std":
                d = (v - mean[grp]) * m
                return np.sqrt(np.add.reduceat(d * d, starts) / count)
        if op.agg == "min":
            r = np.minimum.reduceat(v if op.where is None else np.where(m > 0, v, np.inf), starts)
        elif op.agg == "max":
            r = np.maximum.reduceat(v if op.where is None else np.where(m > 0, v, -np.inf), starts)
        else:
            raise FeatureError(f"unknown aggregate {op.agg!r}")
        return np.where(np.isfinite(r), r, np.nan)

    @staticmethod
    def _month(op, cols, idx, starts, shared, who, new, logs, names) -> np.ndarray:
        """A 30-day window: the raw log's events since the start of day D - 29, plus the
        day buckets of days D - 29 .. D (events the log dropped, all older than it keeps)."""
        if op.where is not None or op.agg not in ("count", "sum", "mean"):
            raise FeatureError(f"the 30-day window takes count, sum or mean, not {op}")
        if ("m30",) not in shared:
            raw_n = np.add.reduceat(np.ones(len(idx)), starts)
            raw_s = np.add.reduceat(cols["amount"][idx], starts)
            dated = [j for j, a in enumerate(names) if len(logs[a].days)]
            if dated:  # the day buckets of every account at once: (slot, day) keys
                days = [logs[names[j]].days for j in dated]
                slot = np.full(len(names), -1, dtype=np.int64)
                slot[dated] = np.arange(len(dated))
                stacked = np.concatenate(days)
                key = (np.repeat(np.arange(len(dated)), [len(d) for d in days]) << 32) + stacked[
                    :, D_DAY
                ].astype(np.int64)
                csum = np.vstack([np.zeros((1, D_NCOL)), np.cumsum(stacked, axis=0)])
                mine = slot[who]
                has = mine >= 0
                base = mine[has] << 32
                day = (new[has, TS] // DAY_MS).astype(np.int64)
                lo = np.searchsorted(key, base + day - 29, "left")
                hi = np.searchsorted(key, base + day, "right")
                add = csum[hi] - csum[lo]
                raw_n[has] += add[:, D_COUNT]
                raw_s[has] += add[:, D_SUM]
            shared[("m30",)] = (raw_n, raw_s)
        count, total = shared[("m30",)]
        if op.agg == "count":
            return count
        if op.agg == "sum":
            return total
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(count > 0, total / count, np.nan)

    def _sequential(self, who: np.ndarray, new: np.ndarray, scal: np.ndarray) -> dict:
        """Running statistics in arrival order: each account's k-th event of the round is
        handled in step k, all accounts at once."""
        n = len(who)
        out = {k: np.full(n, np.nan) for k in _SEQUENTIAL}
        rank = _rank_within(who)
        for k in range(int(rank.max()) + 1):
            i = np.flatnonzero(rank == k)
            a = who[i]
            ts, x = new[i, TS], new[i, AMOUNT]
            s = scal[a]
            wm, first, cnt, mean, m2, ewm = (
                s[:, WM],
                s[:, FIRST],
                s[:, N],
                s[:, MEAN],
                s[:, M2],
                s[:, EWM],
            )
            has = ~np.isnan(wm)
            gap = np.where(has, np.maximum(0.0, ts - wm), np.nan)
            out["time_since_prev_ms"][i] = gap
            out["dormancy_days"][i] = gap / DAY_MS
            out["account_age_days"][i] = np.where(has, np.maximum(0.0, ts - first) / DAY_MS, 0.0)
            cnt0 = np.where(has, cnt, 0.0)
            out["hist_count"][i] = cnt0
            out["hist_mean_amount"][i] = np.where(cnt0 > 0, mean, np.nan)
            with np.errstate(divide="ignore", invalid="ignore"):
                std = np.sqrt(m2 / cnt0)
                spread = (cnt0 >= 2) & (std > ZSCORE_MIN_REL_STD * np.abs(mean))
                out["amount_zscore"][i] = np.where(spread, (x - mean) / std, np.nan)
                out["amount_to_ewm"][i] = np.where(has, x / ewm, np.nan)
            new_ewm = np.where(has, ewm + EWM_ALPHA * (x - ewm), x)
            out["ewm_amount"][i] = new_ewm
            # advance: Welford
            cnt1 = cnt0 + 1
            mean0 = np.where(has, mean, 0.0)
            delta = x - mean0
            mean1 = mean0 + delta / cnt1
            m21 = np.where(has, m2, 0.0) + delta * (x - mean1)
            scal[a, WM] = np.where(has, np.maximum(wm, ts), ts)
            scal[a, FIRST] = np.where(has, first, ts)
            scal[a, N], scal[a, MEAN], scal[a, M2], scal[a, EWM] = cnt1, mean1, m21, new_ewm
            scal[a, HOME] = np.where(has, s[:, HOME], new[i, CTRY])
        return out

    @staticmethod
    def _keep(names, key, rows, owner, scal, logs) -> None:
        """Write back each account's log, minus what fell behind horizon + grace, and at
        most its ``MAX_ACCOUNT_ROWS`` newest events."""
        bounds = np.searchsorted(owner, np.arange(len(names) + 1))
        oldest = scal[:, WM].astype(np.int64) - HORIZON_MS - GRACE_MS
        cut = np.searchsorted(
            key, (np.arange(len(names), dtype=np.int64) << _SHIFT) + oldest, "right"
        )
        for j, a in enumerate(names):
            log = logs[a]
            start = max(cut[j], bounds[j], bounds[j + 1] - MAX_ACCOUNT_ROWS)
            if start > bounds[j]:  # what leaves the log still counts for 30 days
                log.drop(rows[:, bounds[j] : start].T)
            log.rows = rows[:, start : bounds[j + 1]].T.copy()
            log.scalars = scal[j]


class _Side:
    """What a batch's events read besides their accounts' own logs."""

    __slots__ = ("inflows", "counterparties", "payees", "labels")

    def __init__(self, inflows, counterparties, payees, labels) -> None:
        self.inflows: dict[str, InflowLog] = inflows
        self.counterparties: list[str | None] = counterparties
        self.payees: dict[str, PayeeLog | None] = payees
        self.labels: dict[str, LabelLog] = labels

    def take(self, sel: np.ndarray) -> _Side:
        return _Side(self.inflows, [self.counterparties[i] for i in sel], self.payees, self.labels)


_SEQUENTIAL = tuple(n for n, op in FEATURES.items() if isinstance(op, Sequential))


def _rank_within(group: np.ndarray) -> np.ndarray:
    """Position of each element among the earlier elements of its group (0, 1, ...)."""
    order = np.argsort(group, kind="stable")
    sorted_group = group[order]
    first = np.searchsorted(sorted_group, sorted_group, side="left")
    rank = np.empty(len(group), dtype=np.int64)
    rank[order] = np.arange(len(group)) - first
    return rank


def _previous_same(owner: np.ndarray, key: np.ndarray) -> np.ndarray:
    """Index of the previous event of the same account with the same key (-1 if none)."""
    combined = (owner << 33) + key.astype(np.int64)  # keys are below 2**33
    order = np.argsort(combined, kind="stable")
    prev = np.full(len(key), -1, dtype=np.int64)
    same = combined[order[1:]] == combined[order[:-1]]
    prev[order[1:][same]] = order[:-1][same]
    return prev
