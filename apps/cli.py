"""The ``vigil`` command."""

from __future__ import annotations

import json
import logging
import os
import signal
import threading
from enum import StrEnum
from pathlib import Path
from typing import NoReturn

import typer
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from vigil.apps.broker import (
    BrokerError,
    EmbeddedBroker,
    clear_runtime,
    ensure_all,
    ensure_one,
    resolve_bootstrap,
    wait_ready,
    write_runtime,
)
from vigil.apps.clients import publish, read_topic
from vigil.apps.settings import Settings, load_settings
from vigil.errors import UsageError, VigilError
from vigil.models.signing import SignatureError, SigningKey

app = typer.Typer(
    help="Vigil: real-time risk and inspection on Kafka streams.",
    no_args_is_help=True,
    add_completion=False,
)
worker_app = typer.Typer(help="Run a stream worker.", no_args_is_help=True)
publish_app = typer.Typer(help="Publish events to Kafka.", no_args_is_help=True)
bench_app = typer.Typer(help="Benchmarks (print JSON with --json).", no_args_is_help=True)
rules_app = typer.Typer(help="AML rulesets: validate, publish, backtest.", no_args_is_help=True)
train_app = typer.Typer(help="Train models and write them for the workers.", no_args_is_help=True)
models_app = typer.Typer(
    help="Model releases on the stream: publish, list, roll back.", no_args_is_help=True
)
app.add_typer(worker_app, name="worker")
app.add_typer(publish_app, name="publish")
app.add_typer(bench_app, name="bench")
app.add_typer(rules_app, name="rules")
app.add_typer(train_app, name="train")
app.add_typer(models_app, name="models")
keys_app = typer.Typer(help="Release signing keys (Ed25519).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")
console = Console(stderr=True)


def _progress(label: str, disable: bool = False) -> Progress:
    """A progress bar for long CLI work: label, bar, done/total, elapsed."""
    return Progress(
        TextColumn(label),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=console,
        disable=disable,
    )


out = Console()


def _report(result: dict, as_json: bool, width: int = 16) -> None:
    """A command's result: one JSON object, or one ``key: value`` line per entry."""
    if as_json:
        print(json.dumps(result))
        return
    for k, v in result.items():
        out.print(f"{k:>{width}}: {v}")


def _fail(exc: BaseException | str, code: int) -> NoReturn:
    """Print ``error: ...`` on stderr and exit with ``code`` (2: usage, 1: failure). On one
    line however long (a path in it stays whole, to copy)."""
    console.print(f"[red]error:[/] {exc}", soft_wrap=True)
    raise typer.Exit(code) from None


def _signer(settings: Settings) -> SigningKey:
    try:
        return settings.release_signer()
    except SignatureError as exc:
        _fail(exc, 2)


def _settings() -> Settings:
    try:
        return load_settings()
    except ValidationError as exc:  # a bad VIGIL_* variable
        console.print(f"[red]invalid configuration:[/] {exc}")
        raise typer.Exit(2) from None


def _bootstrap(settings: Settings) -> str:
    """The broker to use, checked to answer; exit 2 with what to do when there is none."""
    try:
        bootstrap = resolve_bootstrap(settings)
        wait_ready(bootstrap, timeout_s=10)
        return bootstrap
    except BrokerError as exc:
        _fail(exc, 2)


def _logging(settings: Settings) -> None:
    logging.basicConfig(
        level=settings.log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )


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
    settings = _settings()
    values = {f"VIGIL_{name.upper()}": getattr(settings, name) for name in Settings.model_fields}
    _report({k: None if v is None else str(v) for k, v in values.items()}, as_json, width=30)


@app.command()
def broker(port: int = typer.Option(0, help="listen port on 127.0.0.1 (0 = a free one)")) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, in memory) until Ctrl-C."""
    settings = _settings()
    _logging(settings)
    try:
        b = EmbeddedBroker(port=port).start()
    except BrokerError as exc:
        _fail(exc, 1)
    try:
        created = ensure_all(b.bootstrap, settings.topics, settings.partitions)
        write_runtime(settings, b)
        console.print(
            f"broker ready on [bold]{b.bootstrap}[/] (created {len(created)} topics); "
            f"other vigil commands here find it. Ctrl-C stops it and discards all data."
        )
        out.print(b.bootstrap)
        stop = threading.Event()
        signal.signal(signal.SIGTERM, lambda *_: stop.set())
        try:
            while b.running and not stop.wait(0.5):
                pass
        except KeyboardInterrupt:
            pass
    finally:
        clear_runtime(settings)
        b.stop()


@app.command()
def topics(
    replication: int = typer.Option(1, min=1, help="replication factor of topics it creates"),
) -> None:
    """Create every topic of the namespace that does not exist yet (VIGIL_PARTITIONS
    partitions; the control topics, models and rules, one partition, kept forever), then
    list them. Idempotent: the deployment's topic initialisation."""
    settings = _settings()
    bootstrap = _bootstrap(settings)
    try:
        created = ensure_all(bootstrap, settings.topics, settings.partitions, replication)
    except BrokerError as exc:
        _fail(exc, 1)
    configs = settings.topics.configs()
    for name, partitions in settings.topics.all(settings.partitions).items():
        state = "created" if name in created else "exists"
        kept = " (kept forever)" if name in configs else ""
        out.print(f"{name}: {partitions} partition{'s' if partitions > 1 else ''}, {state}{kept}")


@worker_app.command("risk")
def worker_risk() -> None:
    """Consume transactions; produce scores, alerts and dead letters."""
    from vigil.apps.risk import run_worker

    settings = _settings()
    _bootstrap(settings)  # clear error before faust starts
    # before the app is built: it logs which model and rules it loaded (or that it scores
    # with rules only), and faust configures logging only once its worker starts
    _logging(settings)
    try:
        run_worker(settings)
    except BrokerError as exc:  # the topics do not fit the worker: said before it starts
        _fail(exc, 2)


