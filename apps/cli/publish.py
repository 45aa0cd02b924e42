"""``vigil publish ...`` (events to Kafka) and ``vigil generate`` (seeded histories to files)."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from vigil.apps.cli.base import (
    app,
    console,
    fail,
    get_bootstrap,
    get_settings,
    progress_bar,
)
from vigil.apps.clients import publish
from vigil.errors import VigilError

publish_app = typer.Typer(help="Publish events to Kafka.", no_args_is_help=True)
app.add_typer(publish_app, name="publish")


@publish_app.command("frames")
def publish_frames(
    cameras: int = typer.Option(1, min=1, max=64, help="simulated cameras"),
    fps: float = typer.Option(100.0, min=0.1, help="frames per second per camera"),
    seconds: float = typer.Option(10.0, min=0.01, help="how long (simulated and wall time)"),
    size: int = typer.Option(128, min=32, max=1024, help="frame height and width (grey)"),
    codec: str = typer.Option("png", help="raw, png or jpeg"),
    seed: int = typer.Option(0, help="simulator seed"),
    defect_rate: float = typer.Option(0.3, min=0, max=1, help="share of parts with a defect"),
    heldout: bool = typer.Option(False, "--heldout", help="parts with the held-out textures"),
    labels: Path | None = typer.Option(
        None, "--labels", dir_okay=False, help="write each frame's ground truth here (JSONL)"
    ),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="parts made of your own images (the layout of vigil train inspection --images): "
        "a defective one with --defect-rate, else a defect-free one",
    ),
) -> None:
    """Publish simulated camera frames (a conveyor of textured parts, some with defects)
    to the frames topic at FPS per camera, keyed by camera id."""
    from vigil.models.inspection.images import ImageParts, load_parts, scan_images
    from vigil.streams.frames import CODECS, FrameError, encode_frame
    from vigil.streams.sources.camera import HELDOUT_TEXTURES, CameraConfig, CameraSimulator

    if codec not in CODECS:
        fail(f"unknown codec {codec!r}; one of {list(CODECS)}", 2)
    try:
        cfg = CameraConfig.framed(
            size,
            fill=images is not None,  # each image is what the camera sees of a part
            seed=seed,
            fps=fps,
            defect_rate=defect_rate,
            **({"textures": HELDOUT_TEXTURES} if heldout else {}),
        )
    except VigilError as exc:
        fail(exc, 2)
    parts = None
    if images is not None:
        try:
            found = scan_images(images)
            problems = list(found.problems)
            parts = ImageParts(load_parts(found.images, problems), order="line")
        except VigilError as exc:
            fail(exc, 2)
        for problem in problems:
            console.print(f"left out: {problem}")
        console.print(f"parts from {images}: {found.counts()}")
    settings = get_settings()
    bootstrap = get_bootstrap(settings)
    topic = settings.topics.frames
    per_camera = max(1, int(round(fps * seconds)))
    total = per_camera * cameras
    sim = CameraSimulator(cfg, parts)
    streams = [sim.frames(f"cam-{i}", i) for i in range(cameras)]
    truth = open(labels, "w") if labels else None  # noqa: SIM115

    def frames():  # type: ignore[no-untyped-def]
        for _ in range(per_camera):
            for stream in streams:  # cameras interleaved in time
                shot = next(stream)
                if truth is not None:
                    d = shot.defect
                    record = {
                        "camera_id": shot.frame.camera_id,
                        "seq": shot.frame.seq,
                        "ts_ms": shot.frame.ts_ms,
                        "part": shot.part,
                        "defect": d.kind if d else None,
                        "bbox": list(d.bbox) if d else None,
                    }
                    truth.write(json.dumps(record) + "\n")
                yield encode_frame(shot.frame, codec)

    try:
        with progress_bar("publishing") as progress:
            task = progress.add_task("publish", total=total)
            result = publish(
                bootstrap,
                topic,
                frames(),
                fps * cameras,
                on_sent=lambda n, _v: progress.update(task, completed=n),
            )
    except FrameError as exc:
        fail(exc, 2)
    finally:
        if truth is not None:
            truth.close()
    console.print(
        f"published {result.delivered} frames from {cameras} camera(s) to {topic} on {bootstrap}"
    )
    if result.failed:
        fail(f"{result.failed} of {result.count} frames were not delivered", 1)


@publish_app.command("transactions")
def publish_transactions(
    count: int = typer.Option(1000, min=1, help="records to publish"),
    rate: float = typer.Option(0.0, min=0, help="records per second (0 = as fast as possible)"),
    file: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help="replay this JSONL file instead of generating"
    ),
    seed: int = typer.Option(7, help="generator seed"),
    accounts: int = typer.Option(1000, min=1, help="generated account population"),
    malformed_rate: float = typer.Option(0.0, min=0, max=1, help="share of invalid records"),
    typology_rate: float = typer.Option(
        0.002, min=0, max=1, help="share of events that start an injected AML case"
    ),
    flow_typology_rate: float = typer.Option(
        0.001, min=0, max=1, help="share that start a fan-in/pass-through/... case"
    ),
    with_labels: bool = typer.Option(
        False, "--with-labels", help="also publish the ground truth to the labels topic"
    ),
) -> None:
    """Publish synthetic (or replayed) transactions to the transactions topic."""
    from itertools import islice

    from vigil.streams.sources import GeneratorConfig, TransactionGenerator, read_jsonl

    settings = get_settings()
    bootstrap = get_bootstrap(settings)
    topic = settings.topics.transactions
    truth: list[tuple[str, bytes]] = []
    if file is not None:
        if with_labels:
            console.print("[red]error:[/] --with-labels needs generated data, not --file")
            raise typer.Exit(2)
        records = islice(read_jsonl(file), count)
    else:
        cfg = GeneratorConfig(
            seed=seed,
            accounts=accounts,
            malformed_rate=malformed_rate,
            typology_rate=typology_rate,
            flow_typology_rate=flow_typology_rate,
        )

        def generated():  # type: ignore[no-untyped-def]
            for g in islice(TransactionGenerator(cfg), count):
                label = g.label_record() if with_labels else None
                if label is not None:
                    truth.append((label["tx_id"], json.dumps(label).encode()))
                yield g.key, g.value

        records = generated()
    with progress_bar("publishing") as progress:
        task = progress.add_task("publish", total=count)
        result = publish(
            bootstrap,
            topic,
            records,
            rate,
            on_sent=lambda n, _v: progress.update(task, completed=n),
        )
    console.print(f"published {result.delivered} records to {topic} on {bootstrap}")
    if truth:
        labelled = publish(bootstrap, settings.topics.labels, truth)
        result.count += labelled.count
        result.failed += labelled.failed
        console.print(f"published {labelled.delivered} labels to {settings.topics.labels}")
    if result.failed:
        console.print(
            f"[red]error:[/] {result.failed} of {result.count} records were not "
            "delivered (broker unreachable or refused them)"
        )
        raise typer.Exit(1)


@app.command()
def generate(
    count: int = typer.Option(10000, min=1, help="records to generate"),
    out_file: Path = typer.Option(..., "--out", dir_okay=False, help="transactions JSONL"),
    labels: Path | None = typer.Option(None, "--labels", dir_okay=False, help="labels JSONL"),
    account_labels: Path | None = typer.Option(
        None,
        "--account-labels",
        dir_okay=False,
        help="per-account labels JSONL: each account that paid within an injected case",
    ),
    seed: int = typer.Option(7),
    accounts: int = typer.Option(1000, min=1),
    malformed_rate: float = typer.Option(0.0, min=0, max=1),
    typology_rate: float = typer.Option(
        0.002, min=0, max=1, help="share of events that start an injected AML case"
    ),
    flow_typology_rate: float = typer.Option(
        0.001, min=0, max=1, help="share that start a fan-in/pass-through/... case"
    ),
) -> None:
    """Write a seeded synthetic history (and its ground truth) for replay and backtests."""
    from itertools import islice

    from vigil.streams.sources import GeneratorConfig, TransactionGenerator
    from vigil.streams.sources.synthetic import AccountLabels

    cfg = GeneratorConfig(
        seed=seed,
        accounts=accounts,
        malformed_rate=malformed_rate,
        typology_rate=typology_rate,
        flow_typology_rate=flow_typology_rate,
    )
    n_tx = n_labels = 0
    per_account = AccountLabels()
    with open(out_file, "wb") as tx_fh, open(labels, "w") if labels else _null() as lab_fh:
        for g in islice(TransactionGenerator(cfg), count):
            tx_fh.write(g.value + b"\n")
            n_tx += 1
            per_account.add(g)
            record = g.label_record()
            if lab_fh is not None and record is not None:
                lab_fh.write(json.dumps(record) + "\n")
                n_labels += 1
    if account_labels is not None:
        with open(account_labels, "w") as fh:
            for record in per_account.records():
                fh.write(json.dumps(record) + "\n")
    console.print(
        f"wrote {n_tx} records to {out_file}"
        + (f" and {n_labels} labels to {labels}" if labels else "")
        + (f" and {len(per_account.records())} account labels" if account_labels else "")
    )


def _null():  # type: ignore[no-untyped-def]
    import contextlib

    return contextlib.nullcontext(None)
