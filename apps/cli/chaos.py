"""``vigil chaos``: the fault suite."""

from __future__ import annotations

import json

import typer

from vigil.apps.cli.base import (
    app,
    console,
    get_settings,
    out,
    setup_logging,
)


@app.command()
def chaos(
    events: int = typer.Option(50_000, min=0, help="transactions streamed during the kills"),
    rate: float = typer.Option(2000.0, min=0, help="their rate (per second; 0: flat out)"),
    kills: int = typer.Option(10, min=0, help="SIGKILLs of the risk worker"),
    fuzz: int = typer.Option(0, min=0, help="hostile records (of 40 kinds) to send"),
    rules: bool = typer.Option(False, "--rules", help="ruleset bombs on the rules topic"),
    releases: bool = typer.Option(False, "--releases", help="forged/replayed/... releases"),
    soak_minutes: float = typer.Option(0.0, min=0, help="minutes of steady load"),
    soak_rate: float = typer.Option(3000.0, min=1, help="the soak's rate (per second)"),
    seed: int = typer.Option(7, help="generator seed"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """The fault suite against a local stack (the embedded broker unless
    VIGIL_KAFKA_BOOTSTRAP is set): kills, hostile records, ruleset bombs, release attacks and
    a soak, each counting what became of every record. Progress on stderr."""
    from vigil.apps.chaos import ChaosConfig, run_chaos

    settings = get_settings()
    setup_logging(settings)
    cfg = ChaosConfig(events, rate, kills, fuzz, rules, releases, soak_minutes, soak_rate, seed)
    result = run_chaos(settings, cfg, say=lambda m: console.print(m, soft_wrap=True))
    if as_json:
        print(json.dumps(result))
        return
    for name, part in result.items():
        out.print(f"[bold]{name}[/]")
        for k, v in part.items():
            out.print(f"  {k:>28}: {v}", soft_wrap=True)
