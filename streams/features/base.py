"""The lifecycle every feature operator follows.

An operator is a plain state object, free of I/O:

- ``update(ts_ms, value)`` folds one event in (events arrive in partition order; their
  event times may be out of order by up to the operator's grace);
- ``value(ts_ms)`` reads the feature as of an event time, after its update;
- ``snapshot()`` returns JSON-serialisable state; ``restore(state)`` rebuilds it exactly,
  which is how faust tables carry feature state across restarts and rebalances.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable

__all__ = ["FeatureOperator", "FeatureError"]


class FeatureError(ValueError):
    """A feature operator was given state or input it cannot use."""


@runtime_checkable
class FeatureOperator(Protocol):
    def update(self, ts_ms: int, value: Any) -> None: ...

    def value(self, ts_ms: int) -> float | None: ...

    def snapshot(self) -> dict[str, Any]: ...

    def restore(self, state: dict[str, Any]) -> None: ...
