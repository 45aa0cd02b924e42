"""``vigil demo``: broker, risk and inspection workers, a transaction publisher and a
simulated camera, with a live view."""

from __future__ import annotations

import hashlib
import multiprocessing
import threading
import time
from collections import deque
from concurrent.futures import ProcessPoolExecutor
from dataclasses import replace
from importlib import resources
from pathlib import Path
from typing import Any

from rich.console import Console, Group
from rich.live import Live
from rich.table import Table

from vigil.apps.broker import clear_runtime, ensure_all, write_runtime
from vigil.apps.clients import publish, read_topic
from vigil.apps.process import WorkerProcess, stop_on_signals
from vigil.apps.releases import publish_release
from vigil.apps.session import broker_for
from vigil.apps.settings import Settings
from vigil.models.inspection import VideoConfig, fit_inspection
from vigil.models.kinds import INSPECTION, RISK
from vigil.models.registry import build_release
from vigil.models.risk import (
    TabularConfig,
    fit_and_export,
    history_from_generator,
)
from vigil.models.serving import DEMO_MANIFEST, latest_dir
from vigil.streams.features.library import FEATURE_SPEC
from vigil.streams.frames import encode_frame
from vigil.streams.pipeline import now_ms
from vigil.streams.sources import GeneratorConfig, TransactionGenerator
from vigil.streams.sources.camera import CameraConfig, CameraSimulator

__all__ = ["run_demo"]


class _Stats:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.published = 0
        self.scored = 0
        self.alerts = 0
        self.dlq = 0
        self.publish_ms: dict[str, int] = {}
        self.latencies_ms: deque[int] = deque(maxlen=2000)
        self.scored_at: deque[float] = deque(maxlen=100_000)  # monotonic times, for events/s
        self.recent_alerts: deque[dict[str, Any]] = deque(maxlen=8)
        self.frames = 0  # published by the camera
        self.clips = 0
        self.defects = 0  # inspection alerts
        self.recent_defects: deque[dict[str, Any]] = deque(maxlen=4)
        self.clip_latencies_ms: deque[int] = deque(maxlen=500)
        self.frame_ms: dict[int, int] = {}  # seq -> publish time
        self.serving = {"risk": "-", "inspection": "-"}  # the model versions outputs carry
        self.models_note = ""  # what the demo models are doing

    def rate(self, window_s: float = 5.0) -> float:
        now = time.monotonic()
        with self.lock:
            return sum(1 for t in self.scored_at if now - t <= window_s) / window_s


def _stat_row(cells: dict[str, str]) -> Table:
    """Bold headings over right-aligned values."""
    grid = Table.grid(padding=(0, 3))
    for _ in cells:
        grid.add_column(justify="right")
    grid.add_row(*(f"[b]{name}" for name in cells))
    grid.add_row(*cells.values())
    return grid


def _p50_p99(values: deque[int]) -> tuple[str, str]:
    ordered = sorted(values)
    if not ordered:
        return "-", "-"
    p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
    return f"{ordered[len(ordered) // 2]} ms", f"{p99} ms"


def _view(stats: _Stats, bootstrap: str, elapsed_s: float) -> Group:
    p50, p99 = _p50_p99(stats.latencies_ms)
    head = _stat_row(
        {
            "published": str(stats.published),
            "scored": str(stats.scored),
            "events/s": f"{stats.rate():.0f}",
            "alerts": f"[yellow]{stats.alerts}",
            "DLQ": f"[red]{stats.dlq}",
            "latency p50": p50,
            "p99": p99,
        }
    )
    alerts = Table(
        "decision",
        "score",
        "account",
        "tx",
        "reasons",
        title="latest alerts",
        title_justify="left",
        expand=True,
    )
    for a in list(stats.recent_alerts)[::-1]:
        colour = "red" if a.get("decision") == "block" else "yellow"
        reasons = "; ".join(r.get("detail", "") for r in a.get("reasons", []))
        alerts.add_row(
            f"[{colour}]{a.get('decision')}",
            f"{a.get('score', 0):.2f}",
            str(a.get("account_id")),
            str(a.get("tx_id")),
            reasons,
        )
    clip_p50, clip_p99 = _p50_p99(stats.clip_latencies_ms)
    inspection = _stat_row(
        {
            "camera frames": str(stats.frames),
            "clips": str(stats.clips) if stats.clips else "[dim]0 (no model yet?)",
            "defect alerts": f"[yellow]{stats.defects}",
            "clip latency p50": clip_p50,
            "p99": clip_p99,
        }
    )
    defects = Table(
        "camera",
        "frames",
        "score",
        "bbox",
        title="latest defects",
        title_justify="left",
        expand=True,
    )
    for a in list(stats.recent_defects)[::-1]:
        defects.add_row(
            str(a.get("camera_id")),
            f"{a.get('seq_start')}..{a.get('seq_end')}",
            f"{a.get('score', 0):.2f}",
            str(a.get("bbox")),
        )
    models = (
        f"[b]models[/b] risk {stats.serving['risk']} · inspection {stats.serving['inspection']}"
        + (f" · [dim]{stats.models_note}" if stats.models_note else "")
    )
    footer = f"[dim]broker {bootstrap} · {elapsed_s:.0f} s · Ctrl-C to stop"
    return Group(head, alerts, inspection, defects, models, footer)


