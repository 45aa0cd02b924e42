"""Event-time sliding-window primitives over one shared per-entity event log.

Semantics (shared by every aggregate here, and by the brute-force reference in the tests):
the value as of an event at ``ts_ms`` aggregates the events already folded in whose time
lies in ``(ts_ms - window_ms, ts_ms]`` — a sliding window that ends at the event itself.
The log keeps ``horizon_ms + grace_ms`` behind the newest event time seen (the
watermark), so events up to ``grace_ms`` late still see a complete window.

One log per entity holds the columns every windowed feature needs; the aggregates are
stateless views over it, so adding a feature adds no state.
"""

from __future__ import annotations

from bisect import bisect_right
from dataclasses import dataclass
from typing import Any

from streams.features.base import FeatureError

__all__ = ["EventLog", "WindowCount", "WindowSum", "WindowDistinct", "TimeSinceLast"]


class EventLog:
    """Events as columns sorted by event time; equal times keep arrival order."""

    def __init__(self, columns: tuple[str, ...], horizon_ms: int, grace_ms: int = 0) -> None:
        if horizon_ms <= 0 or grace_ms < 0:
            raise FeatureError("event log: horizon_ms must be > 0 and grace_ms >= 0")
        self.columns = columns
        self.horizon_ms = horizon_ms
        self.grace_ms = grace_ms
        self.ts: list[int] = []
        self.data: dict[str, list[Any]] = {c: [] for c in columns}
        self.watermark_ms: int | None = None

    def update(self, ts_ms: int, row: dict[str, Any]) -> None:
        i = bisect_right(self.ts, ts_ms)
        self.ts.insert(i, ts_ms)
        for c in self.columns:
            self.data[c].insert(i, row[c])
        if self.watermark_ms is None or ts_ms > self.watermark_ms:
            self.watermark_ms = ts_ms
            cut = bisect_right(self.ts, ts_ms - self.horizon_ms - self.grace_ms)
            if cut:
                del self.ts[:cut]
                for col in self.data.values():
                    del col[:cut]

    def span(self, ts_ms: int, window_ms: int) -> tuple[int, int]:
        """Index range of the events in ``(ts_ms - window_ms, ts_ms]``."""
        if window_ms > self.horizon_ms:
            raise FeatureError(f"window {window_ms} ms exceeds the log horizon {self.horizon_ms}")
        return bisect_right(self.ts, ts_ms - window_ms), bisect_right(self.ts, ts_ms)

    def snapshot(self) -> dict[str, Any]:
        return {
            "ts": list(self.ts),
            "wm": self.watermark_ms,
            **{c: list(v) for c, v in self.data.items()},
        }

    def restore(self, state: dict[str, Any]) -> None:
        try:
            ts, wm = list(state["ts"]), state["wm"]
            data = {c: list(state[c]) for c in self.columns}
        except (KeyError, TypeError) as exc:
            raise FeatureError(f"event log: bad snapshot ({exc!r})") from exc
        if any(len(v) != len(ts) for v in data.values()):
            raise FeatureError("event log: snapshot columns differ in length")
        self.ts, self.watermark_ms, self.data = ts, wm, data


@dataclass(frozen=True)
class WindowCount:
    window_ms: int

    def value(self, log: EventLog, ts_ms: int) -> float:
        lo, hi = log.span(ts_ms, self.window_ms)
        return float(hi - lo)


@dataclass(frozen=True)
class WindowSum:
    column: str
    window_ms: int

    def value(self, log: EventLog, ts_ms: int) -> float:
        lo, hi = log.span(ts_ms, self.window_ms)
        return float(sum(log.data[self.column][lo:hi]))


@dataclass(frozen=True)
class WindowDistinct:
    column: str
    window_ms: int

    def value(self, log: EventLog, ts_ms: int) -> float:
        lo, hi = log.span(ts_ms, self.window_ms)
        return float(len(set(log.data[self.column][lo:hi])))


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
