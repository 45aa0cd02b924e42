"""A broker to run against: the configured one, the running ``vigil broker``, or a new one."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from vigil.apps.broker import BrokerError, EmbeddedBroker, resolve_bootstrap
from vigil.apps.settings import Settings

__all__ = ["broker_for"]


@contextlib.contextmanager
def broker_for(settings: Settings) -> Iterator[tuple[str, EmbeddedBroker | None]]:
    """Yield ``(bootstrap, embedded broker or None)``; an embedded one stops on exit."""
    try:
        yield resolve_bootstrap(settings), None
        return
    except BrokerError:
        pass
    broker = EmbeddedBroker(log_path=settings.state_dir / "broker.log")
    settings.state_dir.mkdir(parents=True, exist_ok=True)
    with broker:
        yield broker.bootstrap, broker
