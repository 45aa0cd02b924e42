"""The ``vigil`` command: one module per command group, each registering its commands on
the shared application (``base.app``)."""

from __future__ import annotations

from vigil.apps.cli import (  # noqa: F401  (each registers its commands)
    bench,
    broker,
    chaos,
    config,
    consume,
    demo,
    export,
    inspection,
    keys,
    label,
    models,
    publish,
    rates,
    record,
    rules,
    schema,
    train,
    ui,
    worker,
)
from vigil.apps.cli.base import app, console
from vigil.errors import VigilError

__all__ = ["app", "main"]


def main() -> None:
    """``vigil``: an expected failure (:class:`VigilError`) is one line on stderr and exit
    code 1; anything else is a bug and keeps its traceback."""
    try:
        app()
    except VigilError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise SystemExit(1) from None