def run_demo(
    settings: Settings,
    duration_s: float,
    rate: float,
    console: Console,
    camera_fps: float = 50.0,
    ui_port: int = 8080,
    demo_models: bool = True,
) -> int:
    stop = threading.Event()
    stats = _Stats()
    topics = settings.topics
    with stop_on_signals(stop), broker_for(settings) as (bootstrap, embedded):
        ensure_all(bootstrap, topics, settings.partitions, settings.replication_factor)
        if embedded is not None:
            write_runtime(settings, embedded)  # `vigil consume` in another terminal finds it
        log_path = settings.state_dir / "demo-worker.log"
        inspection_log = settings.state_dir / "demo-inspection.log"
        console.print(
            f"broker {bootstrap}{' (embedded)' if embedded else ''}; worker logs: {log_path}, "
            f"{inspection_log}"
        )
        # the demo's own workers serve demo models (trained below, in seconds)
        env = {"VIGIL_KAFKA_BOOTSTRAP": bootstrap, "VIGIL_SERVE_DEMO_MODELS": "true"}
        worker = WorkerProcess("risk", env, log_path).start()
        inspector = WorkerProcess("inspection", env, inspection_log).start()
        web = None
        if ui_port:
            ui_log = settings.state_dir / "demo-ui.log"
            args = ["ui", "--port", str(ui_port)]
            web = WorkerProcess("ui", env, ui_log, args=args).start()
            console.print(f"console: http://localhost:{ui_port}/ (log {ui_log})")
        ports = [
            (name, port)
            for name, port in (
                ("risk", settings.risk_metrics_port),
                ("inspection", settings.inspection_metrics_port),
            )
            if port
        ]
        if ports:
            console.print(
                "metrics and health: "
                + ", ".join(
                    f"http://localhost:{port}/metrics ({name}; /healthz, /readyz)"
                    for name, port in ports
                )
            )
        readers = [
            (topics.scores, "scores"),
            (topics.alerts, "alerts"),
            (topics.dlq, "dlq"),
            (topics.inspection_clips, "clips"),
            (topics.inspection_alerts, "defects"),
        ]
        threads = [
            threading.Thread(
                target=_publisher, args=(bootstrap, topics.transactions, rate, stats, stop)
            ),
            threading.Thread(
                target=_demo_models, args=(settings, bootstrap, embedded, demo_models, stats)
            ),
            threading.Thread(
                target=_camera, args=(bootstrap, topics.frames, camera_fps, stats, stop)
            ),
        ]
        read_until = threading.Event()  # readers go on until what was published is in
        readers_ = [
            threading.Thread(target=_reader, args=(bootstrap, topic, kind, stats, read_until))
            for topic, kind in readers
        ]
        threads += readers_
        for t in threads:
            t.daemon = True
            t.start()
        start = time.monotonic()
        try:
            with Live(_view(stats, bootstrap, 0), console=console, refresh_per_second=4) as live:
                while not stop.is_set():
                    elapsed = time.monotonic() - start
                    if duration_s and elapsed >= duration_s:
                        break
                    if not worker.running:
                        console.print(f"[red]the risk worker exited; see {log_path}")
                        break
                    if not inspector.running:
                        console.print(f"[red]the inspection worker exited; see {inspection_log}")
                        break
                    live.update(_view(stats, bootstrap, elapsed))
                    time.sleep(0.25)
        except KeyboardInterrupt:
            pass
        finally:
            stop.set()
            console.print("stopping: publisher, worker, broker ...")
            for t in (threads[0], threads[2]):  # the publisher and the camera
                t.join(5)
            # the worker finishes what was published (a few seconds at most) before the
            # counts below are final
            deadline = time.monotonic() + 15
            while worker.running and time.monotonic() < deadline:
                with stats.lock:
                    if stats.scored + stats.dlq >= stats.published:
                        break
                time.sleep(0.2)
            read_until.set()
            for t in readers_:
                t.join(5)
            worker.stop()
            inspector.stop()
            if web is not None:
                web.stop()
            if embedded is not None:
                clear_runtime(settings)
    console.print(
        f"published {stats.published}, scored {stats.scored}, "
        f"alerts {stats.alerts}, dead letters {stats.dlq}; camera frames {stats.frames}, "
        f"clips {stats.clips}, defect alerts {stats.defects}; last served: risk "
        f"{stats.serving['risk']}, inspection {stats.serving['inspection']}"
    )
    return 0


