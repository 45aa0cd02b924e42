"""Seeded synthetic transactions: a population with normal behaviour plus injected cases.

Event time is simulated (a Poisson process over the population), independent of how fast
the records are published, so a seed always yields the same stream.
"""

from __future__ import annotations

import heapq
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from vigil.errors import UsageError
from vigil.streams.currency import default_rates

__all__ = [
    "GeneratorConfig",
    "Generated",
    "TransactionGenerator",
    "MALFORMED_KINDS",
    "TYPOLOGIES",
    "FLOW_TYPOLOGIES",
    "HIGH_RISK_DESTINATIONS",
]

HOUR_MS = 3_600_000
DAY_MS = 86_400_000
DEFAULT_START_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
_HOMES = {
    "DE": "EUR",
    "FR": "EUR",
    "NL": "EUR",
    "GB": "GBP",
    "US": "USD",
    "CH": "CHF",
    "SE": "SEK",
    "PL": "PLN",
    "JP": "JPY",
    "SG": "SGD",
}


def _rate(currency: str) -> float:
    """EUR per unit of ``currency`` (the built-in reference table)."""
    return default_rates().rates[currency]


_CHANNELS = ("card", "wire", "ach", "cash", "crypto", "p2p")
_CHANNEL_WEIGHTS = (60, 10, 12, 8, 2, 8)
_MCC = ("5411", "5812", "5999", "4111", "5732", "7011", "5311", None)
MALFORMED_KINDS = (
    "bad_json",
    "missing_field",
    "negative_amount",
    "bad_currency",
    "bad_country",
    "ts_out_of_range",
    "wrong_type",
    "not_an_object",
)


# AML cases the generator injects (besides large_value and the small structuring bursts),
# each labelled 1 with its typology. All are visible from the paying account's side.
TYPOLOGIES = (
    "structuring",  # several cash amounts just under the 10,000 reporting threshold in a day
    "fan_out",  # many payments to new counterparties within hours
    "round_amounts",  # a run of round thousands
    "high_risk_geography",  # wires to high-risk jurisdictions
    "dormant_activation",  # months idle, then large transfers
    "profile_mismatch",  # one amount far above the account's own history
    "velocity_spike",  # a burst of ordinary payments far above the account's rate
    "open_and_close",  # a new account moves a lot within two days, then goes quiet
)
# Cases that show only when the payee's side is seen too (money into an account): the
# inflow features (streams.features.inflows) see them when the receiving account pays on.
FLOW_TYPOLOGIES = (
    "fan_in",  # many accounts pay one collector within hours; it moves the money on
    "pass_through",  # money in, nearly all of it out again within hours
    "scatter_gather",  # one account pays several mules, they forward to one collector, which
    # moves the money on
    "round_tripping",  # money sent out comes back to the sender within days
)
HIGH_RISK_DESTINATIONS = ("IR", "KP", "SY", "KY", "PA", "VG", "AF", "MM")


@dataclass(frozen=True)
class GeneratorConfig:
    seed: int = 7
    accounts: int = 1000
    tx_per_account_day: float = 3.0
    start_ms: int = DEFAULT_START_MS
    large_rate: float = 0.002  # share of events that are an injected large transfer
    burst_rate: float = 0.001  # share of events that start a structuring burst
    burst_size: tuple[int, int] = (12, 16)  # small transactions per burst
    burst_span_ms: int = 2 * 3_600_000  # a burst fits in this span
    malformed_rate: float = 0.0  # share of records that are invalid on purpose
    typology_rate: float = 0.0  # share of events that start an injected AML case
    flow_typology_rate: float = 0.0  # share that start a FLOW_TYPOLOGIES case


@dataclass(frozen=True)
class Generated:
    """One record to publish: a valid transaction (``tx``) or malformed bytes (``raw``)."""

    key: str
    tx: dict[str, Any] | None = None
    raw: bytes | None = None
    label: int = 0
    typology: str | None = None
    case: str | None = None  # the injected case this transaction belongs to

    def label_record(self) -> dict[str, Any] | None:
        """The ``vigil.labels`` record of a valid transaction (None for malformed ones)."""
        if self.tx is None:
            return None
        return {
            "tx_id": self.tx["tx_id"],
            "label": self.label,
            "typology": self.typology,
            "ts_ms": self.tx["ts_ms"],
        }

    @property
    def scale(self) -> str | None:
        """``small`` or ``large`` for a flow case (from its case id), else None."""
        return case_scale(self.case) if self.typology in FLOW_TYPOLOGIES else None

    @property
    def value(self) -> bytes:
        if self.raw is not None:
            return self.raw
        return json.dumps(self.tx, separators=(",", ":")).encode()


