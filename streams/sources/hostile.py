"""Hostile transaction records, as an attacker (or a broken producer) sends them: for
``vigil chaos --fuzz`` and the tests. Every record is either contract-valid at an extreme
(it must be scored with a valid score) or invalid (it must be dead-lettered); nothing else
may happen to it.

>>> records = hostile_records(40, seed=1)
>>> len({r.kind for r in records}) >= 30
True
>>> sorted({r.expect for r in records})
['dead', 'scored']
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from vigil.streams.schemas import MAX_AMOUNT, MAX_TS_MS, MIN_TS_MS

__all__ = ["HOSTILE_KINDS", "Hostile", "hostile_records"]

T0 = 1_767_225_600_000  # 2026-01-01


@dataclass(frozen=True)
class Hostile:
    """One record: its ``kind``, what must become of it (``scored`` or ``dead``), and the
    Kafka key, value and headers to publish. ``tx_id`` names the score of a valid one."""

    kind: str
    expect: str
    key: bytes | None
    value: bytes | None
    headers: list[tuple[str, bytes]]
    tx_id: str | None = None


def _tx(n: int, rng: random.Random, **over: Any) -> dict[str, Any]:
    tx = {
        "tx_id": f"hostile-{n}",
        "ts_ms": T0 + n * 1000,
        "account_id": f"ha-{rng.randrange(50)}",
        "counterparty_id": f"hc-{rng.randrange(200)}",
        "amount": round(rng.uniform(1, 5000), 2),
        "currency": "EUR",
        "channel": rng.choice(["card", "wire", "ach", "p2p"]),
        "country": rng.choice(["DE", "FR", "KP", "IR", "US"]),
        "device_id": None,
        "merchant_category": None,
    }
    tx.update(over)
    return tx


def _deep(depth: int) -> str:
    return "[" * depth + "]" * depth


# kind -> (expected outcome, maker(n, rng) -> (key, value) or (key, value, tx_id or None))
_Maker = Callable[[int, random.Random], tuple[bytes | None, bytes | None, str | None]]


def _valid(**over: Any) -> _Maker:
    def make(n: int, rng: random.Random) -> tuple[bytes | None, bytes | None, str | None]:
        fields = {k: (v(n) if callable(v) else v) for k, v in over.items()}
        tx = _tx(n, rng, **fields)
        return tx["account_id"].encode(), json.dumps(tx).encode(), tx["tx_id"]

    return make


def _invalid(**over: Any) -> _Maker:
    def make(n: int, rng: random.Random) -> tuple[bytes | None, bytes | None, str | None]:
        tx = _tx(n, rng)
        for k, v in over.items():
            if v is _DROP:
                tx.pop(k)
            else:
                tx[k] = v
        return tx["account_id"].encode(), json.dumps(tx).encode(), None

    return make


def _raw(value: bytes | None, key: bytes | None = b"raw") -> _Maker:
    return lambda n, rng: (key, value, None)


def _text(edit: Callable[[str], str]) -> _Maker:
    """An otherwise valid transaction's JSON text, edited (literals JSON has no words for)."""

    def make(n: int, rng: random.Random) -> tuple[bytes | None, bytes | None, str | None]:
        return b"text", edit(json.dumps(_tx(n, rng))).encode(), None

    return make


_DROP = object()
_AMOUNT = '"amount": '

