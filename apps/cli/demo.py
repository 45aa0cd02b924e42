"""``vigil demo``: the whole stack on the embedded broker."""

from __future__ import annotations

import logging

import typer

from vigil.apps.cli.base import (
    app,
    console,
    get_settings,
    setup_logging,
)


@app.command()
def demo(
    duration: float = typer.Option(0, min=0, help="seconds to run (0 = until Ctrl-C)"),
    rate: float = typer.Option(200, min=1, help="transactions per second"),
    camera_fps: float = typer.Option(50, min=1, help="the simulated camera's frames per second"),
    ui_port: int = typer.Option(
        8080, min=0, max=65535, help="the web console's port (vigil ui; 0: no console)"
    ),
    demo_models: bool = typer.Option(
        True,
        "--demo-models/--no-demo-models",
        help="train small demo models (seconds) and serve them in the demo's workers, "
        "where no model of yours is under the models path",
    ),
) -> None:
    """Broker + risk and inspection workers + a transaction publisher and a camera, with a
    live view of events, alerts, defects and the DLQ, and the web console (vigil ui)."""
    from vigil.apps.demo import run_demo

    settings = get_settings()
    setup_logging(settings)
    logging.getLogger().setLevel(logging.WARNING)
    raise typer.Exit(
        run_demo(
            settings,
            duration_s=duration,
            rate=rate,
            console=console,
            camera_fps=camera_fps,
            ui_port=ui_port,
            demo_models=demo_models,
        )
    )
