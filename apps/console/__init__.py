"""``vigil ui``: the live web console (alerts as cases, dispositions, rates, versions,
inspection alerts with their frames), built on the topics alone."""

from vigil.apps.console.server import Console, console_app, serve
from vigil.apps.console.state import ConsoleState

__all__ = ["Console", "ConsoleState", "console_app", "serve"]