def _publisher(
    bootstrap: str, topic: str, rate: float, stats: _Stats, stop: threading.Event
) -> None:
    gen = TransactionGenerator(replace(DEMO_STREAM, seed=int(time.time()), start_ms=now_ms()))
    pending: deque[str | None] = deque()

    def records():  # type: ignore[no-untyped-def]
        for g in gen:
            pending.append(g.tx["tx_id"] if g.tx else None)
            yield g.key, g.value

    def sent(n: int, _value: bytes) -> None:
        tx_id = pending.popleft()
        with stats.lock:
            stats.published = n
            if tx_id is not None:
                stats.publish_ms[tx_id] = now_ms()

    publish(bootstrap, topic, records(), rate, on_sent=sent, should_stop=stop.is_set)


def _camera(bootstrap: str, topic: str, fps: float, stats: _Stats, stop: threading.Event) -> None:
    """One simulated line camera (128x128 grey PNG), a third of its parts defective."""
    sim = CameraSimulator(CameraConfig(seed=int(time.time()), fps=fps, start_ms=now_ms()))

    def sent(n: int, _value: bytes) -> None:
        with stats.lock:
            stats.frames = n
            stats.frame_ms[n - 1] = now_ms()  # seqs start at 0
            while len(stats.frame_ms) > 10_000:
                stats.frame_ms.pop(next(iter(stats.frame_ms)))

    frames = (encode_frame(shot.frame, "png") for shot in sim.frames("demo-cam-0"))
    publish(bootstrap, topic, frames, fps, on_sent=sent, should_stop=stop.is_set)


# The demo inspection model the package ships (build_shipped_demo_inspection)
SHIPPED_DEMO_MODELS = Path(str(resources.files("vigil.models.inspection").joinpath("demo")))

# What the demo's publisher sends: more large wires, structuring bursts and laundering
# cases than a real day (about 10 % of transactions are labelled fraud) and some malformed
# records, so that every part of the pipeline has something to show. At 200 a second a
# simulated day (3,000 transactions) passes every 15 s.
DEMO_STREAM = GeneratorConfig(
    large_rate=0.01,
    burst_rate=0.004,
    malformed_rate=0.005,
    typology_rate=0.004,
    flow_typology_rate=0.002,
)

# Demo models: small enough to train in seconds beside the running stack (measured alone
# on the 2-core development host: risk 16 s; inspection 20 s, AUROC 0.76 on unseen
# textures: it classifies, coarsely). The risk model learns the demo's own stream from its
# first transaction, as the demo's worker meets it: with empty account state. A model
# trained after the usual 30-day warm-up (WARMUP_DAYS) read the short histories of a fresh
# worker as risk and alerted on 55 % of the demo's first simulated days (measured; the
# rate of fraud there is 10 %).
DEMO_RISK_DAYS, DEMO_RISK_HOLDOUT_DAYS = 12, 3
DEMO_RISK = TabularConfig(trees=60, epochs=3)
DEMO_INSPECTION = VideoConfig(
    size=64, camera_size=128, train_clips=600, test_clips=100, epochs=4, views=1
)


