"""``vigil consume``: read a result topic as a table or JSON lines."""

from __future__ import annotations

import json
from enum import StrEnum

import typer
from rich.table import Table

from vigil.apps.cli.base import (
    app,
    console,
    fail,
    get_bootstrap,
    get_settings,
    out,
)
from vigil.apps.clients import read_topic
from vigil.errors import VigilError


class ResultTopic(StrEnum):
    alerts = "alerts"
    scores = "scores"
    dlq = "dlq"
    defects = "defects"  # vigil.inspection.alerts
    clips = "clips"  # vigil.inspection.clips


@app.command()
def consume(
    what: ResultTopic = typer.Argument(
        ..., help="alerts | scores | dlq | defects (inspection alerts) | clips"
    ),
    follow: bool = typer.Option(False, "--follow", "-f", help="keep waiting for new records"),
    limit: int | None = typer.Option(None, min=1, help="stop after N records"),
    as_json: bool = typer.Option(False, "--json", help="one JSON document per line"),
) -> None:
    """Read a result topic from the beginning: a readable table, or JSON lines."""
    settings = get_settings()
    bootstrap = get_bootstrap(settings)
    topic = {
        "alerts": settings.topics.alerts,
        "scores": settings.topics.scores,
        "dlq": settings.topics.dlq,
        "defects": settings.topics.inspection_alerts,
        "clips": settings.topics.inspection_clips,
    }[what.value]
    try:
        rows = read_topic(bootstrap, topic, follow=follow, limit=limit)
        if as_json:
            for _key, value, _ts in rows:
                print(json.dumps(value) if isinstance(value, dict) else repr(value), flush=True)
            return
        _print_table(what.value, rows, follow)
    except VigilError as exc:
        fail(exc, 2)
    except KeyboardInterrupt:
        pass


_COLUMNS = {
    "alerts": ("tx_id", "account_id", "decision", "score", "reasons"),
    "scores": ("tx_id", "account_id", "decision", "score", "rule_hits", "model_version"),
    "dlq": ("source_topic", "partition", "offset", "error"),
    "defects": ("camera_id", "seq_start", "seq_end", "score", "bbox", "model_version"),
    "clips": ("camera_id", "seq_start", "seq_end", "score", "alerted", "model_version"),
}


def _cell(name: str, value: object) -> str:
    if name == "reasons" and isinstance(value, list):
        return "; ".join(f"{r.get('code')}: {r.get('detail')}" for r in value)
    if name == "rule_hits" and isinstance(value, list):
        return ", ".join(str(h.get("rule")) for h in value)
    if isinstance(value, float):
        return f"{value:.3f}"
    return str(value)


def _print_table(what: str, rows, follow: bool) -> None:  # type: ignore[no-untyped-def]
    cols = _COLUMNS[what]
    if follow:  # stream rows as they come
        out.print("  ".join(cols), style="bold")
        for _k, v, _ts in rows:
            if isinstance(v, dict):
                out.print("  ".join(_cell(c, v.get(c)) for c in cols))
        return
    table = Table(*cols, title=what)
    for _k, v, _ts in rows:
        if isinstance(v, dict):
            table.add_row(*(_cell(c, v.get(c)) for c in cols))
        else:
            table.add_row(*(["<not JSON>"] + [""] * (len(cols) - 1)))
    out.print(table)
    console.print(f"{table.row_count} records")
