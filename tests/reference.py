"""Independent brute-force references the tests compare the streaming code against.

Nothing here imports the code under test: windows, rules and decisions are recomputed
from the whole history with plain loops, straight from the definitions in the issue.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from functools import cache
from pathlib import Path
from typing import Any

import yaml

HOUR_MS = 3_600_000
DAY_MS = 24 * HOUR_MS
T0 = 1_767_225_600_000  # 2026-01-01T00:00Z, a Thursday


def wire(tx_id: str, payer: str, payee: str, minutes: int, amount: float) -> dict[str, Any]:
    """A contract transaction: a EUR wire ``minutes`` after T0 (test input, not a reference)."""
    return {
        "tx_id": tx_id,
        "ts_ms": T0 + minutes * 60_000,
        "account_id": payer,
        "counterparty_id": payee,
        "amount": amount,
        "currency": "EUR",
        "channel": "wire",
        "country": "DE",
        "device_id": None,
        "merchant_category": None,
    }


@cache
def reference_rates() -> dict[str, float]:
    """EUR per unit of each currency: the built-in table, read as plain YAML."""
    path = Path(__file__).resolve().parents[1] / "streams" / "rates" / "reference.yaml"
    return yaml.safe_load(path.read_text())["rates"]


def reporting(tx: dict[str, Any]) -> dict[str, Any]:
    """``tx`` with its amount in EUR and the amount as paid in ``paid_amount`` (a ``tx``
    already converted is returned as it is)."""
    if "paid_amount" in tx:
        return tx
    rate = reference_rates()[tx["currency"]]
    return {**tx, "amount": tx["amount"] * rate, "paid_amount": tx["amount"]}


def batch_dependent() -> set[str]:
    """The features whose value depends on where micro-batches were cut: the counterparty's
    (a payment reaches its counterparty's state one batch later). ``features_by_tx`` leaves
    them out; tests/streams/features/test_payee.py checks them batch by batch."""
    from vigil.streams.features import library as L

    names = {n for n, op in L.FEATURES.items() if isinstance(op, L.Payee)}
    return names | {"payee_mean_30d", "amount_to_payee_mean_30d"}


def own(features: dict[str, float | None]) -> dict[str, float | None]:
    """``features`` without the batch-dependent ones (to compare with ``features_by_tx``)."""
    dependent = batch_dependent()
    return {k: v for k, v in features.items() if k not in dependent}


def features_by_tx(transactions: Iterable[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Library features of every transaction, per account in the given (arrival) order,
    with no money coming in (inflow features empty), no label known, and without the
    batch-dependent ones (``batch_dependent``)."""
    per_account: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for tx in transactions:
        per_account[tx["account_id"]].append(reporting(tx))
    result = {}
    for history in per_account.values():
        for tx, feats in zip(history, library_features(history), strict=True):
            feats.update(inflow_features(tx, [], feats))
            feats.update(account_label_features(tx, []))
            result[tx["tx_id"]] = own(feats)
    return result


def features_by_batch(batches: list[list[dict[str, Any]]]) -> dict[str, dict[str, float | None]]:
    """Every feature of every transaction as the in-process pipeline runs micro-batches:
    the inflows (transfers, keyed by payee) produced by one batch are folded at the start of
    the next, and a transaction sees the inflows folded before its batch."""
    from vigil.streams.features import library as L

    mine = features_by_tx(tx for batch in batches for tx in batch)
    delivered: dict[str, list[dict[str, Any]]] = defaultdict(list)  # payee -> inflows
    result = {}
    for batch in batches:
        produced = []
        for tx in map(reporting, batch):
            feats = dict(mine[tx["tx_id"]])
            received = delivered[tx["account_id"]]
            feats.update(inflow_features(tx, received, feats))
            result[tx["tx_id"]] = feats
            cp = tx["counterparty_id"]
            if tx["channel"] in L.TRANSFER_CHANNELS and cp and cp != tx["account_id"]:
                seen = [r for r in received if tx["ts_ms"] - L.WEEK_MS < r["ts_ms"] <= tx["ts_ms"]]
                latest = max(seen, key=lambda r: r["ts_ms"], default=None)  # first of the latest
                if latest is not None:  # the latest folded among equal times
                    latest = [r for r in seen if r["ts_ms"] == latest["ts_ms"]][-1]
                produced.append(
                    {
                        "payee": cp,
                        "payer": tx["account_id"],
                        "ts_ms": tx["ts_ms"],
                        "amount": tx["amount"],
                        "source": latest and latest["payer"],
                        # the accounts the money came through, the payer first: 5 at most
                        "path": [tx["account_id"], *(latest["path"][:4] if latest else [])],
                    }
                )
        for inflow in produced:
            delivered[inflow["payee"]].append(inflow)
    return result


def inflow_features(
    tx: dict[str, Any], received: list[dict[str, Any]], own: dict[str, float | None]
) -> dict[str, float | None]:
    """Inflow features of ``tx`` given the inflows its account received before (``payer``,
    ``ts_ms``, ``amount``, ``source`` each) and its own features, straight from the
    definitions in streams/features/library.py."""
    from vigil.streams.features import library as L

    ts = tx["ts_ms"]
    f: dict[str, float | None] = {}

    def within(w: int) -> list[dict[str, Any]]:
        return [r for r in received if ts - w < r["ts_ms"] <= ts]

    for label in ("1h", "24h", "7d"):
        ev = within(L.WINDOWS[label])
        f[f"inflow_count_{label}"] = float(len(ev))
        f[f"inflow_sum_{label}"] = float(sum(r["amount"] for r in ev))
    day, week = within(L.DAY_MS), within(L.WEEK_MS)
    f["inflow_max_24h"] = max((r["amount"] for r in day), default=None)
    f["distinct_payers_24h"] = float(len({r["payer"] for r in day}))
    f["distinct_payers_7d"] = float(len({r["payer"] for r in week}))
    f["time_since_inflow_ms"] = float(ts - max(r["ts_ms"] for r in week)) if week else None
    f["round_trip_7d"] = float(any(r["payer"] == tx["counterparty_id"] for r in week))
    payers_by_source: dict[str, set[str]] = defaultdict(set)
    for r in week:
        if r["source"] is not None:
            payers_by_source[r["source"]].add(r["payer"])
    f["shared_source_payers_7d"] = float(max(map(len, payers_by_source.values()), default=0))
    rings = [
        r["path"].index(tx["counterparty_id"]) + 2
        for r in week
        if tx["counterparty_id"] in r["path"]
    ]
    f["cycle_7d"] = float(min(rings, default=0))
    in_day, in_week = f["inflow_sum_24h"], f["inflow_sum_7d"]
    f["pass_through_24h"] = own["sum_24h"] / in_day if in_day else None
    f["pass_through_7d"] = own["sum_7d"] / in_week if in_week else None
    mean = own["amount_mean_30d"]
    f["inflow_24h_to_mean_30d"] = in_day / mean if mean else None
    return f


def expected_decision(tx: dict[str, Any], feats: dict[str, float | None]) -> tuple[str, list[str]]:
    """Seed rules (large_transfer 0.8, frequent_small 0.5), noisy-or, review >= 0.5,
    block >= 0.9."""
    rules = []
    keep = 1.0
    if reporting(tx)["amount"] > 500_000:
        rules.append("large_transfer")
        keep *= 0.2
    if (feats["small_count_24h"] or 0) > 10:
        rules.append("frequent_small")
        keep *= 0.5
    score = 1 - keep
    decision = "block" if score >= 0.9 - 1e-9 else "review" if score >= 0.5 else "allow"
    return decision, rules


def library_features(history: list[dict[str, Any]]) -> list[dict[str, float | None]]:
    """Every library feature of each transaction of ONE account, in arrival order, by plain
    loops over the whole history, straight from the definitions in streams/features/library.py
    (only its constants are imported here)."""
    import math
    import statistics

    from vigil.streams.features import library as L

    def hour(t: dict) -> int:
        return (t["ts_ms"] // L.HOUR_MS) % 24

    def mcc(t: dict) -> float:
        m = t.get("merchant_category")
        return L.MCC_NONE_RISK if m is None else L.MCC_RISK.get(m, L.MCC_UNKNOWN_RISK)

    history = [reporting(t) for t in history]
    home = history[0]["country"] if history else None
    flags = {
        "small": lambda t: t["amount"] < L.SMALL_AMOUNT,
        "near": lambda t: 0.9 * L.REPORTING_THRESHOLD <= t["amount"] < L.REPORTING_THRESHOLD,
        "night": lambda t: L.NIGHT_HOURS[0] <= hour(t) < L.NIGHT_HOURS[1],
        "weekend": lambda t: ((t["ts_ms"] // L.DAY_MS) + 3) % 7 >= 5,
        "round": lambda t: (
            t["paid_amount"] >= L.ROUND_UNIT and t["paid_amount"] % L.ROUND_UNIT == 0
        ),
        "cross_border": lambda t: t["country"] != home,
        "high_risk_country": lambda t: t["country"] in L.HIGH_RISK_COUNTRIES,
        "high_risk_mcc": lambda t: mcc(t) >= L.HIGH_RISK_MCC,
    }
    keys = {
        "counterparty": lambda t: t["counterparty_id"],
        "device": lambda t: t.get("device_id"),
        "country": lambda t: t["country"],
    }
    out = []
    ewm_prev = None
    for i, tx in enumerate(history):
        ts, a = tx["ts_ms"], tx["amount"]
        f: dict[str, float | None] = {}

        def within(w: int, ts: int = ts, i: int = i) -> list[dict[str, Any]]:
            return [t for t in history[: i + 1] if ts - w < t["ts_ms"] <= ts]

        win = {label: within(w) for label, w in L.WINDOWS.items()}
        for label, ev in win.items():
            f[f"count_{label}"] = float(len(ev))
            f[f"sum_{label}"] = float(sum(t["amount"] for t in ev))
        # 30 days, day-aligned: the event's UTC day so far and the 29 days before it
        since = (ts // L.DAY_MS - 29) * L.DAY_MS
        month = [t for t in history[: i + 1] if since <= t["ts_ms"] <= ts]
        f["count_30d"] = float(len(month))
        f["sum_30d"] = float(sum(t["amount"] for t in month))
        f["amount_mean_30d"] = statistics.fmean(t["amount"] for t in month)
        for label in ("24h", "7d"):
            amounts = [t["amount"] for t in win[label]]
            f[f"amount_mean_{label}"] = statistics.fmean(amounts)
            f[f"amount_std_{label}"] = statistics.pstdev(amounts)
            f[f"amount_min_{label}"] = min(amounts)
            f[f"amount_max_{label}"] = max(amounts)
        d1, w7 = win["24h"], win["7d"]

        def n(ev: list, flag: str) -> float:
            return float(sum(1 for t in ev if flags[flag](t)))

        f["small_count_24h"], f["small_count_7d"] = n(d1, "small"), n(w7, "small")
        f["near_threshold_count_24h"] = n(d1, "near")
        f["near_threshold_sum_24h"] = float(sum(t["amount"] for t in d1 if flags["near"](t)))
        f["near_threshold_count_7d"] = n(w7, "near")
        for flag in ("night", "weekend", "round", "cross_border", "high_risk_country"):
            f[f"{flag}_share_7d"] = n(w7, flag) / len(w7)
        f["cross_border_count_24h"] = n(d1, "cross_border")
        f["high_risk_country_count_24h"] = n(d1, "high_risk_country")
        entropy = 0.0
        for ch in L.CHANNELS:
            share = sum(1 for t in w7 if t["channel"] == ch) / len(w7)
            f[f"channel_{ch}_share_7d"] = share
            entropy -= share * math.log(share) if share > 0 else 0.0
        f["channel_entropy_7d"] = entropy
        f["mcc_risk"] = mcc(tx)
        f["mcc_risk_mean_7d"] = statistics.fmean(mcc(t) for t in w7)
        f["high_risk_mcc_count_7d"] = n(w7, "high_risk_mcc")
        for key, plural in (
            ("counterparty", "counterparties"),
            ("device", "devices"),
            ("country", "countries"),
        ):
            for label in ("24h", "7d"):
                values = {keys[key](t) for t in win[label]} - {None}
                f[f"distinct_{plural}_{label}"] = float(len(values))
            mine = keys[key](tx)
            seen_before = any(
                keys[key](t) == mine and ts - L.WEEK_MS < t["ts_ms"] <= ts for t in history[:i]
            )
            f[f"first_seen_{key}_7d"] = float(mine is not None and not seen_before)
        f["amount_log10"] = math.log10(a)
        for flag in ("round", "night", "weekend", "cross_border", "high_risk_country"):
            f[f"is_{flag}"] = float(flags[flag](tx))
        f["hour_of_day"] = float(hour(tx))
        for ch in L.CHANNELS:
            f[f"is_channel_{ch}"] = float(tx["channel"] == ch)
        earlier = history[:i]
        gap = float(max(0, ts - max(t["ts_ms"] for t in earlier))) if earlier else None
        f["time_since_prev_ms"] = gap
        f["dormancy_days"] = None if gap is None else gap / L.DAY_MS
        f["account_age_days"] = max(0, ts - history[0]["ts_ms"]) / L.DAY_MS
        past = [t["amount"] for t in earlier]
        f["hist_count"] = float(len(past))
        f["hist_mean_amount"] = statistics.fmean(past) if past else None
        sd = statistics.pstdev(past) if len(past) >= 2 else 0.0
        spread = sd > L.ZSCORE_MIN_REL_STD * abs(statistics.fmean(past)) if past else False
        f["amount_zscore"] = (a - statistics.fmean(past)) / sd if spread else None
        f["amount_to_ewm"] = None if ewm_prev is None else a / ewm_prev
        ewm_prev = a if ewm_prev is None else ewm_prev + L.EWM_ALPHA * (a - ewm_prev)
        f["ewm_amount"] = ewm_prev
        f["sum_1h_to_24h"] = f["sum_1h"] / f["sum_24h"]
        f["velocity_spike_24h_7d"] = f["count_24h"] * 7.0 / f["count_7d"]
        f["amount_to_mean_7d"] = a / f["amount_mean_7d"]
        f["amount_to_max_7d"] = a / f["amount_max_7d"]
        f["amount_to_mean_30d"] = a / f["amount_mean_30d"]
        f["count_7d_to_30d"] = f["count_7d"] / f["count_30d"]
        # the latest earlier events of the week, latest first: by event time, and at equal
        # times the one that arrived later first
        week = [
            (t["ts_ms"], j, t) for j, t in enumerate(earlier) if ts - L.WEEK_MS < t["ts_ms"] <= ts
        ]
        week.sort(key=lambda e: (e[0], e[1]), reverse=True)
        for step in range(1, L.RECENT_STEPS + 1):
            prev = week[step - 1][2] if step <= len(week) else None
            f[f"prev{step}_hours_ago"] = None if prev is None else (ts - prev["ts_ms"]) / L.HOUR_MS
            f[f"prev{step}_log_amount_ratio"] = (
                None if prev is None else math.log(prev["amount"]) - math.log(a)
            )
            f[f"prev{step}_same_counterparty"] = (
                None if prev is None else float(prev["counterparty_id"] == tx["counterparty_id"])
            )
        out.append(f)
    return out


def _bucketed(items: list[dict[str, Any]], newest_hour: int | None) -> list[dict[str, Any]]:
    """What hour buckets keep of folded ``items`` (each with an ``hour``): those within
    the 31 days before the newest hour any of them reached."""
    from vigil.streams.features import library as L

    if newest_hour is None:
        return []
    return [r for r in items if r["hour"] > newest_hour - L.KEEP_HOURS]


def payee_features(
    tx: dict[str, Any], payee: dict[str, list] | None, own: dict[str, float | None]
) -> dict[str, float | None]:
    """The counterparty's features of ``tx`` given what its counterparty folded before
    (``payee``: ``payments`` with payer, ts_ms, amount, new; ``labels`` with known_ms and
    label; None when its state is not held), from the definitions in library.py:
    payments in hour buckets (H - w, H], labels by the hour known in [H - w, H)."""
    from vigil.streams.features import library as L

    names = [n for n, op in L.FEATURES.items() if isinstance(op, L.Payee)]
    names += ["payee_mean_30d", "amount_to_payee_mean_30d"]
    if payee is None:
        return dict.fromkeys(names)
    hour_now = tx["ts_ms"] // L.HOUR_MS
    pays = [{**p, "hour": p["ts_ms"] // L.HOUR_MS} for p in payee["payments"]]
    labels = [{**x, "hour": x["known_ms"] // L.HOUR_MS} for x in payee["labels"]]
    hours = [r["hour"] for r in pays + labels]
    newest = max(hours) if hours else None
    pays, labels = _bucketed(pays, newest), _bucketed(labels, newest)
    f: dict[str, float | None] = {}
    windows = {"1h": L.HOUR_MS, "24h": L.DAY_MS, "7d": L.WEEK_MS, "30d": 30 * L.DAY_MS}
    for label, w in windows.items():
        h = w // L.HOUR_MS
        inside = [p for p in pays if hour_now - h < p["hour"] <= hour_now]
        known = [x for x in labels if hour_now - h <= x["hour"] < hour_now]
        f[f"payee_count_{label}"] = float(len(inside))
        f[f"payee_sum_{label}"] = float(sum(p["amount"] for p in inside))
        new = sum(1 for p in inside if p["new"])
        f[f"payee_new_payers_{label}"] = float(new)
        f[f"payee_new_payer_share_{label}"] = new / len(inside) if inside else None
        frauds = sum(x["label"] for x in known)
        f[f"payee_frauds_{label}"] = float(frauds)
        f[f"payee_labelled_{label}"] = float(len(known))
        f[f"payee_fraud_risk_{label}"] = frauds / len(known) if known else None
    fraud_hours = [
        x["hour"] for x in labels if x["label"] and hour_now - 30 * 24 <= x["hour"] < hour_now
    ]
    f["payee_fraud_first_hours_30d"] = hour_now - min(fraud_hours) if fraud_hours else None
    f["payee_fraud_last_hours_30d"] = hour_now - max(fraud_hours) if fraud_hours else None
    f["payee_first_payment"] = float(
        not any(p["payer"] == tx["account_id"] for p in payee["payments"])
    )
    count, total = f["payee_count_30d"], f["payee_sum_30d"]
    f["payee_mean_30d"] = total / count if count else None
    mean = f["payee_mean_30d"]
    f["amount_to_payee_mean_30d"] = tx["amount"] / mean if mean else None
    return {n: f[n] for n in names}


def account_label_features(
    tx: dict[str, Any], labels: list[dict[str, Any]]
) -> dict[str, float | None]:
    """The labels known of ``tx``'s account (``known_ms``, ``label`` each, as folded before
    the event's batch), by the hour known in [H - w, H)."""
    from vigil.streams.features import library as L

    hour_now = tx["ts_ms"] // L.HOUR_MS
    rows = [{**x, "hour": x["known_ms"] // L.HOUR_MS} for x in labels]
    rows = _bucketed(rows, max((r["hour"] for r in rows), default=None))
    f: dict[str, float | None] = {}
    for label, w in (("7d", L.WEEK_MS), ("30d", 30 * L.DAY_MS)):
        h = w // L.HOUR_MS
        known = [x for x in rows if hour_now - h <= x["hour"] < hour_now]
        frauds = sum(x["label"] for x in known)
        f[f"account_frauds_{label}"] = float(frauds)
        f[f"account_fraud_risk_{label}"] = frauds / len(known) if known else None
    return f