@worker_app.command("inspection")
def worker_inspection() -> None:
    """Consume camera frames; produce defect alerts, clip scores and dead letters."""
    from vigil.apps.inspection import run_worker

    settings = _settings()
    _bootstrap(settings)  # clear error before faust starts
    # before the app is built: it logs which model and rules it loaded (or that it scores
    # with rules only), and faust configures logging only once its worker starts
    _logging(settings)
    run_worker(settings)


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
) -> None:
    """Publish simulated camera frames (a conveyor of textured parts, some with defects)
    to the frames topic at FPS per camera, keyed by camera id."""
    from vigil.streams.frames import CODECS, FrameError, encode_frame
    from vigil.streams.sources.camera import HELDOUT_TEXTURES, CameraConfig, CameraSimulator

    if codec not in CODECS:
        _fail(f"unknown codec {codec!r}; one of {list(CODECS)}", 2)
    try:
        cfg = CameraConfig(
            seed=seed,
            size=size,
            fps=fps,
            part_px=max(8, size * 7 // 8),
            gap_px=max(8, size * 3 // 8),
            defect_rate=defect_rate,
            **({"textures": HELDOUT_TEXTURES} if heldout else {}),
        )
    except VigilError as exc:
        _fail(exc, 2)
    settings = _settings()
    bootstrap = _bootstrap(settings)
    topic = settings.topics.frames
    per_camera = max(1, int(round(fps * seconds)))
    total = per_camera * cameras
    sim = CameraSimulator(cfg)
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
        with _progress("publishing") as progress:
            task = progress.add_task("publish", total=total)
            result = publish(
                bootstrap,
                topic,
                frames(),
                fps * cameras,
                on_sent=lambda n, _v: progress.update(task, completed=n),
            )
    except FrameError as exc:
        _fail(exc, 2)
    finally:
        if truth is not None:
            truth.close()
    console.print(
        f"published {result.delivered} frames from {cameras} camera(s) to {topic} on {bootstrap}"
    )
    if result.failed:
        _fail(f"{result.failed} of {result.count} frames were not delivered", 1)


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

    settings = _settings()
    bootstrap = _bootstrap(settings)
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
    with _progress("publishing") as progress:
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
    settings = _settings()
    bootstrap = _bootstrap(settings)
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
        _fail(exc, 2)
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


@app.command()
def demo(
    duration: float = typer.Option(0, min=0, help="seconds to run (0 = until Ctrl-C)"),
    rate: float = typer.Option(200, min=1, help="transactions per second"),
    camera_fps: float = typer.Option(50, min=1, help="the simulated camera's frames per second"),
) -> None:
    """Broker + risk and inspection workers + a transaction publisher and a camera, with a
    live view of events, alerts, defects and the DLQ."""
    from vigil.apps.demo import run_demo

    settings = _settings()
    _logging(settings)
    logging.getLogger().setLevel(logging.WARNING)
    raise typer.Exit(
        run_demo(settings, duration_s=duration, rate=rate, console=console, camera_fps=camera_fps)
    )


@rules_app.command("validate")
def rules_validate(
    file: Path = typer.Argument(..., help="ruleset document (YAML or JSON)"),
) -> None:
    """Check a ruleset: structure, every expression, every reason template."""
    from vigil.streams.pipeline import RULE_NAMES
    from vigil.streams.rules import RuleError, load_ruleset

    try:
        ruleset = load_ruleset(file, RULE_NAMES)
    except RuleError as exc:
        console.print(f"[red]invalid:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    table = Table("rule", "typology", "code", "bands", title=f"{ruleset.name} {ruleset.version}")
    for r in ruleset.rules:
        table.add_row(r.name, r.typology, r.code, str(len(r.bands)))
    out.print(table)
    console.print(
        f"[green]valid:[/] {len(ruleset.rules)} rules, reading {len(ruleset.names)} "
        f"fields: {', '.join(sorted(ruleset.names))}"
    )


@rules_app.command("publish")
def rules_publish(
    file: Path = typer.Argument(..., help="ruleset document (YAML or JSON)"),
) -> None:
    """Validate a ruleset, then publish it: running workers switch to it between
    micro-batches (``mode: shadow`` documents run beside the live rules, without alerting)."""
    from vigil.streams.pipeline import RULE_NAMES
    from vigil.streams.rules import RuleError, load_ruleset, read_document

    try:
        ruleset = load_ruleset(file, RULE_NAMES)
    except RuleError as exc:
        console.print(f"[red]invalid, not published:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    settings = _settings()
    bootstrap = _bootstrap(settings)
    document = read_document(file.read_bytes())  # validated above
    result = publish(
        bootstrap, settings.topics.rules, [(ruleset.name, json.dumps(document).encode())]
    )
    if result.failed:
        console.print("[red]error:[/] the broker did not accept the ruleset")
        raise typer.Exit(1)
    console.print(
        f"published {ruleset.mode} ruleset {ruleset.label} ({len(ruleset.rules)} rules) "
        f"to {settings.topics.rules}"
    )


@rules_app.command("backtest")
def rules_backtest(
    file: Path = typer.Argument(..., help="ruleset document to test"),
    input: Path = typer.Option(
        ...,
        "--input",
        exists=True,
        dir_okay=False,
        help="transactions, JSON Lines, in arrival order",
    ),
    labels: Path = typer.Option(
        ..., "--labels", exists=True, dir_okay=False, help="labels, JSON Lines: {tx_id, label, ...}"
    ),
    batch: int = typer.Option(
        100,
        "--batch",
        min=1,
        help="micro-batch size of the replay; an inflow is seen from the next batch on",
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """What would this ruleset have flagged? Hits, precision, recall, F1, alert rate."""
    from vigil.streams.pipeline import RULE_NAMES, RiskPipeline
    from vigil.streams.rules import RuleError, Thresholds, load_ruleset
    from vigil.streams.rules.backtest import backtest
    from vigil.streams.sources import read_jsonl

    settings = _settings()
    try:
        ruleset = load_ruleset(file, RULE_NAMES)
    except RuleError as exc:
        console.print(f"[red]invalid:[/] {exc}", soft_wrap=True)
        raise typer.Exit(1) from None
    truth = _read_labels(labels)
    pipeline = RiskPipeline(
        ruleset=ruleset, thresholds=Thresholds(settings.review_threshold, settings.block_threshold)
    )
    total = sum(1 for _ in read_jsonl(input))
    with _progress("backtest", disable=as_json) as progress:
        task = progress.add_task("backtest", total=total)
        report = backtest(
            pipeline,
            (line for _k, line in read_jsonl(input)),
            truth,
            batch_size=batch,
            progress=lambda n: progress.advance(task, n),
        )
    if as_json:
        print(json.dumps(report.to_dict()))
        return

    def pct(x: float | None) -> str:
        return "-" if x is None else f"{100 * x:.1f}%"

    table = Table(
        "rule",
        "hits",
        "true pos.",
        "precision",
        "recall",
        "F1",
        "alert rate",
        title=f"backtest of {report.ruleset} on {report.transactions} transactions "
        f"({report.positives} positive)",
    )
    for r in [*report.rules, report.overall]:
        table.add_row(
            r.name,
            str(r.hits),
            str(r.true_positives),
            pct(r.precision),
            pct(r.recall),
            "-" if r.f1 is None else f"{r.f1:.3f}",
            pct(r.alert_rate),
        )
    out.print(table)
    if report.invalid or report.unlabelled:
        console.print(
            f"[yellow]{report.invalid} invalid records skipped, "
            f"{report.unlabelled} transactions without a label (counted negative)"
        )


def _read_labels(path: Path) -> dict[str, int]:
    from vigil.streams.sources import read_labels

    try:
        return {tx_id: label for tx_id, (label, _typology) in read_labels(path).items()}
    except VigilError as exc:
        _fail(exc, 2)


@app.command()
def generate(
    count: int = typer.Option(10000, min=1, help="records to generate"),
    out_file: Path = typer.Option(..., "--out", dir_okay=False, help="transactions JSONL"),
    labels: Path | None = typer.Option(None, "--labels", dir_okay=False, help="labels JSONL"),
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

    cfg = GeneratorConfig(
        seed=seed,
        accounts=accounts,
        malformed_rate=malformed_rate,
        typology_rate=typology_rate,
        flow_typology_rate=flow_typology_rate,
    )
    n_tx = n_labels = 0
    with open(out_file, "wb") as tx_fh, open(labels, "w") if labels else _null() as lab_fh:
        for g in islice(TransactionGenerator(cfg), count):
            tx_fh.write(g.value + b"\n")
            n_tx += 1
            record = g.label_record()
            if lab_fh is not None and record is not None:
                lab_fh.write(json.dumps(record) + "\n")
                n_labels += 1
    console.print(
        f"wrote {n_tx} records to {out_file}"
        + (f" and {n_labels} labels to {labels}" if labels else "")
    )


def _null():  # type: ignore[no-untyped-def]
    import contextlib

    return contextlib.nullcontext(None)


@bench_app.command("features")
def bench_features_cmd(
    events: int = typer.Option(50_000, min=1000, help="synthetic transactions"),
    batch: int = typer.Option(1000, min=1, help="micro-batch size"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Per-transaction cost of decode + features + ruleset, in-process on one core."""
    from vigil.apps.bench import bench_features

    result = bench_features(events=events, batch=batch)
    _report(result, as_json, width=10)


@bench_app.command("risk")
def bench_risk(
    events: int = typer.Option(20000, min=1, help="transactions to publish"),
    rate: float = typer.Option(0, min=0, help="publish rate (0 = as fast as possible)"),
    timeout: float = typer.Option(300, min=1, help="seconds to wait for every score"),
    workers: int = typer.Option(1, min=1, help="risk worker processes (one consumer group)"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Publish N synthetic transactions, run the risk worker(s), measure tps and latency."""
    from vigil.apps.bench import bench_risk as run

    settings = _settings()
    _logging(settings)
    logging.getLogger().setLevel(logging.WARNING)
    result = run(
        settings, events=events, rate=rate, timeout_s=timeout, workers=workers, console=console
    )
    _report(result, as_json, width=10)
    if result["scored"] != result["events"]:
        raise typer.Exit(1)


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
    from vigil.models.compression.tools import EXPORT_BITS, export_inspection, export_risk
    from vigil.models.serving import latest_dir

    if bits not in EXPORT_BITS:
        _fail(f"--bits must be one of {', '.join(map(str, EXPORT_BITS))}, not {bits}", 2)
    settings = _settings()
    _logging(settings)
    root = out_dir or settings.models_path / "exports"
    say = console.print
    if model == "inspection":
        src = source or latest_dir(settings.models_path / "inspection", "inspection")
        run = lambda s: export_inspection(s, bits, root / "inspection", max_loss=max_loss, say=say)  # noqa: E731
    elif model == "risk":
        src = source or latest_dir(settings.models_path, "risk")
        run = lambda s: export_risk(s, bits, root, days=days, max_loss=max_loss, say=say)  # noqa: E731
    else:
        _fail(f"unknown model {model!r}: one of inspection, risk", 2)
    if src is None:
        _fail(f"no {model} model under {settings.models_path}: run `vigil train {model}`", 1)
    try:
        path, report = run(Path(src))
    except VigilError as exc:
        _fail(exc, 1)
    report["model"] = str(path)
    _report(report, as_json, width=16)


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

    settings = _settings()
    _logging(settings)
    cfg = ChaosConfig(events, rate, kills, fuzz, rules, releases, soak_minutes, soak_rate, seed)
    result = run_chaos(settings, cfg, say=lambda m: console.print(m, soft_wrap=True))
    if as_json:
        print(json.dumps(result))
        return
    for name, part in result.items():
        out.print(f"[bold]{name}[/]")
        for k, v in part.items():
            out.print(f"  {k:>28}: {v}", soft_wrap=True)


@keys_app.command("generate")
def keys_generate(
    out_dir: Path = typer.Option(Path("keys"), "--out", help="where to write the key pair"),
) -> None:
    """Make a release signing key pair: release.key (private, mode 0600) for whoever
    publishes models, release.pub for the workers."""
    from vigil.models.signing import generate_keypair

    try:
        private, public = generate_keypair(out_dir)
    except SignatureError as exc:
        _fail(exc, 1)
    console.print(
        f"wrote {private} (keep it with the publishers) and {public}\n"
        f"publishers (vigil train, vigil models): VIGIL_RELEASE_SIGNING_KEY={private}\n"
        f"workers: VIGIL_RELEASE_PUBLIC_KEYS={public}",
        soft_wrap=True,
    )


@models_app.command("publish")
def models_publish(
    model_dir: Path = typer.Argument(..., help="a model directory (vigil train / vigil export)"),
) -> None:
    """Sign a model directory as a release and publish it: running workers verify it
    (signature, hashes, input spec, parity on its golden batch) and swap it in between two
    micro-batches."""
    from vigil.apps.releases import PublishError, publish_release
    from vigil.models.registry import build_release
    from vigil.models.serving import ModelError

    settings = _settings()
    signer = _signer(settings)  # a key problem is said before the broker is reached
    bootstrap = _bootstrap(settings)
    ensure_one(bootstrap, settings.topics, settings.topics.models)
    try:
        release = build_release(model_dir, signer)
        n = publish_release(bootstrap, settings.topics.models, release)
    except (ModelError, PublishError) as exc:
        _fail(exc, 1)
    console.print(
        f"published {release.name} {release.version} ({release.manifest['bits']}-bit, "
        f"{release.manifest['size']} bytes, {n} records) to {settings.topics.models}"
    )


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="one JSON object per line")):
    """Every release on the models topic, verified as a worker would (signature, hashes);
    refused and incomplete ones too. The newest valid release of each model is marked."""
    from datetime import UTC, datetime

    from vigil.apps.releases import read_releases
    from vigil.models.registry import describe

    settings = _settings()
    bootstrap = _bootstrap(settings)
    log = read_releases(bootstrap, settings.topics.models, settings.release_trusted())
    latest = {r.name: log.latest(r.name) for r in log.releases}
    rows = (
        [{**describe(r), "latest": latest[r.name] is r, "status": "ok"} for r in log.releases]
        + [
            {"name": f.name, "version": f.version, "status": f"refused: {f.reason}"}
            for f in log.refused
        ]
        + [{"version": v, "status": "incomplete"} for v in log.incomplete]
    )
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table("model", "version", "bits", "size", "published (UTC)", "parent", "status")
    for row in rows:
        when = row.get("published_ms")
        table.add_row(
            row.get("name", "?"),
            row["version"] + (" *" if row.get("latest") else ""),
            str(row.get("bits", "")),
            str(row.get("size", "")),
            datetime.fromtimestamp(when / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if when else "",
            row.get("parent_version") or "",
            row["status"],
        )
    out.print(table)
    count = f"{len(rows)} row{'s' if len(rows) != 1 else ''}"
    out.print(f"* the newest valid release of each model: what workers serve ({count})")


@models_app.command("rollback")
def models_rollback(
    name: str = typer.Argument(..., help="model name: risk or inspection"),
    version: str = typer.Argument(..., help="the version to serve again (vigil models list)"),
) -> None:
    """Serve an older version again: its payload is published anew under a new signed
    manifest (a new sequence, ``rollback: true``; workers refuse a plain replay of an old
    release), from the topic or built from its directory under MODELS."""
    from vigil.apps.releases import PublishError, find_model_dir, publish_release, read_releases
    from vigil.models.registry import build_release, resign
    from vigil.models.serving import ModelError

    settings = _settings()
    signer = _signer(settings)
    bootstrap = _bootstrap(settings)
    log = read_releases(bootstrap, settings.topics.models, settings.release_trusted())
    serving = log.latest(name)
    release = log.find(name, version)
    source = settings.topics.models
    if release is None:
        found = find_model_dir(settings.models_path, version)
        if found is None:
            _fail(
                f"no valid release {name} {version} on {settings.topics.models} and no "
                f"such directory under {settings.models_path}: see `vigil models list`",
                1,
            )
        try:
            release = build_release(found, signer)
        except ModelError as exc:
            _fail(exc, 1)
        source = str(found)
    if release.name != name:
        _fail(f"{version} is a {release.name} model, not {name}", 1)
    release = resign(release, signer, rollback=True, replaces=serving and serving.version)
    ensure_one(bootstrap, settings.topics, settings.topics.models)
    try:
        publish_release(bootstrap, settings.topics.models, release)
    except PublishError as exc:
        _fail(exc, 1)
    console.print(f"rolled {name} back to {version} (release from {source})")


@bench_app.command("quantization")
def bench_quantization_cmd(
    models: str = typer.Option("risk,inspection", help="comma-separated: risk, inspection"),
    bits: str = typer.Option("16,8,4,2", help="comma-separated bit widths"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Export the newest risk and inspection models at every bit width and measure each:
    file size, ONNX Runtime latency at batch 1 and 64 on one core, metric against fp32."""
    from vigil.models.compression.report import quantization_report
    from vigil.models.compression.tools import EXPORT_BITS
    from vigil.models.serving import latest_dir

    settings = _settings()
    _logging(settings)
    widths = tuple(int(b) for b in bits.split(",") if b.strip())
    if not widths or any(b not in EXPORT_BITS for b in widths):
        _fail(f"--bits: comma-separated, each one of {', '.join(map(str, EXPORT_BITS))}", 2)
    sources = {}
    for name in (m.strip() for m in models.split(",") if m.strip()):
        if name not in ("risk", "inspection"):
            _fail(f"unknown model {name!r}: risk or inspection", 2)
        root = settings.models_path / ("inspection" if name == "inspection" else "")
        found = latest_dir(root, name)
        if found is None:
            _fail(f"no {name} model under {settings.models_path}: run `vigil train {name}`", 1)
        sources[name] = found
    try:
        result = quantization_report(sources, widths, say=console.print)
    except VigilError as exc:
        _fail(exc, 1)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(
        "model", "bits", "bytes", "smaller", "batch 1 ms", "batch 64 ms", "metric", "loss"
    )
    for model, rows in result["models"].items():
        for b, row in rows.items():
            metric = row.get("auroc", row.get("auc_pr"))
            table.add_row(
                model,
                b,
                str(row["size_bytes"]),
                str(row.get("smaller", 1.0)),
                f"{row['batch1_ms']:.3f}",
                f"{row['batch64_ms']:.2f}",
                f"{metric}",
                str(row.get("loss_points", 0.0)),
            )
    out.print(table)
    for goal in result["goals"]:
        out.print(f"{goal['model']} {goal['bits']}-bit goals {goal['goal']}: met {goal['met']}")


@bench_app.command("inspection")
def bench_inspection_cmd(
    cameras: int = typer.Option(2, min=1, max=64, help="simulated cameras"),
    fps: float = typer.Option(100.0, min=1, help="frames per second per camera"),
    seconds: float = typer.Option(20.0, min=1, help="how long the cameras publish"),
    size: int = typer.Option(128, min=32, max=1024, help="frame height and width (grey)"),
    codec: str = typer.Option("png", help="raw, png or jpeg"),
    timeout: float = typer.Option(120, min=1, help="seconds to wait for the last clip"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Cameras publish frames in real time; the inspection worker (with the newest
    inspection model) aligns and classifies them: frames/s, clips/s, p50/p99 latency."""
    from vigil.apps.bench import bench_inspection as run
    from vigil.streams.frames import CODECS

    if codec not in CODECS:
        _fail(f"unknown codec {codec!r}; one of {list(CODECS)}", 2)
    settings = _settings()
    _logging(settings)
    logging.getLogger().setLevel(logging.WARNING)
    try:
        result = run(settings, cameras, fps, seconds, size, codec, timeout, console=console)
    except VigilError as exc:
        _fail(exc, 1)
    _report(result, as_json, width=18)
    if result["timed_out"]:
        raise typer.Exit(1)


@train_app.command("nn")
def train_nn(
    task: str = typer.Option(
        "tabular", help="tabular (the risk NN), video (the clip-classifier stand-in), synthetic"
    ),
    nproc: int = typer.Option(2, min=1, help="data-parallel processes on this machine"),
    nodes: int = typer.Option(1, min=1, help="emulated nodes the processes are split over"),
    steps: int | None = typer.Option(None, min=1, help="training steps (default per task)"),
    precision: str = typer.Option("dynamic", help="dynamic, or fixed: fp32, bf16, fp16"),
    algorithm: str = typer.Option(
        "hierarchical", help="AllReduce: hierarchical, leader, flat, hierarchical-bf16"
    ),
    checkpoint_dir: Path | None = typer.Option(
        None, "--checkpoint-dir", help="checkpoints, resumed from when present"
    ),
    checkpoint_every: int = typer.Option(25, min=0, help="steps between checkpoints"),
    max_restarts: int = typer.Option(3, min=0, help="restarts after a rank dies"),
    as_json: bool = typer.Option(False, "--json", help="print rank 0's result as JSON"),
) -> None:
    """Train a network on the engine: N data-parallel ranks (gloo) on M emulated nodes,
    DDP over our AllReduce, the precision scheduler, checkpoints, restarts when a rank
    dies. For real multi-node jobs run ``torchrun ... -m vigil.models.engine.run``."""
    import tempfile

    from vigil.models.engine import ALGORITHMS, supervise
    from vigil.models.engine.precision import DTYPES
    from vigil.models.engine.run import TASKS, config_for, job

    problems = []
    if task not in TASKS:
        problems.append(f"unknown task {task!r}; one of {list(TASKS)}")
    if precision != "dynamic" and precision not in DTYPES:
        problems.append(f"unknown precision {precision!r}; dynamic or one of {list(DTYPES)}")
    if algorithm not in ALGORITHMS:
        problems.append(f"unknown algorithm {algorithm!r}; one of {list(ALGORITHMS)}")
    if nproc % nodes:
        problems.append(f"{nproc} processes cannot be split evenly over {nodes} nodes")
    if problems:
        _fail(problems[0], 2)
    _logging(_settings())
    cfg = config_for(
        task,
        nproc,
        precision=precision,
        algorithm=algorithm,
        checkpoint_every=checkpoint_every if checkpoint_dir else 0,
        **({"steps": steps} if steps else {}),
    )
    with tempfile.TemporaryDirectory() as tmp:
        prepared = None
        if task == "tabular":
            from vigil.models.engine.tasks import prepare_tabular

            console.print("generating and featurising 14 days of history")
            prepared = str(prepare_tabular(Path(tmp) / "tabular.pt"))
        console.print(
            f"training {task}: {nproc} ranks on {nodes} node(s), {cfg.steps} steps, "
            f"{precision} precision, {algorithm} AllReduce"
        )
        ckpt = str(checkpoint_dir) if checkpoint_dir else None
        try:
            results = supervise(
                job, nproc, nodes, (task, cfg, ckpt, prepared), max_restarts, say=console.print
            )
        except VigilError as exc:
            _fail(exc, 1)
    result = results[0]
    result.pop("state", None)
    _report(result, as_json, width=16)


PUBLISH = typer.Option(
    False,
    "--publish",
    help="the refresh job: compare the new model with the serving one on the same recent "
    "labelled data and publish it to vigil.models if it is not worse",
)
EVERY = typer.Option(None, help="with --publish: run again every 10m, 1h, ...")


@train_app.command("inspection")
def train_inspection(
    clips: int = typer.Option(9600, min=20, help="training clips (half with a defect)"),
    test_clips: int = typer.Option(1000, min=20, help="held-out clips, unseen textures"),
    epochs: int = typer.Option(16, min=1, help="epochs (learning rate decays to 0 over them)"),
    size: int = typer.Option(
        128, min=16, help="the classifier's input height and width (multiple of 16)"
    ),
    camera_size: int = typer.Option(
        128, min=16, help="the simulated cameras' frame size (frames are resized to SIZE)"
    ),
    views: int = typer.Option(
        2,
        help="flips averaged at inference, inside the model: 1 (none), 2 (and upside down) "
        "or 4 (all); each view costs one more classifier pass in the worker",
    ),
    seed: int = typer.Option(0, help="simulator and training seed"),
    out_dir: Path | None = typer.Option(
        None, "--out", help="models directory (default: VIGIL_MODEL_DIR or STATE_DIR/models)"
    ),
    publish_: bool = PUBLISH,
    every: str | None = EVERY,
    bits: int = typer.Option(32, help="with --publish: the width published (32: float)"),
    as_json: bool = typer.Option(False, "--json", help="print the evaluation as JSON"),
) -> None:
    """Train the 3D-CNN + Transformer clip classifier on simulated, aligned clips; evaluate
    on clips of part textures it never saw (AUROC, location cell accuracy); export to ONNX
    (checked against torch) under MODELS/inspection. With --publish: the refresh job."""
    from vigil.models.video import VideoConfig, VideoNet

    every_s = _publish_options_ok(publish_, every, bits)
    try:
        cfg = VideoConfig(
            size=size,
            camera_size=camera_size,
            seed=seed,
            epochs=epochs,
            train_clips=clips,
            test_clips=test_clips,
            views=views,
        )
        VideoNet(cfg)  # shape checks before the slow part
    except VigilError as exc:
        _fail(exc, 2)
    settings = _settings()
    _logging(settings)
    say = console.print
    root = Path(out_dir) if out_dir else settings.models_path
    if not publish_:
        try:
            path, report = _fit_inspection(cfg, root, say)
        except VigilError as exc:  # the export does not match the trained model
            _fail(exc, 1)
        _report(report, as_json, width=24)
        return

    from dataclasses import replace

    from vigil.apps.trainer import gate_and_publish
    from vigil.models.compression.tools import export_inspection
    from vigil.models.video import make_clips
    from vigil.streams.sources.camera import HELDOUT_TEXTURES

    bootstrap = _bootstrap(settings)

    def round_(n: int) -> dict:
        round_cfg = replace(cfg, seed=seed + n)  # scheduled rounds: other simulated clips
        path, _report = _fit_inspection(round_cfg, root, say)
        challenger = path
        if bits != 32:
            challenger, _q = export_inspection(path, bits, root / "exports" / "inspection", say=say)
        clips_by_size: dict[tuple, object] = {}

        def data_for(model: dict):  # type: ignore[no-untyped-def]
            # the same parts and defects, in each model's own input size
            c = VideoConfig(**model["config"])
            key = (c.frames, c.size, c.camera_size)
            if key not in clips_by_size:
                clips_by_size[key] = make_clips(test_clips, c, HELDOUT_TEXTURES, seed + 5000 + n)
            return clips_by_size[key]

        decision = gate_and_publish(settings, bootstrap, challenger, data_for, say)
        return {"trained": path.name, **decision}

    _refresh(settings, every_s, round_, as_json)


def _fit_inspection(cfg, root: Path, say) -> tuple[Path, dict]:  # type: ignore[no-untyped-def]
    """Train, evaluate (held-out, fresh and seen textures), pick the alert threshold and
    export under ``root/inspection``: the model directory and the evaluation."""
    import time

    from vigil.models.video import (
        auroc,
        auroc_ci95,
        make_clips,
        pick_threshold,
        predict,
        save_video_model,
        train_video,
        training_clips,
    )
    from vigil.streams.sources.camera import FRESH_TEXTURES, HELDOUT_TEXTURES, TRAIN_TEXTURES

    seed, clips, test_clips, size = cfg.seed, cfg.train_clips, cfg.test_clips, cfg.size
    began = time.perf_counter()
    say(f"simulating and aligning {clips} training clips ({size}x{size}, {cfg.frames} frames)")
    train_set = training_clips(clips, cfg, seed=seed)
    say(f"and {test_clips} held-out clips with unseen textures {list(HELDOUT_TEXTURES)}")
    test_set = make_clips(test_clips, cfg, HELDOUT_TEXTURES, seed=seed + 1000)
    fresh_set = make_clips(test_clips, cfg, FRESH_TEXTURES, seed=seed + 3000)
    seen_set = make_clips(test_clips, cfg, TRAIN_TEXTURES, seed=seed + 2000)
    # the threshold's validation clips, as the worker sees them: bare belt included
    val_set = make_clips(test_clips, cfg, TRAIN_TEXTURES, seed=seed + 4000, belt=True)
    net = train_video(train_set, cfg, say=say)
    report: dict = {
        "train_clips": clips,
        "size": size,
        "camera_size": cfg.camera_size,
        "epochs": cfg.epochs,
    }
    scored = {
        name: (data, *predict(net, data.clips))
        for name, data in (
            ("heldout_textures", test_set),  # unseen in training
            ("fresh_textures", fresh_set),  # unseen in training and in development
            ("seen_textures_new_parts", seen_set),
        )
    }
    # the alert threshold: at most 1 % false alarms on validation clips
    threshold = pick_threshold(val_set.labels, predict(net, val_set.clips)[0], max_fpr=0.01)
    report["threshold"] = round(threshold, 6)
    for name, (data, probs, cells) in scored.items():
        located = data.cells >= 0
        alerted = probs >= threshold
        positive = data.labels.astype(bool)
        report[name] = {
            "clips": len(data.labels),
            "auroc": round(auc := auroc(data.labels, probs), 4),
            "auroc_ci95": [
                round(v, 4) for v in auroc_ci95(auc, int(positive.sum()), int((~positive).sum()))
            ],
            "location_accuracy": round(float((cells[located] == data.cells[located]).mean()), 4),
            "recall_at_threshold": round(float(alerted[positive].mean()), 4),
            "false_positive_rate_at_threshold": round(float(alerted[~positive].mean()), 4),
            "recall_by_defect": {
                kind: round(float(alerted[[k == kind for k in data.kinds]].mean()), 4)
                for kind in sorted({k for k in data.kinds if k})
            },
        }
    report["train_s"] = round(time.perf_counter() - began, 1)
    path = save_video_model(
        net, cfg, root / "inspection", test_set.clips[:8], report, threshold=threshold
    )
    report["model"] = str(path)
    return path, report


def _publish_options_ok(publish_: bool, every: str | None, bits: int) -> float | None:
    """Check --publish/--every/--bits; returns the schedule in seconds (None: one round)."""
    from vigil.apps.trainer import parse_every
    from vigil.models.compression.tools import EXPORT_BITS

    if every is not None and not publish_:
        _fail("--every runs the refresh job: it goes with --publish", 2)
    if bits not in (32, *EXPORT_BITS):
        _fail(f"--bits must be 32 (the float model) or one of {EXPORT_BITS}, not {bits}", 2)
    try:
        return None if every is None else parse_every(every)
    except VigilError as exc:
        _fail(exc, 2)


def _refresh(settings: Settings, every_s: float | None, round_, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    """Run the refresh job's rounds (apps.trainer) until SIGINT/SIGTERM when scheduled."""
    from vigil.apps.trainer import run_schedule

    stop = threading.Event()
    if every_s is not None:
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, lambda *_a: stop.set())
        console.print(f"refreshing every {every_s:g} s; Ctrl-C stops after the current round")

    def report(result: dict) -> None:
        if as_json:
            print(json.dumps(result), flush=True)
        else:
            _report(result, False, width=18)

    try:
        failed = run_schedule(round_, every_s, stop, report)
    except VigilError as exc:
        _fail(exc, 1)
    if failed:
        raise typer.Exit(1)


@train_app.command("risk")
def train_risk(
    days: int = typer.Option(21, min=2, help="days of synthetic history to generate"),
    holdout_days: float = typer.Option(6, min=0.5, help="the last days, held out for evaluation"),
    input: Path | None = typer.Option(
        None, "--input", exists=True, dir_okay=False, help="JSONL history instead of generating"
    ),
    labels: Path | None = typer.Option(
        None, "--labels", exists=True, dir_okay=False, help="labels JSONL for --input"
    ),
    out_dir: Path | None = typer.Option(
        None, "--out", help="models directory (default: VIGIL_MODEL_DIR or STATE_DIR/models)"
    ),
    seed: int = typer.Option(7, help="generator and training seed"),
    accounts: int = typer.Option(1000, min=10, help="generated account population"),
    typology_rate: float = typer.Option(
        0.004, min=0, max=1, help="generated: share of events that start an injected AML case"
    ),
    flow_typology_rate: float = typer.Option(
        0.002, min=0, max=1, help="generated: share that start a fan-in/pass-through/... case"
    ),
    nproc: int = typer.Option(
        1, min=1, help="> 1: fit the NNs data-parallel on the training engine, this many ranks"
    ),
    nodes: int = typer.Option(1, min=1, help="emulated nodes for --nproc"),
    publish_: bool = PUBLISH,
    every: str | None = EVERY,
    bits: int = typer.Option(8, help="with --publish: the width published (32: float)"),
    as_json: bool = typer.Option(False, "--json", help="print the evaluation as one JSON object"),
) -> None:
    """Train the GBDT+NN risk model, evaluate it against rules-only, LightGBM-only and
    NN-only on the held-out days, export it to ONNX and write it where workers load it.
    With --publish: the refresh job (once, or --every)."""
    if nproc % nodes:
        _fail(f"{nproc} processes cannot be split evenly over {nodes} nodes", 2)
    if (input is None) != (labels is None):
        _fail("--input and --labels go together", 2)
    every_s = _publish_options_ok(publish_, every, bits)
    from vigil.models.tabular import history_from_files, history_from_generator

    settings = _settings()
    say = (lambda _m: None) if as_json else (lambda m: console.print(m))
    target = out_dir or settings.models_path

    def history(round_n: int):  # type: ignore[no-untyped-def]
        say("featurising the history through the risk pipeline ...")
        if input is not None and labels is not None:
            return history_from_files(str(input), str(labels)), "files"
        generated = history_from_generator(
            days,
            seed=seed + round_n,  # scheduled rounds: another stretch of synthetic history
            accounts=accounts,
            typology_rate=typology_rate,
            flow_typology_rate=flow_typology_rate,
        )
        return generated, "generated"

    if not publish_:
        try:
            path, report, _test = _fit_risk(
                history(0)[0], holdout_days, seed, nproc, nodes, target, say
            )
        except VigilError as exc:
            _fail(exc, 1)
        _print_risk_report(path, report, holdout_days, as_json)
        return

    from vigil.apps.trainer import (
        MIN_STREAM_POSITIVES,
        MIN_STREAM_ROWS,
        gate_and_publish,
        history_from_stream,
    )
    from vigil.models.compression.tools import export_risk
    from vigil.models.serving import check_feature_spec
    from vigil.streams.features import FEATURE_SPEC

    bootstrap = _bootstrap(settings)
    topics = settings.topics

    def round_(n: int) -> dict:
        data, source = history_from_stream(bootstrap, topics.transactions, topics.labels), "stream"
        if data is None or len(data) < MIN_STREAM_ROWS or data.labels.sum() < MIN_STREAM_POSITIVES:
            data, source = history(n)
        say(f"round {n}: training on the {source} history ({len(data)} labelled transactions)")
        path, report, test_set = _fit_risk(data, holdout_days, seed + n, nproc, nodes, target, say)
        challenger = path
        if bits != 32:
            challenger, _q = export_risk(path, bits, target / "exports", say=say)

        def data_for(model: dict):  # type: ignore[no-untyped-def]
            check_feature_spec(model.get("feature_spec"), FEATURE_SPEC.label)
            return test_set

        decision = gate_and_publish(settings, bootstrap, challenger, data_for, say)
        return {"source": source, "trained": path.name, **decision}

    _refresh(settings, every_s, round_, as_json)


def _fit_risk(history, holdout_days, seed, nproc, nodes, target, say):  # type: ignore[no-untyped-def]
    """Split, train, evaluate and export: the model directory, the evaluation and the
    held-out set. ValueError when the held-out days cannot be evaluated on."""
    from vigil.models.tabular import TabularConfig, export, fit_and_evaluate

    cfg = TabularConfig(seed=seed, nproc=nproc, nodes=nodes)
    model, report, test_set = fit_and_evaluate(history, holdout_days, cfg, say)
    path = export(
        model,
        target,
        test_set.features[:2048],
        {
            "metrics": report,
            "train_rows": len(history) - len(test_set),
            "holdout_days": holdout_days,
        },
    )
    report["model"] = str(path)
    report["version"] = path.name
    return path, report, test_set


def _print_risk_report(path: Path, report: dict, holdout_days: float, as_json: bool) -> None:
    if as_json:
        print(json.dumps(report))
        return
    table = Table(
        title=f"held-out {holdout_days:g} days: {report['rows']} transactions, "
        f"{report['positives']} positive; alerting the top 1 %"
    )
    table.add_column("model")
    table.add_column("AUC-PR", justify="right")
    table.add_column("recall @ 1 %", justify="right")
    table.add_column("hybrid minus it [95 % CI]", justify="right")
    table.add_column("hybrid ahead", justify="right")
    for name, m in report["models"].items():
        vs = report.get("hybrid_vs", {}).get(name)
        ahead = (
            ("", "")
            if vs is None
            else (
                f"{vs['difference']:+.4f} [{vs['low']:+.3f}, {vs['high']:+.3f}]",
                f"{vs['ahead_share']:.0%}",
            )
        )
        table.add_row(name, f"{m['auc_pr']:.4f}", f"{m['recall_at_rate']:.4f}", *ahead)
    out.print(table)
    out.print(
        "AUC-PR differences: paired bootstrap over the held-out hours; 'hybrid ahead': "
        "share of resamples in which the hybrid ranked better"
    )
    cal = Table(title="calibration on the held-out days (the scores that are probabilities)")
    for column in ("model", "log-loss", "Brier", "expected / actual positives"):
        cal.add_column(column, justify="left" if column == "model" else "right")
    for name, m in report["models"].items():
        if (c := m.get("calibration")) is not None:
            cal.add_row(
                name,
                f"{c['log_loss']:.5f}",
                f"{c['brier']:.6f}",
                f"{c['expected_over_actual']:.3f}",
            )
    out.print(cal)
    for key, title, digits in (
        ("recall_by_typology", "recall @ 1 % by typology", 2),
        ("auc_pr_by_typology", "AUC-PR by typology (its positives against all negatives)", 4),
    ):
        typ = Table(title=title)
        typ.add_column("typology")
        for name in report["models"]:
            typ.add_column(name, justify="right")
        first = next(iter(report["models"].values()))
        for t in first[key]:
            typ.add_row(t, *(f"{m[key][t]:.{digits}f}" for m in report["models"].values()))
        out.print(typ)
    out.print(f"model {path.name} written to {path} (workers load the newest at start)")


@bench_app.command("scoring")
def bench_scoring_cmd(
    model: Path | None = typer.Option(
        None, "--model", help="model directory (default: the newest under the models dir)"
    ),
    batch: int = typer.Option(1024, min=1),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Hybrid ONNX scoring on one core: rows/s at a batch size and the batch-1 latency."""
    from vigil.apps.bench import bench_scoring

    try:
        result = bench_scoring(_settings(), model, batch)
    except VigilError as exc:
        _fail(exc, 1)
    _report(result, as_json, width=16)


@bench_app.command("hybrid")
def bench_hybrid_cmd(
    histories: int = typer.Option(10, min=1, help="independent synthetic histories"),
    seed: int = typer.Option(7, help="the first history's seed (then seed+1, ...)"),
    days: int = typer.Option(21, min=2, help="days per history"),
    holdout_days: float = typer.Option(6, min=0.5, help="the last days, held out"),
    accounts: int = typer.Option(1000, min=10, help="generated account population"),
    jobs: int = typer.Option(
        min(2, os.cpu_count() or 1), min=1, help="histories trained at once (processes)"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """The risk model's evaluation on several independent histories: the four models'
    held-out AUC-PR per history and the hybrid's mean lead over each baseline."""
    from vigil.apps.bench import bench_hybrid

    def say(message: str) -> None:  # progress on stderr, with --json too: minutes of work
        console.print(message)

    if days <= holdout_days:
        _fail(f"--days {days} leaves nothing to train on before {holdout_days:g} held-out days", 2)
    try:
        result = bench_hybrid(histories, seed, days, holdout_days, accounts, jobs, say)
    except VigilError as exc:
        _fail(exc, 1)
    if as_json:
        print(json.dumps(result))
        return
    table = Table(title=f"held-out AUC-PR on {histories} histories of {days} days")
    table.add_column("seed", justify="right")
    models = list(result["runs"][0]["auc_pr"])
    for name in models:
        table.add_column(name, justify="right")
    table.add_column("hybrid - lightgbm", justify="right")
    for run in result["runs"]:
        table.add_row(
            str(run["seed"]),
            *(f"{run['auc_pr'][m]:.4f}" for m in models),
            f"{run['hybrid_vs']['lightgbm']:+.4f}",
        )
    out.print(table)
    for metric, key in (("AUC-PR", "hybrid_vs"), ("log-loss", "hybrid_log_loss_vs")):
        for name, s in result[key].items():
            out.print(
                f"{metric}, hybrid vs {name}: mean lead {s['mean']:+.5f} "
                f"(95 % {s['low']:+.5f} .. {s['high']:+.5f}), "
                f"ahead in {s['wins']}, level in {s['ties']}, behind in {s['losses']}"
            )


@bench_app.command("allreduce")
def bench_allreduce_cmd(
    nodes: int = typer.Option(2, min=2, help="emulated nodes (node 2.. in network namespaces)"),
    procs_per_node: int = typer.Option(2, "--procs-per-node", min=1, help="ranks per node"),
    link_mbit: float = typer.Option(
        200, "--link-mbit", min=1, help="inter-node link bandwidth, each way (tc tbf)"
    ),
    sizes: str = typer.Option("1MB,16MB,64MB", help="tensor sizes (binary units: 1MB = 2**20 B)"),
    iters: int = typer.Option(5, min=1, help="timed all-reduces per size and algorithm"),
    algorithms: str = typer.Option(
        "flat,hierarchical,leader,hierarchical-bf16", help="algorithms to compare"
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Flat vs hierarchical AllReduce across emulated nodes behind a shaped link: median
    latency (slowest rank), algbw, busbw and utilisation of the link. Needs root."""
    from vigil.models.engine import ALGORITHMS
    from vigil.models.engine.bench import bench_allreduce, parse_sizes
    from vigil.models.engine.linkemu import LinkEmulationError

    chosen = [a.strip() for a in algorithms.split(",") if a.strip()]
    unknown = sorted(set(chosen) - set(ALGORITHMS))
    try:
        if unknown:
            raise UsageError(f"unknown algorithm {unknown[0]!r}; choose from {list(ALGORITHMS)}")
        byte_sizes = parse_sizes(sizes)
    except VigilError as exc:
        _fail(exc, 2)
    try:
        result = bench_allreduce(
            nodes, procs_per_node, link_mbit, byte_sizes, iters, chosen, say=console.print
        )
    except LinkEmulationError as exc:
        _fail(f"cannot emulate the inter-node link here: {exc}", 1)
    except VigilError as exc:
        _fail(exc, 1)
    if as_json:
        print(json.dumps(result))
        return
    for r in result["runs"]:
        out.print(
            f"{r['size_bytes'] / 2**20:>8.2f} MB {r['algorithm']:>12}: {r['latency_ms']:>9.1f} ms"
            f"  algbw {r['algbw_MBps']:>7.1f} MB/s  busbw {r['busbw_MBps']:>7.1f} MB/s"
            f"  link {r['link_utilization']:.0%}" + ("" if r["correct"] else "  WRONG SUM")
        )
    out.print(f"speedup over flat: {result['speedup']}")


@bench_app.command("precision")
def bench_precision_cmd(
    tasks: str = typer.Option("tabular,video", help="tabular (the risk NN), video (stand-in)"),
    nproc: int = typer.Option(1, min=1, help="data-parallel ranks"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """samples/s and final validation metric for fp32, static bf16 and the dynamic
    precision scheduler, per task."""
    from vigil.models.engine.bench import bench_precision

    try:
        result = bench_precision(
            [t.strip() for t in tasks.split(",") if t.strip()], nproc=nproc, say=console.print
        )
    except VigilError as exc:
        _fail(exc, 2)
    if as_json:
        print(json.dumps(result))
        return
    for name, entry in result["tasks"].items():
        for mode, row in entry["modes"].items():
            out.print(
                f"{name:>8} {mode:>8}: {row['samples_per_s']:>10.1f} samples/s  "
                f"{entry['metric']} {row[entry['metric']]:.4f}  layers {row['layers']}"
            )


def main() -> None:
    """``vigil``: an expected failure (:class:`VigilError`) is one line on stderr and exit
    code 1; anything else is a bug and keeps its traceback."""
    try:
        app()
    except VigilError as exc:
        console.print(f"[red]error:[/] {exc}", soft_wrap=True)
        raise SystemExit(1) from None


if __name__ == "__main__":
    main()
