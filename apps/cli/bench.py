"""``vigil bench ...``: benchmarks, each printing one JSON object with ``--json``."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import typer
from rich.table import Table

from vigil.apps.cli.base import (
    app,
    console,
    fail,
    get_settings,
    out,
    setup_logging,
    show,
)
from vigil.errors import UsageError, VigilError

bench_app = typer.Typer(help="Benchmarks (print JSON with --json).", no_args_is_help=True)
app.add_typer(bench_app, name="bench")


@bench_app.command("features")
def bench_features_cmd(
    events: int = typer.Option(50_000, min=1000, help="synthetic transactions"),
    batch: int = typer.Option(1000, min=1, help="micro-batch size"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Per-transaction cost of decode + features + ruleset, in-process on one core."""
    from vigil.apps.bench import bench_features

    result = bench_features(events=events, batch=batch)
    show(result, as_json, width=10)


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

    settings = get_settings()
    setup_logging(settings)
    logging.getLogger().setLevel(logging.WARNING)
    result = run(
        settings, events=events, rate=rate, timeout_s=timeout, workers=workers, console=console
    )
    show(result, as_json, width=10)
    if result["scored"] != result["events"]:
        raise typer.Exit(1)


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
    from vigil.models.kinds import kind

    settings = get_settings()
    setup_logging(settings)
    widths = tuple(int(b) for b in bits.split(",") if b.strip())
    if not widths or any(b not in EXPORT_BITS for b in widths):
        fail(f"--bits: comma-separated, each one of {', '.join(map(str, EXPORT_BITS))}", 2)
    sources = {}
    for name in (m.strip() for m in models.split(",") if m.strip()):
        try:
            found = kind(name).latest(settings.models_path)
        except VigilError as exc:
            fail(exc, 2)
        if found is None:
            fail(f"no {name} model under {settings.models_path}: run `vigil train {name}`", 1)
        sources[name] = found
    try:
        result = quantization_report(sources, widths, say=console.print)
    except VigilError as exc:
        fail(exc, 1)
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
    images: Path | None = typer.Option(
        None,
        "--images",
        help="the cameras' parts made of your images (a folder as for "
        "vigil train inspection --images)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Cameras publish frames in real time; the inspection worker (with the newest
    inspection model) aligns and classifies them: frames/s, clips/s, p50/p99 latency."""
    from vigil.apps.bench import bench_inspection as run
    from vigil.streams.frames import CODECS

    if codec not in CODECS:
        fail(f"unknown codec {codec!r}; one of {list(CODECS)}", 2)
    settings = get_settings()
    setup_logging(settings)
    logging.getLogger().setLevel(logging.WARNING)
    try:
        result = run(
            settings, cameras, fps, seconds, size, codec, timeout, console=console, images=images
        )
    except VigilError as exc:
        fail(exc, 1)
    show(result, as_json, width=18)
    if result["timed_out"]:
        raise typer.Exit(1)


@bench_app.command("inspection-data")
def bench_inspection_data_cmd(
    images: Path = typer.Option(
        ..., "--images", help="a folder of part images (e.g. ../shared/data/magnetic-tile)"
    ),
    mode: str = typer.Option(
        "normal-only",
        help="normal-only (train on defect-free images and synthetic defects; test on the "
        "rest and every defective image) or supervised (a split stratified by kind)",
    ),
    clips: int = typer.Option(
        3000, min=20, help="training clips: each training image centred, in rounds"
    ),
    epochs: int = typer.Option(10, min=1, help="epochs"),
    size: int = typer.Option(128, min=16, help="the classifier's input (multiple of 16)"),
    stem: str = typer.Option(
        "deep", help="the network's first layers: deep (size a multiple of 64) or small"
    ),
    limit: int | None = typer.Option(
        None, min=2, help="at most this many images of each kind (a quick look)"
    ),
    seed: int = typer.Option(0, help="split, simulator and training seed"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """The inspection model on a real image set, as its literature reports it: image-level
    AUROC with its interval, recall per defect kind at 1 % false alarms, location accuracy
    against the masks, and the time it took; beside the published results."""
    from vigil.models.inspection import VideoConfig, VideoNet
    from vigil.models.inspection.from_images import (
        MODES,
        PUBLISHED_NORMAL_ONLY,
        fit_images,
        split_images,
    )
    from vigil.models.inspection.net import stem_config

    if mode not in MODES:
        fail(f"--mode is one of {', '.join(MODES)}, not {mode!r}", 2)
    try:
        cfg = VideoConfig(
            size=size,
            camera_size=size,  # the parts at the classifier's resolution
            fill=True,  # each image is what the camera sees of a part
            seed=seed,
            epochs=epochs,
            train_clips=clips,
            **stem_config(stem),
        )
        VideoNet(cfg)  # shape checks before the slow part
        split = split_images(images, mode, seed=seed, limit=limit)
    except VigilError as exc:
        fail(exc, 2)
    say = (lambda _m: None) if as_json else console.print
    for problem in split.problems:
        console.print(f"left out: {problem}")
    _net, report = fit_images(split, cfg, say)
    report = {"images_dir": str(images), "mode": mode, **report}
    if mode == "normal-only" and (Path(images) / "MT_Free").is_dir():  # Magnetic Tile's
        report["published_auroc_normal_only"] = PUBLISHED_NORMAL_ONLY
    show(report, as_json, width=24)


@bench_app.command("inspection-calibration")
def bench_inspection_calibration_cmd(
    model: Path | None = typer.Option(
        None, "--model", help="an inspection model directory (default: the newest)"
    ),
    seconds: float = typer.Option(30.0, min=1, help="clean frames per camera to calibrate on"),
    false_alarms: float = typer.Option(0.01, min=0.0001, max=0.5, help="the target rate"),
    test_clips: int = typer.Option(1000, min=20, help="evaluation clips per texture"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """Per-camera calibration on textures the model never saw: false alarms and recall
    at the model's threshold and at the one calibrated on that camera's clean frames."""
    from vigil.apps.bench import bench_calibration

    settings = get_settings()
    try:
        result = bench_calibration(settings, model, seconds, false_alarms, test_clips)
    except VigilError as exc:
        fail(exc, 1)
    show(result, as_json, width=20)


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
        result = bench_scoring(get_settings(), model, batch)
    except VigilError as exc:
        fail(exc, 1)
    show(result, as_json, width=16)


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
        fail(f"--days {days} leaves nothing to train on before {holdout_days:g} held-out days", 2)
    try:
        result = bench_hybrid(histories, seed, days, holdout_days, accounts, jobs, say)
    except VigilError as exc:
        fail(exc, 1)
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


@bench_app.command("handbook")
def bench_handbook_cmd(
    data: Path | None = typer.Option(
        None,
        "--data",
        help="the shared data folder, its fraud-handbook folder or the CSV "
        "(default: $VIGIL_SHARED_DATA, else ../shared/data beside the checkout)",
    ),
    protocol: str = typer.Option(
        "ch5",
        help="ch3 (one fold), ch5 (four prequential folds) or ch5-valid (the handbook's "
        "model-selection folds, test weeks 2018-07-04..31: tune here, report ch5)",
    ),
    labels: bool = typer.Option(
        True,
        "--labels/--no-labels",
        help="publish each label on vigil.labels when it becomes known (7 days after its "
        "transaction), as the protocol's delay; --no-labels: features without them",
    ),
    seed: int = typer.Option(7, help="training seed"),
    as_json: bool = typer.Option(False, "--json", help="print one JSON object"),
) -> None:
    """The Fraud Detection Handbook's protocol on its card transactions, through the
    worker's pipeline: AUC ROC, average precision and Card Precision@100 per fold and mean,
    per fraud scenario, for rules only, LightGBM, NN only and the hybrid, beside the
    handbook's published results."""
    from vigil.models.risk import TabularConfig
    from vigil.models.risk.handbook import MODELS, PROTOCOLS, run_handbook
    from vigil.streams.sources.handbook import default_data_dir

    if protocol not in PROTOCOLS:
        fail(f"--protocol {protocol!r}: one of {', '.join(PROTOCOLS)}", 2)

    def say(message: str) -> None:  # progress on stderr, with --json too: minutes of work
        console.print(message)

    try:
        result = run_handbook(
            data or default_data_dir(),
            protocol,
            TabularConfig(seed=seed),
            with_labels=labels,
            say=say,
        )
    except VigilError as exc:
        fail(exc, 1)
    if as_json:
        print(json.dumps(result))
        return
    folds = len(result["folds"])
    table = Table(title=f"handbook {protocol}: mean over {folds} test week(s)")
    for column in ("model", "AUC ROC", "AP", "CP@100", *result["mean_ap_by_scenario"]["hybrid"]):
        table.add_column(column, justify="right")
    for name in MODELS:
        m = result["mean"][name]
        by = result["mean_ap_by_scenario"][name]
        table.add_row(
            f"Vigil {name}",
            f"{m['auc_roc']:.3f}",
            f"{m['ap']:.3f}",
            f"{m['cp100']:.3f}",
            *(f"{v:.3f}" for v in by.values()),
        )
    for name, m in result["published"].items():
        table.add_row(
            f"handbook: {name}", f"{m['auc_roc']:.3f}", f"{m['ap']:.3f}", f"{m['cp100']:.3f}"
        )
    m = result["mean"]["label_visible_oracle"]
    table.add_row(
        "ceiling: every label-visible fraud first",
        f"{m['auc_roc']:.3f}",
        f"{m['ap']:.3f}",
        f"{m['cp100']:.3f}",
    )
    out.print(table)
    lead = result["hybrid_vs_lightgbm_ap_pooled"]
    out.print(
        f"hybrid - LightGBM, AP over the pooled test weeks: {lead['difference']:+.4f} "
        f"(95 % {lead['low']:+.4f} .. {lead['high']:+.4f})"
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
        fail(exc, 2)
    try:
        result = bench_allreduce(
            nodes, procs_per_node, link_mbit, byte_sizes, iters, chosen, say=console.print
        )
    except LinkEmulationError as exc:
        fail(f"cannot emulate the inter-node link here: {exc}", 1)
    except VigilError as exc:
        fail(exc, 1)
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
    from vigil.models.tasks import bench_precision

    try:
        result = bench_precision(
            [t.strip() for t in tasks.split(",") if t.strip()], nproc=nproc, say=console.print
        )
    except VigilError as exc:
        fail(exc, 2)
    if as_json:
        print(json.dumps(result))
        return
    for name, entry in result["tasks"].items():
        for mode, row in entry["modes"].items():
            out.print(
                f"{name:>8} {mode:>8}: {row['samples_per_s']:>10.1f} samples/s  "
                f"{entry['metric']} {row[entry['metric']]:.4f}  layers {row['layers']}"
            )
