"""The Fraud Detection Handbook's simulated card transactions, read as Vigil's contract.

Data: *Reproducible Machine Learning for Credit Card Fraud Detection - Practical Handbook*
(Le Borgne, Siblini, Lebichot, Bontempi; Universite Libre de Bruxelles / Worldline),
``simulated-data-raw``: one CSV row per transaction with ``TRANSACTION_ID, TX_DATETIME,
CUSTOMER_ID, TERMINAL_ID, TX_AMOUNT, TX_FRAUD, TX_FRAUD_SCENARIO``. Vigil never ships it;
it is read where the user keeps it (``--data``).

Mapping to contract v1: customer -> ``account_id`` ``C<id>``, terminal -> ``counterparty_id``
``T<id>`` (the prefixes keep customer 596 and terminal 596 apart: a counterparty id names an
account where one pays another), ``channel`` card, one currency (EUR) and country (BE).
``TX_DATETIME`` is read as UTC. Labels are ``vigil.labels`` records whose ``ts_ms`` is when
the label became known: the transaction's time plus the protocol's delay.
"""

from __future__ import annotations

import csv
import datetime as dt
import gzip
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import orjson

from vigil.errors import DataError

__all__ = [
    "HANDBOOK_FILE",
    "SCENARIOS",
    "Handbook",
    "default_data_dir",
    "read_handbook",
]

HANDBOOK_FILE = "fraud-handbook/transactions.csv.gz"
COLUMNS = (
    "TRANSACTION_ID",
    "TX_DATETIME",
    "CUSTOMER_ID",
    "TERMINAL_ID",
    "TX_AMOUNT",
    "TX_FRAUD",
    "TX_FRAUD_SCENARIO",
)
# The generator's fraud scenarios (TX_FRAUD_SCENARIO), as the handbook documents them.
SCENARIOS = {1: "amount_over_220", 2: "compromised_terminal", 3: "compromised_customer"}
DAY_MS = 86_400_000


