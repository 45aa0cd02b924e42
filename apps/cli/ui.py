"""``vigil ui``: the live web console."""

from __future__ import annotations

import signal
import threading

import typer

from vigil.apps.cli.base import app, console, get_bootstrap, get_settings, setup_logging
from vigil.apps.process import stop_on_signals


@app.command()
def ui(
    host: str = typer.Option("127.0.0.1", help="address to serve on (0.0.0.0: every one)"),
    port: int = typer.Option(8080, min=1, max=65535, help="port to serve on"),
) -> None:
    """Serve the live console: throughput and latency, dead letters by reason, alerts as
    cases per account with their reasons, rule hits and features, disposition buttons that
    write vigil.labels, inspection alerts with their frames, versions and releases. It
    reads the topics like any client; Ctrl-C stops it."""
    from vigil.apps.console import serve

    settings = get_settings()
    bootstrap = get_bootstrap(settings)
    setup_logging(settings)
    shown = "127.0.0.1" if host in ("0.0.0.0", "") else host
    console.print(f"console on http://{shown}:{port}/ (broker {bootstrap}); Ctrl-C stops it")
    stop = threading.Event()
    with stop_on_signals(stop, (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)):
        try:
            serve(settings, bootstrap, host, port, stop)
        except OSError as exc:  # the port is taken
            console.print(f"[red]error:[/] cannot serve on {host}:{port}: {exc}")
            raise typer.Exit(2) from None
