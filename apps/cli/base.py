"""What every ``vigil`` command shares: the application, the consoles, and how settings,
the broker and errors reach the user."""

from __future__ import annotations

import json
import logging
import logging.config
from typing import NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from vigil.apps.broker import (
    BrokerError,
    resolve_bootstrap,
    wait_ready,
)
from vigil.apps.logs import logging_config
from vigil.apps.settings import Settings, load_settings
from vigil.models.signing import SignatureError, SigningKey

app = typer.Typer(
    help="Vigil: real-time risk and inspection on Kafka streams.",
    no_args_is_help=True,
    add_completion=False,
)
console = Console(stderr=True)


def progress_bar(label: str, disable: bool = False) -> Progress:
    """A progress bar for long CLI work: label, bar, done/total, elapsed."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )


out = Console()


def show(result: dict, as_json: bool, width: int = 16) -> None:
    """A command's result: one JSON object, or one ``key: value`` line per entry."""
    if as_json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        out.print(f"{k:>{width}}: {v}")


def fail(exc: BaseException | str, code: int) -> NoReturn:
    """Print ``error: ...`` on stderr and exit with ``code`` (2: usage, 1: failure). On one
    line however long (a path in it stays whole, to copy)."""
    console.print(f"[red]error:[/] {exc}", soft_wrap=True)
    raise typer.Exit(code) from None


def get_signer(settings: Settings) -> SigningKey:
    try:
        return settings.release_signer()
    except SignatureError as exc:
        fail(exc, 2)


def get_settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:  # a bad VIGIL_* variable
        console.print(f"[red]invalid configuration:[/] {exc}")
        raise typer.Exit(2) from None


def get_bootstrap(settings: Settings) -> str:
    """The broker to use, checked to answer; exit 2 with what to do when there is none."""
    try:
        bootstrap = resolve_bootstrap(settings)
        wait_ready(bootstrap, timeout_s=10)
        return bootstrap
    except BrokerError as exc:
        fail(exc, 2)


def setup_logging(settings: Settings) -> None:
    """Logging as ``VIGIL_LOG_LEVEL`` and ``VIGIL_LOG_FORMAT`` say (a worker's faust sets the
    same up again as it starts: apps.worker.run_app)."""
    config = logging_config(settings.log_format, settings.log_level)
    if config is None:
        logging.basicConfig(
            level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
        )
    else:
        logging.config.dictConfig(config)
