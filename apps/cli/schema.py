"""``vigil schema [TOPIC]``: the contract's JSON Schemas."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vigil.apps.cli.base import app, console, fail
from vigil.errors import NotFoundError


@app.command()
def schema(
    topic: str | None = typer.Argument(
        None,
        help="transactions, labels, risk.scores, risk.alerts, inspection.alerts, dlq, "
        "rules or rates (with or without the namespace); none: all of them",
    ),
    out: Path | None = typer.Option(
        None, "--out", file_okay=False, help="write each as OUT/vigil.<topic>.json instead"
    ),
) -> None:
    """Print the JSON Schema (draft 2020-12) of a contract topic's values, generated from
    the models the workers validate with: one document, or all of them by topic."""
    from vigil.streams.contract import JSON_TOPICS, json_schema, schema_file_name

    if topic is None:
        suffixes = list(JSON_TOPICS)
    else:
        # "transactions", "vigil.transactions" or "<namespace>.risk.alerts"
        matches = [s for s in JSON_TOPICS if topic == s or topic.endswith(f".{s}")]
        suffixes = matches or [topic]
    try:
        schemas = {s: json_schema(s) for s in suffixes}
    except NotFoundError as exc:
        fail(exc, 2)
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        for s, document in schemas.items():
            (out / schema_file_name(s)).write_text(json.dumps(document, indent=2) + "\n")
        console.print(f"wrote {len(schemas)} schemas to {out}")
        return
    if topic is None:
        print(json.dumps({f"vigil.{s}": d for s, d in schemas.items()}, indent=2))
    else:
        print(json.dumps(next(iter(schemas.values())), indent=2))
