"""Integration helpers: bounded waits on result topics (no timing assertions)."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from apps.clients import read_topic


def collect(
    bootstrap: str,
    topic: str,
    done: Callable[[list[dict[str, Any]]], bool],
    timeout_s: float = 120.0,
    alive: Callable[[], bool] = lambda: True,
) -> list[dict[str, Any]]:
    """Read ``topic`` from the start until ``done(records)`` or the timeout; returns all."""
    got: list[dict[str, Any]] = []
    deadline = time.monotonic() + timeout_s
    for _key, value, _ts in read_topic(
        bootstrap,
        topic,
        follow=True,
        idle_timeout_s=0.3,
        should_stop=lambda: done(got) or time.monotonic() > deadline or not alive(),
    ):
        got.append(value if isinstance(value, dict) else {"raw": value})
    return got
