"""Event-time sliding-window primitives.

Semantics (shared by every primitive here, and by the brute-force reference in the tests):
the value as of an event at ``ts_ms`` aggregates the events already folded in whose time
lies in ``(ts_ms - window_ms, ts_ms]`` — a sliding window that ends at the event itself.
State is kept for ``window_ms + grace_ms`` behind the newest event time seen (the
watermark), so events up to ``grace_ms`` late still see a complete window.
"""

from __future__ import annotations

from bisect import bisect_right
from typing import Any

from streams.features.base import FeatureError

__all__ = ["WindowedSum", "WindowedCount", "WindowedDistinct", "TimeSinceLast"]


class _Window:
    """Events as parallel lists sorted by time; equal times keep arrival order."""

    kind = "window"

    def __init__(self, window_ms: int, grace_ms: int = 0) -> None:
        if window_ms <= 0 or grace_ms < 0:
            raise FeatureError(f"{self.kind}: window_ms must be > 0 and grace_ms >= 0")
        self.window_ms = window_ms
        self.grace_ms = grace_ms
        self._ts: list[int] = []
        self._items: list[Any] = []
        self._watermark_ms: int | None = None

    def update(self, ts_ms: int, item: Any = None) -> None:
        i = bisect_right(self._ts, ts_ms)
        self._ts.insert(i, ts_ms)
        self._items.insert(i, item)
        if self._watermark_ms is None or ts_ms > self._watermark_ms:
            self._watermark_ms = ts_ms
            self._evict()

    def _evict(self) -> None:
        assert self._watermark_ms is not None
        horizon = self._watermark_ms - self.window_ms - self.grace_ms
        cut = bisect_right(self._ts, horizon)
        if cut:
            del self._ts[:cut]
            del self._items[:cut]

    def _range(self, ts_ms: int) -> tuple[int, int]:
        return bisect_right(self._ts, ts_ms - self.window_ms), bisect_right(self._ts, ts_ms)

    def snapshot(self) -> dict[str, Any]:
        return {"ts": list(self._ts), "items": list(self._items), "wm": self._watermark_ms}

    def restore(self, state: dict[str, Any]) -> None:
        try:
            ts, items, wm = state["ts"], state["items"], state["wm"]
        except (KeyError, TypeError) as exc:
            raise FeatureError(f"{self.kind}: bad snapshot {state!r:.80}") from exc
        if len(ts) != len(items):
            raise FeatureError(f"{self.kind}: snapshot has {len(ts)} times, {len(items)} items")
        self._ts, self._items, self._watermark_ms = list(ts), list(items), wm


class WindowedSum(_Window):
    """Sum of event values in the sliding window."""

    kind = "windowed_sum"

    def value(self, ts_ms: int) -> float:
        lo, hi = self._range(ts_ms)
        return float(sum(self._items[lo:hi]))


class WindowedCount(_Window):
    """Number of events in the sliding window (the item, if any, is ignored)."""

    kind = "windowed_count"

    def update(self, ts_ms: int, item: Any = None) -> None:
        super().update(ts_ms, None)

    def value(self, ts_ms: int) -> float:
        lo, hi = self._range(ts_ms)
        return float(hi - lo)


class WindowedDistinct(_Window):
    """Number of distinct items (for example counterparty ids) in the sliding window."""

    kind = "windowed_distinct"

    def value(self, ts_ms: int) -> float:
        lo, hi = self._range(ts_ms)
        return float(len(set(self._items[lo:hi])))


class TimeSinceLast:
    """Milliseconds from the latest earlier event to this one (0 if that one is later);
    ``None`` for an entity's first event."""

    def __init__(self) -> None:
        self._prev_ms: int | None = None  # latest event time before the current one
        self._last_ms: int | None = None  # latest event time including the current one

    def update(self, ts_ms: int, item: Any = None) -> None:
        self._prev_ms = self._last_ms
        self._last_ms = ts_ms if self._last_ms is None else max(self._last_ms, ts_ms)

    def value(self, ts_ms: int) -> float | None:
        return None if self._prev_ms is None else float(max(0, ts_ms - self._prev_ms))

    def snapshot(self) -> dict[str, Any]:
        return {"prev": self._prev_ms, "last": self._last_ms}

    def restore(self, state: dict[str, Any]) -> None:
        try:
            self._prev_ms, self._last_ms = state["prev"], state["last"]
        except (KeyError, TypeError) as exc:
            raise FeatureError(f"time_since_last: bad snapshot {state!r:.80}") from exc
