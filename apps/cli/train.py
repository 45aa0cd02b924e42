"""``vigil train ...``: the models, the engine's networks, and the refresh job."""

from __future__ import annotations

import json
import signal
import threading
from pathlib import Path

import typer
from rich.table import Table

from vigil.apps.cli.base import (
    app,
    console,
    fail,
    get_bootstrap,
    get_settings,
    out,
    setup_logging,
    show,
)
from vigil.apps.process import stop_on_signals
from vigil.apps.settings import Settings
from vigil.errors import VigilError

train_app = typer.Typer(help="Train models and write them for the workers.", no_args_is_help=True)
app.add_typer(train_app, name="train")


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
    dies. For real multi-node jobs run ``torchrun ... -m vigil.models.tasks``."""
    import tempfile

    from vigil.models.engine import ALGORITHMS, supervise
    from vigil.models.engine.precision import DTYPES
    from vigil.models.engine.run import job
    from vigil.models.tasks import TASKS, config_for, prepare_tabular, task_factory

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
        fail(problems[0], 2)
    setup_logging(get_settings())
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
            console.print("generating and featurising 14 days of history")
            prepared = str(prepare_tabular(Path(tmp) / "tabular.pt"))
        console.print(
            f"training {task}: {nproc} ranks on {nodes} node(s), {cfg.steps} steps, "
            f"{precision} precision, {algorithm} AllReduce"
        )
        ckpt = str(checkpoint_dir) if checkpoint_dir else None
        try:
            results = supervise(
                job,
                nproc,
                nodes,
                (task_factory(task, prepared, cfg.seed), cfg, ckpt),
                max_restarts,
                say=console.print,
            )
        except VigilError as exc:
            fail(exc, 1)
    result = results[0]
    result.pop("state", None)
    show(result, as_json, width=16)


PUBLISH = typer.Option(
    False,
    "--publish",
    help="the refresh job: compare the new model with the serving one on the same recent "
    "labelled data and publish it to vigil.models if it is not worse",
)
EVERY = typer.Option(None, help="with --publish: run again every 10m, 1h, ...")


@train_app.command("inspection")
def train_inspection(
    clips: int | None = typer.Option(
        None,
        min=20,
        help="training clips: 9,600, half with a defect; with --images 3,000, each training "
        "image centred under the camera, in rounds",
    ),
    test_clips: int = typer.Option(1000, min=20, help="held-out clips, unseen textures"),
    epochs: int | None = typer.Option(
        None, min=1, help="epochs, the learning rate decaying to 0 over them: 16; with --images 10"
    ),
    size: int = typer.Option(
        128, min=16, help="the classifier's input height and width (multiple of 16)"
    ),
    camera_size: int | None = typer.Option(
        None,
        min=16,
        help="the simulated cameras' frame size (frames are resized to SIZE; default: SIZE)",
    ),
    views: int = typer.Option(
        2,
        help="flips averaged at inference, inside the model: 1 (none), 2 (and upside down) "
        "or 4 (all); each view costs one more classifier pass in the worker",
    ),
    stem: str | None = typer.Option(
        None,
        help="the network's first layers: small (fast; the simulated textures) or deep "
        "(real surfaces; size a multiple of 64); default: deep with --images or --frames",
    ),
    seed: int = typer.Option(0, help="simulator and training seed"),
    out_dir: Path | None = typer.Option(
        None, "--out", help="models directory (default: VIGIL_MODEL_DIR or STATE_DIR/models)"
    ),
    publish_: bool = PUBLISH,
    every: str | None = EVERY,
    bits: int = typer.Option(32, help="with --publish: the width published (32: float)"),
    images: Path | None = typer.Option(
        None,
        "--images",
        help="train on your own part images instead: a folder with good/ and one folder per "
        "defect kind (docs/models/inspection.md)",
    ),
    frames_dir: Path | None = typer.Option(
        None,
        "--frames",
        help="train on a recording instead (vigil record frames) with its labels file",
    ),
    labels: Path | None = typer.Option(
        None, "--labels", help="with --frames: the labels file (default: DIR/labels.jsonl)"
    ),
    mode: str | None = typer.Option(
        None,
        help="with --images: normal-only (synthetic defects painted on your defect-free "
        "images) or supervised (your labelled defects too; the default when DIR has some)",
    ),
    false_alarms: float | None = typer.Option(
        None,
        min=0.0001,
        max=0.5,
        help="with --images or --frames: the alert threshold's false-alarm rate on held-out "
        "defect-free images or clips (default: VIGIL_INSPECTION_FALSE_ALARMS, 0.01)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print the evaluation as JSON"),
) -> None:
    """Train the 3D-CNN + Transformer clip classifier on simulated, aligned clips; evaluate
    on clips of part textures it never saw (AUROC, location cell accuracy); export to ONNX
    (checked against torch) under MODELS/inspection. With --images: on your own part
    images on the simulated conveyor, evaluated on held-out images. With --publish: the
    refresh job."""
    from vigil.models.inspection import VideoConfig, VideoNet, fit_inspection
    from vigil.models.inspection.from_images import MODES, train_from_images
    from vigil.models.inspection.net import stem_config
    from vigil.models.serving import ModelError

    every_s = _publish_options_ok(publish_, every, bits)
    if images is not None and frames_dir is not None:
        fail("--images or --frames, not both", 2)
    if (images is not None or frames_dir is not None) and publish_:
        fail(
            "--publish trains on simulated parts; train on --images or --frames, then "
            "publish the model directory with `vigil models publish DIR`",
            2,
        )
    if labels is not None and frames_dir is None:
        fail("--labels goes with --frames", 2)
    if mode is not None and (images is None or mode not in MODES):
        fail(f"--mode is one of {', '.join(MODES)}, with --images", 2)
    if stem is None:
        stem = "small" if images is None and frames_dir is None else "deep"
    if clips is None:
        clips = 9600 if images is None else 3000
    if epochs is None:
        epochs = 16 if images is None else 10
    try:
        cfg = VideoConfig(
            size=size,
            camera_size=camera_size or size,
            seed=seed,
            epochs=epochs,
            train_clips=clips,
            test_clips=test_clips,
            views=views,
            fill=images is not None,  # each image is what the camera sees of a part
            **stem_config(stem),
        )
        VideoNet(cfg)  # shape checks before the slow part
    except VigilError as exc:
        fail(exc, 2)
    settings = get_settings()
    setup_logging(settings)
    say = console.print
    root = Path(out_dir) if out_dir else settings.models_path
    if images is not None or frames_dir is not None:
        from vigil.models.inspection.recorded import train_from_frames

        if false_alarms is None:
            false_alarms = settings.inspection_false_alarms
        try:
            if images is not None:
                path, report = train_from_images(images, mode, cfg, root, say, false_alarms)
            else:
                path, report = train_from_frames(
                    frames_dir, labels, cfg, root, say, false_alarms, settings.inspection_stride
                )
        except VigilError as exc:  # no usable images; the export does not match
            fail(exc, 1 if isinstance(exc, ModelError) else 2)
        show(report, as_json, width=24)
        return
    if not publish_:
        try:
            path, report = fit_inspection(cfg, root, say)
        except VigilError as exc:  # the export does not match the trained model
            fail(exc, 1)
        show(report, as_json, width=24)
        return

    from vigil.apps.trainer import inspection_round

    round_ = inspection_round(settings, get_bootstrap(settings), cfg, root, bits, say)
    _refresh(settings, "inspection", every_s, round_, as_json)


def _publish_options_ok(publish_: bool, every: str | None, bits: int) -> float | None:
    """Check --publish/--every/--bits; returns the schedule in seconds (None: one round)."""
    from vigil.apps.trainer import parse_every
    from vigil.models.compression.tools import EXPORT_BITS

    if every is not None and not publish_:
        fail("--every runs the refresh job: it goes with --publish", 2)
    if bits not in (32, *EXPORT_BITS):
        fail(f"--bits must be 32 (the float model) or one of {EXPORT_BITS}, not {bits}", 2)
    try:
        return None if every is None else parse_every(every)
    except VigilError as exc:
        fail(exc, 2)


def _refresh(settings: Settings, model: str, every_s: float | None, round_, as_json: bool) -> None:  # type: ignore[no-untyped-def]
    """Run the refresh job's rounds (apps.trainer) until SIGINT/SIGTERM when scheduled;
    a scheduled job serves its metrics and health (VIGIL_TRAINER_METRICS_PORT)."""
    from vigil.apps.metrics import serve
    from vigil.apps.trainer import RefreshWatch, run_schedule

    stop = threading.Event()
    signals: tuple[signal.Signals, ...] = ()
    server = None
    if every_s is not None:
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
        console.print(f"refreshing every {every_s:g} s; Ctrl-C stops after the current round")
        watch = RefreshWatch(model)
        round_ = watch.wrap(round_)
        port = settings.trainer_metrics_port
        server = serve(watch.metrics, watch.ready, settings.metrics_host, port, watch.alive)

    def report(result: dict) -> None:
        if as_json:
            print(json.dumps(result), flush=True)
        else:
            show(result, False, width=18)

    try:
        with stop_on_signals(stop, signals):
            failed = run_schedule(round_, every_s, stop, report)
    except VigilError as exc:
        fail(exc, 1)
    finally:
        if server is not None:
            server.stop()
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
    warmup_days: int | None = typer.Option(
        None,
        "--warmup-days",
        min=0,
        help="the first days only fill the state (30-day windows are full after them) and "
        "are not trained or evaluated on (default: 30 generated, 0 with --input)",
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
    allow_synthetic: bool = typer.Option(
        False,
        "--allow-synthetic",
        help="with --publish: when the stream holds too few labels, train on generated "
        "history and publish that (without it such a round publishes nothing)",
    ),
    as_json: bool = typer.Option(False, "--json", help="print the evaluation as one JSON object"),
) -> None:
    """Train the GBDT+NN risk model, evaluate it against rules-only, LightGBM-only and
    NN-only on the held-out days, export it to ONNX and write it where workers load it.
    With --publish: the refresh job (once, or --every)."""
    if nproc % nodes:
        fail(f"{nproc} processes cannot be split evenly over {nodes} nodes", 2)
    if (input is None) != (labels is None):
        fail("--input and --labels go together", 2)
    every_s = _publish_options_ok(publish_, every, bits)
    if allow_synthetic and not publish_:
        fail("--allow-synthetic is about what --publish may publish: it goes with --publish", 2)
    from vigil.models.risk import (
        WARMUP_DAYS,
        TabularConfig,
        fit_and_export,
        history_from_files,
        history_from_generator,
    )
    from vigil.streams.currency import load_rates

    settings = get_settings()
    say = (lambda _m: None) if as_json else (lambda m: console.print(m))
    target = out_dir or settings.models_path

    def history(round_n: int):  # type: ignore[no-untyped-def]
        say("featurising the history through the risk pipeline ...")
        if input is not None and labels is not None:
            rates = None if settings.rates_path is None else load_rates(settings.rates_path)
            got = history_from_files(str(input), str(labels), rates, warmup_days or 0)
            return got, "files"
        generated = history_from_generator(
            days,
            seed=seed + round_n,  # scheduled rounds: another stretch of synthetic history
            accounts=accounts,
            typology_rate=typology_rate,
            flow_typology_rate=flow_typology_rate,
            warmup_days=WARMUP_DAYS if warmup_days is None else warmup_days,
        )
        return generated, "generated"

    cfg = TabularConfig(seed=seed, nproc=nproc, nodes=nodes)
    if not publish_:
        try:
            path, report, _test = fit_and_export(history(0)[0], holdout_days, cfg, target, say)
        except VigilError as exc:
            fail(exc, 1)
        _print_risk_report(path, report, holdout_days, as_json)
        return

    from vigil.apps.trainer import risk_round

    bootstrap = get_bootstrap(settings)
    round_ = risk_round(
        settings,
        bootstrap,
        history,
        holdout_days,
        cfg,
        target,
        bits,
        say,
        # files given: the user's own data to fall back on; generated: only when allowed
        allow_synthetic=allow_synthetic or input is not None,
    )
    _refresh(settings, "risk", every_s, round_, as_json)


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
    if accounts := report.get("accounts"):
        acc = Table(
            title=f"accounts: AUC-PR of flow-case accounts ({accounts['labelled']} of "
            f"{accounts['accounts']} accounts paid in a labelled case), an account's score "
            "its highest"
        )
        acc.add_column("accounts")
        acc.add_column("n", justify="right")
        for name in accounts["models"]:
            acc.add_column(name, justify="right")
        for group, n in accounts["positives"].items():
            label = f"{group} flow cases" if group in ("small", "large") else group
            acc.add_row(label, str(n), *(f"{m[group]:.4f}" for m in accounts["models"].values()))
        out.print(acc)
    out.print(f"model {path.name} written to {path} (workers load the newest at start)")
