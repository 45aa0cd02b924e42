"""``vigil worker risk|inspection``: the stream workers."""

from __future__ import annotations

import typer

from vigil.apps.broker import (
    BrokerError,
)
from vigil.apps.cli.base import (
    app,
    fail,
    get_bootstrap,
    get_settings,
    setup_logging,
)

worker_app = typer.Typer(help="Run a stream worker.", no_args_is_help=True)
app.add_typer(worker_app, name="worker")


@worker_app.command("risk")
def worker_risk() -> None:
    """Consume transactions; produce scores, alerts and dead letters."""
    from vigil.apps.risk import run_worker

    settings = get_settings()
    get_bootstrap(settings)  # clear error before faust starts
    # before the app is built: it logs which model and rules it loaded (or that it scores
    # with rules only), and faust configures logging only once its worker starts
    setup_logging(settings)
    try:
        run_worker(settings)
    except BrokerError as exc:  # the topics do not fit the worker: said before it starts
        fail(exc, 2)


@worker_app.command("inspection")
def worker_inspection() -> None:
    """Consume camera frames; produce defect alerts, clip scores and dead letters."""
    from vigil.apps.inspection import run_worker

    settings = get_settings()
    get_bootstrap(settings)  # clear error before faust starts
    # before the app is built: it logs which model and rules it loaded (or that it scores
    # with rules only), and faust configures logging only once its worker starts
    setup_logging(settings)
    run_worker(settings)
