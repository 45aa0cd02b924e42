"""``vigil rates ...``: currency rates tables: show, validate, publish."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from vigil.apps.broker import ensure_one
from vigil.apps.cli.base import app, console, fail, get_bootstrap, get_settings, out
from vigil.apps.clients import publish

rates_app = typer.Typer(
    help="Currency rates tables: amounts are converted to the reporting currency with them "
    "before features and rules.",
    no_args_is_help=True,
)
app.add_typer(rates_app, name="rates")


def _load(file: Path | None, refused: str, base: str | None = None):
    """The table in ``file`` (the built-in one when None); exit 1 when it is invalid or,
    given ``base``, in another base (the workers would refuse it)."""
    from vigil.streams.currency import RatesError, default_rates, load_rates

    try:
        rates = default_rates() if file is None else load_rates(file)
    except RatesError as exc:
        fail(f"{refused}{exc}", 1)
    if base is not None and rates.base != base:
        fail(
            f"{refused}{rates.label} is in {rates.base}, the reporting currency is {base}: "
            "workers would refuse it",
            1,
        )
    return rates


def _print(rates) -> None:
    table = Table("currency", f"{rates.base} per unit", title=f"rates table {rates.label}")
    for code, rate in sorted(rates.rates.items()):
        table.add_row(code, f"{rate:.6g}")
    out.print(table)


@rates_app.command("show")
def rates_show(
    file: Path | None = typer.Argument(None, help="rates table (unset: the built-in one)"),
) -> None:
    """Print a rates table (the built-in reference rates when no file is given)."""
    _print(_load(file, "invalid: "))


@rates_app.command("validate")
def rates_validate(file: Path = typer.Argument(..., help="rates table (YAML or JSON)")) -> None:
    """Check a rates table: codes, rates, the base, against the reporting currency."""
    rates = _load(file, "invalid: ", get_settings().reporting_currency)
    console.print(f"[green]valid:[/] {rates.label}, {len(rates.rates)} currencies in {rates.base}")


@rates_app.command("publish")
def rates_publish(file: Path = typer.Argument(..., help="rates table (YAML or JSON)")) -> None:
    """Validate a rates table, then publish it on the rates topic: running workers convert
    with it from their next micro-batch."""
    from vigil.streams.rules import read_document

    settings = get_settings()
    rates = _load(file, "invalid, not published: ", settings.reporting_currency)
    bootstrap = get_bootstrap(settings)
    ensure_one(bootstrap, settings.topics, settings.topics.rates, settings.replication_factor)
    document = read_document(file.read_bytes())  # validated above
    result = publish(
        bootstrap, settings.topics.rates, [(rates.name, json.dumps(document).encode())]
    )
    if result.failed:
        fail("the broker did not accept the rates table", 1)
    console.print(
        f"published rates table {rates.label} ({len(rates.rates)} currencies in {rates.base}) "
        f"to {settings.topics.rates}"
    )
