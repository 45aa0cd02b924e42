"""Replay transactions from a JSON Lines file, one record per non-empty line, bytes as-is.

Lines are not validated here: the worker validates and dead-letters, exactly as it would
for any other producer. The key is the line's ``account_id`` when it has one.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

from vigil.errors import DataError

__all__ = ["read_jsonl", "read_labels"]


def read_jsonl(path: str | Path) -> Iterator[tuple[str | None, bytes]]:
    with open(path, "rb") as fh:
        for line in fh:
            line = line.strip()
            if not line:
                continue
            try:
                doc = json.loads(line)
                key = doc.get("account_id") if isinstance(doc, dict) else None
            except ValueError:
                key = None
            yield (key if isinstance(key, str) else None), line


def read_labels(path: str | Path) -> dict[str, tuple[int, str | None]]:
    """Ground truth from a JSON Lines file of ``vigil.labels`` records: tx_id -> (label,
    typology). A line that is not a label record raises ValueError naming file and line."""
    truth: dict[str, tuple[int, str | None]] = {}
    with open(path, "rb") as fh:
        for n, line in enumerate(fh, 1):
            if not line.strip():
                continue
            try:
                doc = json.loads(line)
                truth[str(doc["tx_id"])] = (int(doc["label"]), doc.get("typology"))
            except (ValueError, KeyError, TypeError, AttributeError) as exc:
                raise DataError(f"{path}:{n}: not a label record ({exc!r})") from None
    return truth