def default_data_dir() -> Path:
    """Where the shared data sets are: ``VIGIL_SHARED_DATA``, else ``../shared/data`` beside
    the project's checkout."""
    env = os.environ.get("VIGIL_SHARED_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def day_ms(day: dt.date) -> int:
    """UTC midnight of ``day`` in epoch milliseconds."""
    return int(dt.datetime(day.year, day.month, day.day, tzinfo=dt.UTC).timestamp() * 1000)


@dataclass
class Handbook:
    """Transactions as columns, in file order (time order)."""

    tx: np.ndarray  # TRANSACTION_ID
    ts_ms: np.ndarray
    customer: np.ndarray
    terminal: np.ndarray
    amount: np.ndarray
    fraud: np.ndarray  # 0/1
    scenario: np.ndarray  # 0 genuine, 1-3 (SCENARIOS)

    def __len__(self) -> int:
        return len(self.tx)

    def tx_id(self, i: int) -> str:
        return f"hb-{int(self.tx[i])}"

    def transaction(self, i: int) -> bytes:
        """Row ``i`` as a ``vigil.transactions`` value."""
        return orjson.dumps(
            {
                "tx_id": self.tx_id(i),
                "ts_ms": int(self.ts_ms[i]),
                "account_id": f"C{int(self.customer[i])}",
                "counterparty_id": f"T{int(self.terminal[i])}",
                "amount": float(self.amount[i]),
                "currency": "EUR",
                "channel": "card",
                "country": "BE",
            }
        )

    def label(self, i: int, delay_ms: int) -> bytes:
        """Row ``i``'s ``vigil.labels`` value, known ``delay_ms`` after the transaction; it
        names the account, counterparty and time of its transaction, so the workers can
        fold it into their state."""
        scenario = int(self.scenario[i])
        return orjson.dumps(
            {
                "tx_id": self.tx_id(i),
                "label": int(self.fraud[i]),
                "typology": SCENARIOS.get(scenario) if self.fraud[i] else None,
                "ts_ms": int(self.ts_ms[i]) + delay_ms,
                "account_id": f"C{int(self.customer[i])}",
                "counterparty_id": f"T{int(self.terminal[i])}",
                "tx_ts_ms": int(self.ts_ms[i]),
            }
        )

    def typology(self, i: int) -> str | None:
        return SCENARIOS.get(int(self.scenario[i])) if self.fraud[i] else None


def read_handbook(data: Path, start: dt.date | None = None, end: dt.date | None = None) -> Handbook:
    """The transactions of days ``[start, end)`` (all when None) from ``data`` (the shared
    data folder, the ``fraud-handbook`` folder or the CSV itself). DataError naming the file
    and line when the file is not the handbook's. The handbook's file is in time order:
    reading stops at the first row past ``end``, and a row that goes back in time before
    it is an error (a file out of order would lose rows silently)."""
    path = _resolve(data)
    lo = start.isoformat() if start else ""
    hi = end.isoformat() if end else "9999"
    day_cache: dict[str, int] = {}
    cols: list[list] = [[] for _ in range(7)]
    try:
        with (
            gzip.open(path, "rt", newline="")
            if path.suffix == ".gz"
            else open(path, newline="") as fh
        ):
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None or tuple(h.strip() for h in header) != COLUMNS:
                raise DataError(f"{path}: not the handbook's columns ({header!r})")
            previous = ""
            for n, row in enumerate(reader, 2):
                when = row[1] if len(row) > 1 else ""
                if when < previous:
                    raise DataError(
                        f"{path}:{n}: {when!r} is before the row above: not in time order"
                    )
                previous = when
                date = when[:10]
                if date >= hi:
                    break
                if date < lo:
                    continue
                try:
                    midnight = day_cache.get(date)
                    if midnight is None:
                        midnight = day_cache[date] = day_ms(dt.date.fromisoformat(date))
                    h, m, s = when[11:19].split(":")
                    ts = midnight + (int(h) * 3600 + int(m) * 60 + int(s)) * 1000
                    values = (int(row[0]), ts, int(row[2]), int(row[3]), float(row[4]))
                    fraud, scenario = int(row[5]), int(row[6])
                except (ValueError, IndexError) as exc:
                    raise DataError(f"{path}:{n}: not a handbook row ({exc})") from None
                for col, v in zip(cols, (*values, fraud, scenario), strict=True):
                    col.append(v)
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise DataError(f"{path}: cannot read the handbook's data: {exc}") from exc
    return Handbook(
        np.array(cols[0], dtype=np.int64),
        np.array(cols[1], dtype=np.int64),
        np.array(cols[2], dtype=np.int64),
        np.array(cols[3], dtype=np.int64),
        np.array(cols[4], dtype=float),
        np.array(cols[5], dtype=np.int8),
        np.array(cols[6], dtype=np.int8),
    )


def _resolve(data: Path) -> Path:
    data = Path(data)
    for candidate in (data / HANDBOOK_FILE, data / Path(HANDBOOK_FILE).name, data):
        if candidate.is_file():
            return candidate
    raise DataError(
        f"no Fraud Detection Handbook data at {data} (looked for {HANDBOOK_FILE}); "
        "pass --data with the shared data folder"
    )


def merged_replay(
    hb: Handbook, delay_ms: int, labels: bool = True
) -> Iterator[tuple[str, int, bytes]]:
    """Transactions and (with ``labels``) their labels as one stream in event-time order:
    (topic kind ``transactions``/``labels``, row, value). A label is published when it
    becomes known, after every transaction before that moment."""
    order = np.argsort(hb.ts_ms, kind="stable")
    if not labels:
        for i in order:
            yield "transactions", int(i), hb.transaction(int(i))
        return
    known = hb.ts_ms + delay_ms
    label_order = np.argsort(known, kind="stable")
    j = 0
    for i in order:
        t = hb.ts_ms[i]
        while j < len(label_order) and known[label_order[j]] <= t:
            k = int(label_order[j])
            yield "labels", k, hb.label(k, delay_ms)
            j += 1
        yield "transactions", int(i), hb.transaction(int(i))
