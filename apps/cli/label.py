"""``vigil label``: an analyst's verdict on a transaction or an alert, onto ``vigil.labels``."""

from __future__ import annotations

import json

import typer

from vigil.apps.cli.base import app, console, fail, get_bootstrap, get_settings, out
from vigil.errors import NotFoundError, UsageError, VigilError


@app.command()
def label(
    ident: str = typer.Argument(..., help="a transaction id or an alert id"),
    fraud: bool | None = typer.Option(
        None, "--fraud/--legit", help="the verdict: fraud or legitimate (one is required)"
    ),
    typology: str | None = typer.Option(None, help="what kind of fraud or laundering"),
) -> None:
    """Label a transaction (or the transaction of an alert) as fraud or legitimate: one
    record on the labels topic, which the risk workers fold into the account's and the
    counterparty's state and `vigil train risk` learns from."""
    from vigil.apps.labels import find_transaction, label_record, publish_label

    if fraud is None:
        fail("say --fraud or --legit", 2)
    if not ident.strip():
        fail("the transaction or alert id is empty", 2)
    settings = get_settings()
    bootstrap = get_bootstrap(settings)
    topics = settings.topics
    try:
        record = label_record({"tx_id": ident}, fraud, typology)  # checks --typology first
        tx = find_transaction(
            bootstrap,
            topics.transactions,
            topics.alerts,
            ident,
            progress=lambda n: console.print(f"  looked through {n:,} records"),
        )
        record = label_record(tx, fraud, typology)
        publish_label(bootstrap, topics.labels, record)
    except (NotFoundError, UsageError) as exc:
        fail(exc, 2 if isinstance(exc, UsageError) else 1)
    except VigilError as exc:
        fail(exc, 1)
    out.print(json.dumps(record))
