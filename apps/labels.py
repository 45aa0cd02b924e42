"""Analyst feedback: a label for a transaction or an alert, as a ``vigil.labels`` record.

The record names the transaction's account, counterparty and time (read back from
``vigil.transactions``), so the risk workers fold it into both sides' state (account and
counterparty fraud counts and risk, ``streams.features.payee``) as well as training reading
it. Its ``ts_ms`` is when it became known: now.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import orjson

from vigil.apps.broker import BrokerError
from vigil.apps.clients import read_messages
from vigil.apps.kafka import make_producer
from vigil.errors import NotFoundError, UsageError

__all__ = ["find_transaction", "label_record", "publish_label"]

MAX_TYPOLOGY = 64


def _scan(
    bootstrap: str, topic: str, field: str, wanted: str, progress: Callable[[int], None]
) -> dict[str, Any] | None:
    """The first record of ``topic`` whose JSON ``field`` is ``wanted`` (None: not there)."""
    seen = 0
    needle = orjson.dumps(wanted)
    for msg in read_messages(bootstrap, topic):
        seen += 1
        if seen % 100_000 == 0:
            progress(seen)
        raw = msg.value() or b""
        if needle not in raw:  # cheap: most records do not even contain the id
            continue
        try:
            doc = orjson.loads(raw)
        except orjson.JSONDecodeError:
            continue
        if isinstance(doc, dict) and doc.get(field) == wanted:
            return doc
    return None


def find_transaction(
    bootstrap: str,
    transactions_topic: str,
    alerts_topic: str,
    ident: str,
    progress: Callable[[int], None] = lambda _n: None,
) -> dict[str, Any]:
    """The transaction ``ident`` names: a transaction id, or an alert id (whose alert names
    the transaction). NotFoundError when neither topic holds it."""
    tx = _scan(bootstrap, transactions_topic, "tx_id", ident, progress)
    if tx is None:
        alert = _scan(bootstrap, alerts_topic, "alert_id", ident, progress)
        if alert is None:
            raise NotFoundError(
                f"{ident!r} is neither a transaction on {transactions_topic} nor an alert on "
                f"{alerts_topic}"
            )
        tx = _scan(bootstrap, transactions_topic, "tx_id", str(alert.get("tx_id")), progress)
        if tx is None:
            raise NotFoundError(
                f"alert {ident!r} names transaction {alert.get('tx_id')!r}, which is no longer "
                f"on {transactions_topic} (retention)"
            )
    return tx


def label_record(
    tx: dict[str, Any], fraud: bool, typology: str | None, now_ms: int | None = None
) -> dict[str, Any]:
    if typology is not None and not (0 < len(typology) <= MAX_TYPOLOGY):
        raise UsageError(f"--typology must be 1 to {MAX_TYPOLOGY} characters")
    record = {
        "tx_id": tx["tx_id"],
        "label": 1 if fraud else 0,
        "typology": typology,
        "ts_ms": time.time_ns() // 1_000_000 if now_ms is None else now_ms,
        "account_id": tx.get("account_id"),
        "counterparty_id": tx.get("counterparty_id"),
        "tx_ts_ms": tx.get("ts_ms"),
        "source": "analyst",
    }
    return {k: v for k, v in record.items() if v is not None or k == "typology"}


def publish_label(bootstrap: str, topic: str, record: dict[str, Any]) -> None:
    """Publish ``record`` keyed by its transaction id; BrokerError unless delivered."""
    producer = make_producer(bootstrap)
    failed: list[str] = []

    def report(err: Any, _msg: Any) -> None:
        if err is not None:
            failed.append(str(err))

    producer.produce(topic, orjson.dumps(record), record["tx_id"].encode(), on_delivery=report)
    if producer.flush(10) or failed:
        raise BrokerError(f"the label was not delivered to {topic}: {failed or 'timed out'}")
