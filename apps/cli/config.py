"""``vigil config``: the settings in effect, and their reference."""

from __future__ import annotations

import typer

from vigil.apps.cli.base import (
    app,
    get_settings,
    show,
)
from vigil.apps.settings import Settings, redacted


@app.command()
def config(
    reference: bool = typer.Option(
        False, "--reference", help="every setting's variable, default and meaning (Markdown)"
    ),
    as_json: bool = typer.Option(False, "--json", help="one JSON object"),
) -> None:
    """The settings in effect (from VIGIL_* variables), or their reference."""
    from vigil.apps.settings import settings_reference

    if reference:
        print(settings_reference(), end="")
        return
    settings = get_settings()
    values = {f"VIGIL_{name.upper()}": getattr(settings, name) for name in Settings.model_fields}
    shown = {k: None if v is None else redacted(str(v)) for k, v in values.items()}
    show(shown, as_json, width=30)
