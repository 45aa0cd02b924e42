"""``vigil export``: quantized exports of the newest models."""

from __future__ import annotations

from pathlib import Path

import typer

from vigil.apps.cli.base import (
    app,
    console,
    fail,
    get_settings,
    setup_logging,
    show,
)
from vigil.errors import VigilError


@app.command("export")
def export_model(
    model: str = typer.Argument(..., help="inspection (the clip classifier) or risk (its NN)"),
    bits: int = typer.Option(
        8, help="16 (float16 weights), 8 (int8 QDQ), 4 or 2 (weight-only, after QAT)"
    ),
    source: Path | None = typer.Option(
        None, "--model-dir", help="the model to quantize (default: the newest under MODELS)"
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="models directory to write to (default: MODELS/exports)"
    ),
    days: int = typer.Option(6, min=4, help="risk: days of generated history to verify on"),
    max_loss: float | None = typer.Option(
        None, help="most metric points the export may lose (default: 16/8/4/2 bits: 0.1/0.5/1/10)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print the verification as JSON"),
) -> None:
    """Quantize a trained model, verify it against the float model on held-out data, and
    write it under --out only when it passes. Publish it with `vigil models publish`."""
    from vigil.models.compression.tools import EXPORT_BITS
    from vigil.models.kinds import kind

    if bits not in EXPORT_BITS:
        fail(f"--bits must be one of {', '.join(map(str, EXPORT_BITS))}, not {bits}", 2)
    try:
        model_kind = kind(model)
    except VigilError as exc:
        fail(exc, 2)
    settings = get_settings()
    setup_logging(settings)
    out = model_kind.directory(out_dir) if out_dir else model_kind.exports(settings.models_path)
    src = source or model_kind.latest(settings.models_path)
    if src is None:
        fail(f"no {model} model under {settings.models_path}: run `vigil train {model}`", 1)
    try:
        path, report = model_kind.export(Path(src), bits, out, max_loss, console.print, days)
    except VigilError as exc:
        fail(exc, 1)
    report["model"] = str(path)
    show(report, as_json, width=16)
