"""``vigil record ...``: save what arrives on a topic, for training."""

from __future__ import annotations

from pathlib import Path

import typer

from vigil.apps.cli.base import app, console, fail, get_bootstrap, get_settings, show
from vigil.errors import VigilError

record_app = typer.Typer(help="Save what a camera sends, for training.", no_args_is_help=True)
app.add_typer(record_app, name="record")


@record_app.command("frames")
def record_frames_cmd(
    camera: str = typer.Option(..., "--camera", help="the camera id (the frames' key)"),
    seconds: float = typer.Option(60.0, min=0.1, help="how long to record, from now"),
    out: Path = typer.Option(..., "--out", file_okay=False, help="the recording's folder"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Save CAMERA's frames arriving on the frames topic over the next SECONDS under OUT
    (frames.jsonl and one PNG per frame). Label its defects in OUT/labels.jsonl (seq
    ranges, boxes, kinds: docs/models/inspection.md) and train on it with `vigil train
    inspection --frames OUT`."""
    from vigil.apps.recording import record_frames

    settings = get_settings()
    bootstrap = get_bootstrap(settings)
    if not as_json:
        console.print(f"recording {camera} from {settings.topics.frames} for {seconds:g} s ...")
    try:
        result = record_frames(bootstrap, settings.topics.frames, camera, seconds, out)
    except (VigilError, OSError) as exc:
        fail(exc, 1)
    if not result.frames:
        fail(f"no frame of camera {camera!r} arrived in {seconds:g} s", 1)
    show(result.as_dict(), as_json, width=12)