def case_scale(case: str | None) -> str | None:
    """``small`` or ``large`` from a flow case's id (``<typology>-<scale>-<n>``), else None."""
    parts = (case or "").split("-")
    return parts[-2] if len(parts) >= 3 and parts[-2] in ("small", "large") else None


class AccountLabels:
    """Per-account ground truth: every account that paid money within an injected case,
    once per case, with the time of its first payment in it. Feed it the generated items
    (``add``) in order; ``records`` are the label records (JSON-ready)."""

    def __init__(self) -> None:
        self._seen: dict[tuple[str, str], dict[str, Any]] = {}

    def add(self, item: Generated) -> None:
        if item.tx is None or not item.label or item.case is None:
            return
        key = (item.key, item.case)
        if key not in self._seen:
            self._seen[key] = {
                "account_id": item.key,
                "label": 1,
                "typology": item.typology,
                "case": item.case,
                "scale": item.scale,
                "ts_ms": item.tx["ts_ms"],
            }

    def records(self) -> list[dict[str, Any]]:
        return list(self._seen.values())


@dataclass
class _Account:
    account_id: str
    home: str
    median_amount: float
    payees: list[str]
    device: str


@dataclass(order=True)
class _Pending:
    ts_ms: int
    seq: int
    item: Generated = field(compare=False)


