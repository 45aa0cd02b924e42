"""``vigil inspection ...``: the inspection line's own settings: calibrate a camera's alert
threshold on its defect-free frames."""

from __future__ import annotations

import typer

from vigil.apps.broker import ensure_one
from vigil.apps.cli.base import app, console, fail, get_bootstrap, get_settings, get_signer, show
from vigil.errors import DataError, UsageError, VigilError

inspection_app = typer.Typer(
    help="The inspection line: calibrate a camera's alert threshold.", no_args_is_help=True
)
app.add_typer(inspection_app, name="inspection")


@inspection_app.command("calibrate")
def calibrate_cmd(
    camera: str = typer.Option(..., "--camera", help="the camera id (the frames' key)"),
    seconds: float = typer.Option(
        60.0, min=1, help="its last SECONDS of frames on the frames topic: defect-free parts"
    ),
    false_alarms: float | None = typer.Option(
        None,
        min=0.0001,
        max=0.5,
        help="the share of those clips allowed to alert (default: "
        "VIGIL_INSPECTION_FALSE_ALARMS, 0.01)",
    ),
    dry_run: bool = typer.Option(
        False, "--dry-run", help="say what the threshold would be; release nothing"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Set CAMERA's alert threshold so that at most FALSE_ALARMS of its clips of the last
    SECONDS (defect-free parts, as you vouch) would alert, under the inspection model in
    service; release that model again with the threshold (signed): running workers swap it
    in. Other cameras keep theirs."""
    from vigil.apps.calibration import calibrate

    settings = get_settings()
    get_signer(settings)  # a key problem is said before the broker is reached
    bootstrap = get_bootstrap(settings)
    if false_alarms is None:
        false_alarms = settings.inspection_false_alarms
    ensure_one(bootstrap, settings.topics, settings.topics.models, settings.replication_factor)
    try:
        result = calibrate(settings, bootstrap, camera, seconds, false_alarms, not dry_run)
    except (DataError, UsageError) as exc:
        fail(exc, 2)
    except VigilError as exc:
        fail(exc, 1)
    if not as_json:
        console.print(
            f"camera {camera}: {result.clips} clips of {result.frames} frames; threshold "
            f"{result.threshold_before:.4f} -> {result.threshold:.4f} (it had "
            f"{result.false_alarms_before:.1%} false alarms on them)"
            + (f"; released as {result.version}" if result.version else "; not released")
        )
    show(result.as_dict(), as_json, width=20)
