"""``vigil rules ...``: AML rulesets: validate, publish, backtest."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from vigil.apps.cli.base import (
    app,
    console,
    fail,
    get_bootstrap,
    get_settings,
    out,
    progress_bar,
)
from vigil.apps.clients import publish
from vigil.errors import VigilError

rules_app = typer.Typer(help="AML rulesets: validate, publish, backtest.", no_args_is_help=True)
app.add_typer(rules_app, name="rules")


@rules_app.command("validate")
def rules_validate(
    file: Path = typer.Argument(..., help="ruleset document (YAML or JSON)"),
) -> None:
    """Check a ruleset: structure, every expression, every reason template."""
    from vigil.streams.pipeline import RULE_NAMES
    from vigil.streams.rules import RuleError, load_ruleset

    try:
        ruleset = load_ruleset(file, RULE_NAMES)
    except RuleError as exc:
        console.print(f"[red]invalid:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    table = Table("rule", "typology", "code", "bands", title=f"{ruleset.name} {ruleset.version}")
    for r in ruleset.rules:
        table.add_row(r.name, r.typology, r.code, str(len(r.bands)))
    out.print(table)
    console.print(
        f"[green]valid:[/] {len(ruleset.rules)} rules, reading {len(ruleset.names)} "
        f"fields: {', '.join(sorted(ruleset.names))}"
    )


@rules_app.command("publish")
def rules_publish(
    file: Path = typer.Argument(..., help="ruleset document (YAML or JSON)"),
) -> None:
    """Validate a ruleset, then publish it: running workers switch to it between
    micro-batches (``mode: shadow`` documents run beside the live rules, without alerting)."""
    from vigil.streams.pipeline import RULE_NAMES
    from vigil.streams.rules import RuleError, load_ruleset, read_document

    try:
        ruleset = load_ruleset(file, RULE_NAMES)
    except RuleError as exc:
        console.print(f"[red]invalid, not published:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    settings = get_settings()
    bootstrap = get_bootstrap(settings)
    document = read_document(file.read_bytes())  # validated above
    result = publish(
        bootstrap, settings.topics.rules, [(ruleset.name, json.dumps(document).encode())]
    )
    if result.failed:
        console.print("[red]error:[/] the broker did not accept the ruleset")
        raise typer.Exit(1)
    console.print(
        f"published {ruleset.mode} ruleset {ruleset.label} ({len(ruleset.rules)} rules) "
        f"to {settings.topics.rules}"
    )


@rules_app.command("backtest")
def rules_backtest(
    file: Path = typer.Argument(..., help="ruleset document to test"),
    input: Path = typer.Option(
        ...,
        "--input",
        exists=True,
        dir_okay=False,
        help="transactions, JSON Lines, in arrival order",
    ),
    labels: Path = typer.Option(
        ..., "--labels", exists=True, dir_okay=False, help="labels, JSON Lines: {tx_id, label, ...}"
    ),
    batch: int = typer.Option(
        100,
        "--batch",
        min=1,
        help="micro-batch size of the replay; an inflow is seen from the next batch on",
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """What would this ruleset have flagged? Hits, precision, recall, F1, alert rate."""
    from vigil.streams.currency import load_rates
    from vigil.streams.pipeline import RULE_NAMES, RiskPipeline
    from vigil.streams.rules import RuleError, Thresholds, load_ruleset
    from vigil.streams.rules.backtest import backtest
    from vigil.streams.sources import read_jsonl

    settings = get_settings()
    try:
        ruleset = load_ruleset(file, RULE_NAMES)
    except RuleError as exc:
        console.print(f"[red]invalid:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    truth = _read_labels(labels)
    pipeline = RiskPipeline(
        ruleset=ruleset,
        thresholds=Thresholds(settings.review_threshold, settings.block_threshold),
        rates=None if settings.rates_path is None else load_rates(settings.rates_path),
        reporting_currency=settings.reporting_currency,
    )
    total = sum(1 for _ in read_jsonl(input))
    with progress_bar("backtest", disable=as_json) as progress:
        task = progress.add_task("backtest", total=total)
        report = backtest(
            pipeline,
            (line for _k, line in read_jsonl(input)),
            truth,
            batch_size=batch,
            progress=lambda n: progress.advance(task, n),
        )
    if as_json:
        print(json.dumps(report.to_dict()))
        return

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    table = Table(
        "rule",
        "hits",
        "true pos.",
        "precision",
        "recall",
        "F1",
        "alert rate",
        title=f"backtest of {report.ruleset} on {report.transactions} transactions "
        f"({report.positives} positive)",
    )
    for r in [*report.rules, report.overall]:
        table.add_row(
            r.name,
            str(r.hits),
            str(r.true_positives),
            pct(r.precision),
            pct(r.recall),
            "-" if r.f1 is None else f"{r.f1:.3f}",
            pct(r.alert_rate),
        )
    out.print(table)
    if report.invalid or report.unlabelled:
        console.print(
            f"[yellow]{report.invalid} invalid records skipped, "
            f"{report.unlabelled} transactions without a label (counted negative)"
        )


def _read_labels(path: Path) -> dict[str, int]:
    from vigil.streams.sources import read_labels

    try:
        return {tx_id: label for tx_id, (label, _typology) in read_labels(path).items()}
    except VigilError as exc:
        fail(exc, 2)