class TransactionGenerator:
    """Iterate to get :class:`Generated` records in event-time order (endless)."""

    def __init__(self, config: GeneratorConfig | None = None) -> None:
        self.config = cfg = config or GeneratorConfig()
        self._rng = random.Random(cfg.seed)
        self._accounts = [self._new_account(i) for i in range(cfg.accounts)]
        self._gap_ms = DAY_MS / (cfg.accounts * cfg.tx_per_account_day)
        self._clock_ms = float(cfg.start_ms)
        self._seq = 0
        self._pending: list[_Pending] = []

    def _new_account(self, i: int) -> _Account:
        rng = self._rng
        home = rng.choice(list(_HOMES))
        payees = [f"cp-{rng.randrange(10**6):06d}" for _ in range(rng.randint(3, 8))]
        return _Account(
            f"acc-{i:06d}",
            home,
            rng.lognormvariate(4.5, 1.0),
            payees,
            f"dev-{rng.randrange(10**8):08d}",
        )

    def _tx(
        self, acct: _Account, ts_ms: int, amount: float, round_to: float = 0.01, **over: Any
    ) -> dict[str, Any]:
        """A transaction of ``acct``'s: ``amount`` is in EUR, paid in the account's home
        currency (the built-in reference rates), rounded to a multiple of ``round_to``."""
        rng = self._rng
        currency = _HOMES[acct.home]
        paid = amount / _rate(currency)
        paid = round(max(round(paid / round_to), 1) * round_to, 2)
        self._seq += 1
        abroad = rng.random() < 0.08
        country = rng.choice(list(_HOMES)) if abroad else acct.home
        payee = rng.choice(acct.payees) if rng.random() > 0.1 else f"cp-{rng.randrange(10**6):06d}"
        tx = {
            "tx_id": f"tx-{self.config.seed}-{self._seq:09d}",
            "ts_ms": int(ts_ms),
            "account_id": acct.account_id,
            "counterparty_id": payee,
            "amount": paid,
            "currency": currency,
            "channel": rng.choices(_CHANNELS, _CHANNEL_WEIGHTS)[0],
            "country": country,
            "device_id": acct.device if rng.random() > 0.05 else None,
            "merchant_category": rng.choice(_MCC),
        }
        tx.update(over)
        return tx

    def _schedule(self, item: Generated, ts_ms: int) -> None:
        heapq.heappush(self._pending, _Pending(ts_ms, self._seq, item))

    def _next_normal(self) -> None:
        cfg, rng = self.config, self._rng
        self._clock_ms += rng.expovariate(1.0 / self._gap_ms)
        ts = int(self._clock_ms)
        acct = rng.choice(self._accounts)
        u = rng.random()
        if u < cfg.large_rate:
            amount = rng.uniform(500_001, 2_500_000)
            tx = self._tx(acct, ts, amount, channel="wire")
            case = f"large_value-{self._seq}"
            item = Generated(acct.account_id, tx, label=1, typology="large_value", case=case)
            self._schedule(item, ts)
        elif u < cfg.large_rate + cfg.burst_rate:
            self._burst(acct, ts)
        elif u < cfg.large_rate + cfg.burst_rate + cfg.typology_rate:
            self._case(rng.choice(TYPOLOGIES), acct, ts)
        elif u < cfg.large_rate + cfg.burst_rate + cfg.typology_rate + cfg.flow_typology_rate:
            self._flow_case(rng.choice(FLOW_TYPOLOGIES), acct, ts)
        else:
            amount = min(rng.lognormvariate(0, 1.0) * acct.median_amount, 400_000.0)
            self._schedule(Generated(acct.account_id, self._tx(acct, ts, amount)), ts)
        if rng.random() < cfg.malformed_rate:
            self._schedule(self._malformed(acct, ts), ts)

    def _burst(self, acct: _Account, ts_ms: int) -> None:
        """Structuring: a run of small payments within a couple of hours."""
        cfg, rng = self.config, self._rng
        case = f"burst-{self._seq}"
        for _ in range(rng.randint(*cfg.burst_size)):
            at = ts_ms + rng.randrange(cfg.burst_span_ms)
            tx = self._tx(acct, at, rng.uniform(700, 999.99), channel="p2p")
            item = Generated(acct.account_id, tx, label=1, typology="structuring", case=case)
            self._schedule(item, at)

    def _case(self, typology: str, acct: _Account, ts_ms: int) -> None:
        """One injected AML case: its transactions, labelled with the typology."""
        rng = self._rng
        runs: list[tuple[int, float, dict[str, Any]]] = []  # (ms after ts_ms, amount, fields)
        if typology == "structuring":
            for _ in range(rng.randint(3, 6)):
                runs.append(
                    (rng.randrange(20 * HOUR_MS), rng.uniform(9000, 9999.99), {"channel": "cash"})
                )
        elif typology == "fan_out":
            for _ in range(rng.randint(12, 20)):
                payee = f"cp-fo-{rng.randrange(10**8):08d}"
                runs.append(
                    (
                        rng.randrange(3 * HOUR_MS),
                        rng.uniform(200, 3000),
                        {"counterparty_id": payee, "channel": "p2p"},
                    )
                )
        elif typology == "round_amounts":
            for _ in range(rng.randint(5, 8)):
                # round thousands in the account's own currency
                amount = rng.randint(2, 20) * 1000.0
                runs.append(
                    (rng.randrange(2 * DAY_MS), amount, {"channel": "wire", "round_to": 1000})
                )
        elif typology == "high_risk_geography":
            for _ in range(rng.randint(1, 3)):
                where = {"country": rng.choice(HIGH_RISK_DESTINATIONS), "channel": "wire"}
                runs.append((rng.randrange(6 * HOUR_MS), rng.uniform(3000, 60000), where))
        elif typology == "dormant_activation":
            acct = self._side_account("dor")
            old = self._tx(acct, ts_ms - rng.randint(60, 180) * DAY_MS, acct.median_amount)
            self._schedule(Generated(acct.account_id, old), old["ts_ms"])
            for _ in range(rng.randint(2, 4)):
                runs.append(
                    (rng.randrange(12 * HOUR_MS), rng.uniform(2000, 30000), {"channel": "wire"})
                )
        elif typology == "profile_mismatch":
            amount = min(max(5000.0, acct.median_amount * rng.uniform(60, 150)), 450_000.0)
            runs.append((0, amount, {"channel": "wire"}))
        elif typology == "velocity_spike":
            for _ in range(rng.randint(10, 16)):
                amount = min(rng.lognormvariate(0, 1.0) * acct.median_amount, 400_000.0)
                runs.append((rng.randrange(HOUR_MS), amount, {}))
        elif typology == "open_and_close":
            acct = self._side_account("new")
            for _ in range(rng.randint(3, 6)):
                runs.append(
                    (rng.randrange(2 * DAY_MS), rng.uniform(5000, 15000), {"channel": "wire"})
                )
        else:
            raise UsageError(f"unknown typology {typology!r}")
        case = f"{typology}-{self._seq}"
        for after, amount, fields in runs:
            tx = self._tx(acct, ts_ms + after, amount, **fields)
            item = Generated(acct.account_id, tx, label=1, typology=typology, case=case)
            self._schedule(item, tx["ts_ms"])

    def _flow_case(self, typology: str, acct: _Account, ts_ms: int) -> None:
        """A case whose money moves between accounts: payee ids are account ids. Half the
        cases are *small*: amounts of the size of the accounts' own payments (tens to
        hundreds), which no fixed amount threshold sees; the rest move thousands."""
        rng = self._rng
        small = rng.random() < 0.5
        habit = acct.median_amount  # the initiating account's typical payment

        def size(low: float, high: float, times: tuple[float, float]) -> float:
            return habit * rng.uniform(*times) if small else rng.uniform(low, high)

        moves: list[tuple[_Account, str, int, float]] = []  # (payer, payee id, at, amount)
        if typology == "fan_in":
            collector = self._side_account("col")
            payers = rng.sample(self._accounts, rng.randint(10, 20))
            total = 0.0
            for payer in payers:
                amount = (
                    payer.median_amount * rng.uniform(0.5, 3) if small else rng.uniform(500, 3000)
                )
                total += amount
                moves.append(
                    (payer, collector.account_id, ts_ms + rng.randrange(6 * HOUR_MS), amount)
                )
            out_at = ts_ms + 6 * HOUR_MS + rng.randrange(18 * HOUR_MS)
            moves.append((collector, self._outside_payee(), out_at, total * 0.95))
        elif typology == "pass_through":
            mule = self._side_account("mul")
            amount = size(5000, 80000, (3, 15))
            moves.append((acct, mule.account_id, ts_ms, amount))
            out_at = ts_ms + HOUR_MS + rng.randrange(5 * HOUR_MS)
            moves.append((mule, self._outside_payee(), out_at, amount * rng.uniform(0.85, 0.98)))
        elif typology == "scatter_gather":
            collector = self._side_account("col")
            gathered = 0.0
            for _ in range(rng.randint(5, 10)):
                mule = self._side_account("mul")
                amount = size(1000, 9000, (1, 5))
                at = ts_ms + rng.randrange(3 * HOUR_MS)
                moves.append((acct, mule.account_id, at, amount))
                gathered += amount * 0.95
                moves.append(
                    (
                        mule,
                        collector.account_id,
                        at + HOUR_MS + rng.randrange(6 * HOUR_MS),
                        amount * 0.95,
                    )
                )
            out_at = ts_ms + 10 * HOUR_MS + rng.randrange(12 * HOUR_MS)
            moves.append((collector, self._outside_payee(), out_at, gathered * 0.95))
        elif typology == "round_tripping":
            # a ring of 2 to 6 accounts: the money goes round, a little less at each hop,
            # and comes back to the sender within days
            ring = [acct] + [self._side_account("rtp") for _ in range(rng.randint(1, 5))]
            amount = size(5000, 50000, (3, 15))
            at = ts_ms
            for payer, payee in zip(ring, [*ring[1:], acct], strict=True):
                moves.append((payer, payee.account_id, at, amount))
                at += 2 * HOUR_MS + rng.randrange(18 * HOUR_MS)
                amount *= rng.uniform(0.9, 0.99)
        else:
            raise UsageError(f"unknown flow typology {typology!r}")
        case = f"{typology}-{'small' if small else 'large'}-{self._seq}"
        for payer, payee, at, amount in moves:
            tx = self._tx(payer, at, amount, counterparty_id=payee, channel="wire")
            item = Generated(payer.account_id, tx, label=1, typology=typology, case=case)
            self._schedule(item, at)

    def _outside_payee(self) -> str:
        """A payee outside the bank: where laundered money leaves."""
        return f"cp-x-{self._rng.randrange(10**8):08d}"

    def _side_account(self, prefix: str) -> _Account:
        """An account outside the everyday population (no ordinary traffic)."""
        acct = self._new_account(self._rng.randrange(10**6))
        acct.account_id = f"{prefix}-{acct.account_id[4:]}-{self._seq}"
        return acct

    def _malformed(self, acct: _Account, ts_ms: int) -> Generated:
        kind = self._rng.choice(MALFORMED_KINDS)
        tx = self._tx(acct, ts_ms, 10.0)
        raw: bytes
        if kind == "bad_json":
            raw = json.dumps(tx).encode()[:-7]
        elif kind == "not_an_object":
            raw = b"[1, 2, 3]"
        else:
            if kind == "missing_field":
                del tx["amount"]
            elif kind == "negative_amount":
                tx["amount"] = -12.5
            elif kind == "bad_currency":
                tx["currency"] = "euro"
            elif kind == "bad_country":
                tx["country"] = "Germany"
            elif kind == "ts_out_of_range":
                tx["ts_ms"] = ts_ms // 1000  # seconds, not milliseconds
            elif kind == "wrong_type":
                tx["amount"] = "12.50"
            raw = json.dumps(tx).encode()
        return Generated(acct.account_id, raw=raw, typology=f"malformed:{kind}")

    def __iter__(self) -> Iterator[Generated]:
        return self

    def __next__(self) -> Generated:
        # Emit pending records once the clock has passed them: event-time order overall.
        while not self._pending or self._pending[0].ts_ms > self._clock_ms:
            self._next_normal()
        return heapq.heappop(self._pending).item

    def take(self, n: int) -> list[Generated]:
        return [next(self) for _ in range(n)]