HOSTILE_KINDS: dict[str, tuple[str, _Maker]] = {
    # invalid: each must reach the DLQ with its reason
    "not_json": ("dead", _raw(b"{not json")),
    "empty": ("dead", _raw(b"")),
    "tombstone": ("dead", _raw(None)),
    "json_null": ("dead", _raw(b"null")),
    "json_array": ("dead", _raw(b"[1, 2, 3]")),
    "json_string": ("dead", _raw(b'"a transaction"')),
    "invalid_utf8": ("dead", _raw(b'{"tx_id": "\xff\xfe"}')),
    "deep_nesting": ("dead", _raw(_deep(100_000).encode())),
    "deep_unknown_field": ("dead", _text(lambda t: t[:-1] + ', "x": ' + _deep(5000) + "}")),
    "missing_amount": ("dead", _invalid(amount=_DROP)),
    "missing_tx_id": ("dead", _invalid(tx_id=_DROP)),
    "amount_negative": ("dead", _invalid(amount=-5.0)),
    "amount_zero": ("dead", _invalid(amount=0)),
    "amount_nan": ("dead", _text(lambda t: t.replace(_AMOUNT, _AMOUNT + 'NaN, "_": '))),
    "amount_infinity": ("dead", _text(lambda t: t.replace(_AMOUNT, _AMOUNT + '1e999, "_": '))),
    "amount_1e40": ("dead", _invalid(amount=1e40)),
    "amount_1e308": ("dead", _invalid(amount=1e308)),
    "amount_huge_integer": (
        "dead",
        _text(lambda t: t.replace(_AMOUNT, _AMOUNT + "9" * 400 + ', "_": ')),
    ),
    "amount_string": ("dead", _invalid(amount="100")),
    "amount_bool": ("dead", _invalid(amount=True)),
    "ts_seconds": ("dead", _invalid(ts_ms=1_767_225_600)),
    "ts_float": ("dead", _invalid(ts_ms=1.7672256e12)),
    "ts_far_future": ("dead", _invalid(ts_ms=MAX_TS_MS)),
    "ts_negative": ("dead", _invalid(ts_ms=-1)),
    "currency_lowercase": ("dead", _invalid(currency="eur")),
    "currency_not_in_rates": ("dead", _invalid(currency="XAU")),  # valid, but no rate
    "country_long": ("dead", _invalid(country="DEU")),
    "channel_unknown": ("dead", _invalid(channel="telepathy")),
    "tx_id_too_long": ("dead", _invalid(tx_id="t" * 129)),
    "device_id_number": ("dead", _invalid(device_id=12345)),
    "account_id_huge_and_key": (
        "dead",
        lambda n, rng: (
            b"k" * 400_000,
            json.dumps(_tx(n, rng, account_id="a" * 400_000)).encode(),
            None,
        ),
    ),
    "malformed_900kb": ("dead", _raw(b"{" + b"x" * 900_000)),
    # contract-valid at an extreme: each must be scored, with a valid score
    "amount_smallest_subnormal": ("scored", _valid(amount=5e-324)),
    "amount_subnormal": ("scored", _valid(amount=1e-320)),
    "amount_largest": ("scored", _valid(amount=MAX_AMOUNT)),
    "amount_largest_dearest": ("scored", _valid(amount=MAX_AMOUNT, currency="GBP")),
    "amount_smallest_cheapest": ("scored", _valid(amount=5e-324, currency="IDR")),
    "ts_earliest": ("scored", _valid(ts_ms=MIN_TS_MS)),
    "ts_latest": ("scored", _valid(ts_ms=MAX_TS_MS - 1)),
    "ids_longest": ("scored", _valid(tx_id=lambda n: f"{n:0128d}", account_id="a" * 128)),
    "ids_unicode": ("scored", _valid(tx_id=lambda n: f"Ω-{n}-🙂-\u202e", account_id="账户-1")),
    "ids_control_chars": ("scored", _valid(tx_id=lambda n: f"nul\u0000{n}\u0007")),
    "unknown_field_large": ("scored", _valid(note="n" * 300_000)),
    "self_payment": ("scored", _valid(counterparty_id="ha-1", account_id="ha-1", channel="wire")),
    "many_headers": ("scored", _valid()),  # headers added below
}


def hostile_records(n: int, seed: int = 0) -> list[Hostile]:
    """``n`` hostile records, cycling through every kind (then at random); each has a
    header ``chaos-id`` (its index), which its dead letter keeps."""
    rng = random.Random(seed)
    kinds = list(HOSTILE_KINDS)
    out = []
    for i in range(n):
        kind = kinds[i] if i < len(kinds) else rng.choice(kinds)
        expect, make = HOSTILE_KINDS[kind]
        key, value, tx_id = make(i, rng)
        headers = [("chaos-id", str(i).encode())]
        if kind == "many_headers":
            headers += [(f"h{j}", b"v" * 100) for j in range(200)]
        out.append(Hostile(kind, expect, key, value, headers, tx_id))
    return out