def _demo_models(
    settings: Settings, bootstrap: str, embedded: object, wanted: bool, stats: _Stats
) -> None:
    """Train a demo risk model, then a demo inspection model (or reuse the ones an earlier
    demo trained with today's recipe, under STATE_DIR/demo-models/<recipe>), and publish
    each as a release: the demo's workers swap them in. Labelled demo (manifest and
    version): a worker without VIGIL_SERVE_DEMO_MODELS refuses them. Not for a model of
    the user's own (under the models path: the workers load it), nor on a configured
    cluster."""

    def note(text: str) -> None:
        with stats.lock:
            stats.models_note = text

    if not wanted:
        return
    if embedded is None:
        note("no demo models on a configured cluster (vigil train ... --publish)")
        return
    root = settings.state_dir / "demo-models" / _demo_recipe()
    shipped = {"inspection": latest_dir(SHIPPED_DEMO_MODELS, "inspection")}
    notes = []
    # trained in a process of their own: in this one they would share the GIL with the
    # publisher, the camera and the readers (5x slower, measured)
    spawn = multiprocessing.get_context("spawn")
    kinds = sorted((RISK, INSPECTION), key=lambda k: k.name not in shipped)  # ready first
    for kind in kinds:
        if kind.latest(settings.models_path) is not None:
            notes.append(f"{kind.name}: your model")
            continue
        path = kind.latest(root) or shipped.get(kind.name)
        try:
            if path is None:
                note(f"training a demo {kind.name} model (about 30 s) ...")
                with ProcessPoolExecutor(1, mp_context=spawn) as pool:
                    path = pool.submit(TRAIN_DEMO[kind.name], root).result()
            release = build_release(path, settings.release_signer())
            publish_release(bootstrap, settings.topics.models, release)
        except Exception as exc:  # the demo goes on with rules only / unclassified clips
            notes.append(f"{kind.name}: no demo model ({type(exc).__name__}: {exc})")
            continue
        notes.append(f"{kind.name}: demo model {release.version} published")
        note("; ".join(notes))
    note("; ".join(notes) + " · `vigil train risk|inspection` trains real ones")


def _demo_recipe() -> str:
    """A digest of what the demo models are trained from: an earlier demo's models are
    reused only while it holds (a changed recipe or feature spec trains them again)."""
    recipe = repr(
        (
            DEMO_STREAM,
            DEMO_RISK_DAYS,
            DEMO_RISK_HOLDOUT_DAYS,
            DEMO_RISK,
            DEMO_INSPECTION,
            FEATURE_SPEC.label,
        )
    )
    return hashlib.sha256(recipe.encode()).hexdigest()[:12]


def build_shipped_demo_inspection() -> Path:
    """Train the demo inspection model the package ships (DEMO_INSPECTION; 20 s alone,
    3 min beside the running demo on 2 cores: too slow for a first run) into
    models/inspection/demo/. Run it when the clip model's format changes:
    ``python -c "from vigil.apps.demo import build_shipped_demo_inspection as b; b()"``."""
    import shutil

    for old in SHIPPED_DEMO_MODELS.glob("inspection-*"):
        shutil.rmtree(old)
    root = SHIPPED_DEMO_MODELS.parent / ".build"
    path, _report = fit_inspection(DEMO_INSPECTION, root, print, DEMO_MANIFEST)
    target = SHIPPED_DEMO_MODELS / path.name
    shutil.move(path, target)
    shutil.rmtree(root)
    return target


def _quiet(_message: str) -> None:
    """Training progress: the live view is the demo's output."""


def _train_demo_risk(root: Path) -> Path:
    history = history_from_generator(DEMO_RISK_DAYS, stream=DEMO_STREAM)  # no warm-up
    path, _report, _test = fit_and_export(
        history, DEMO_RISK_HOLDOUT_DAYS, DEMO_RISK, root, _quiet, DEMO_MANIFEST
    )
    return path


def _train_demo_inspection(root: Path) -> Path:
    return fit_inspection(DEMO_INSPECTION, root, _quiet, DEMO_MANIFEST)[0]


TRAIN_DEMO = {RISK.name: _train_demo_risk, INSPECTION.name: _train_demo_inspection}


def _reader(bootstrap: str, topic: str, kind: str, stats: _Stats, stop: threading.Event) -> None:
    for _key, value, _ts in read_topic(
        bootstrap, topic, follow=True, from_end=True, idle_timeout_s=0.2, should_stop=stop.is_set
    ):
        if not isinstance(value, dict):
            continue
        with stats.lock:
            if kind in ("clips", "scores"):
                stats.serving["inspection" if kind == "clips" else "risk"] = str(
                    value.get("model_version")
                )
            if kind == "clips":
                stats.clips += 1
                sent = stats.frame_ms.pop(value.get("seq_end"), None)
                if sent is not None:
                    stats.clip_latencies_ms.append(int(value["processed_ms"]) - sent)
            elif kind == "defects":
                stats.defects += 1
                stats.recent_defects.append(value)
            elif kind == "scores":
                stats.scored += 1
                stats.scored_at.append(time.monotonic())
                sent = stats.publish_ms.pop(value.get("tx_id"), None)
                if sent is not None:
                    stats.latencies_ms.append(int(value["processed_ms"]) - sent)
            elif kind == "alerts":
                stats.alerts += 1
                stats.recent_alerts.append(value)
            else:
                stats.dlq += 1
