"""``vigil bench risk|inspection|features|scoring``: end-to-end throughput and latency of
the workers, and the in-process cost of their hot paths."""

from __future__ import annotations

import contextlib
import itertools
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console

from vigil.apps.broker import check_copartitioned, ensure_all
from vigil.apps.clients import publish, read_topic
from vigil.apps.kafka import make_producer
from vigil.apps.process import WorkerProcess, free_port
from vigil.apps.session import broker_for
from vigil.apps.settings import Settings
from vigil.errors import DataError, NotFoundError, VigilError
from vigil.streams.partitioning import partition_for
from vigil.streams.pipeline import now_ms
from vigil.streams.sources import GeneratorConfig, TransactionGenerator
from vigil.streams.topics import TopicNames

__all__ = [
    "BenchError",
    "scratch_namespace",
    "bench_features",
    "bench_hybrid",
    "bench_inspection",
    "bench_risk",
    "bench_scoring",
    "percentile",
]


class BenchError(VigilError, RuntimeError):
    """A benchmark that could not run to the end: workers that did not score, say."""


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (q in 0..100)."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return float(ordered[rank - 1])


@contextlib.contextmanager
def scratch_namespace(
    settings: Settings, say: Callable[..., None]
) -> Iterator[tuple[str, TopicNames, dict[str, str]]]:
    """A broker, a fresh namespace on it (counts are not mixed with earlier runs) and the
    environment of the workers under test: the model in the loop is the newest under the
    configured models directory."""
    namespace = f"{settings.namespace}-bench-{uuid.uuid4().hex[:8]}"
    topics = TopicNames(namespace)
    with broker_for(settings) as (bootstrap, embedded):
        say(f"broker {bootstrap}{' (embedded)' if embedded else ''}, namespace {namespace}")
        ensure_all(bootstrap, topics, settings.partitions, settings.replication_factor)
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        yield (
            bootstrap,
            topics,
            {
                "VIGIL_KAFKA_BOOTSTRAP": bootstrap,
                "VIGIL_NAMESPACE": namespace,
                "VIGIL_STATE_DIR": str(settings.state_dir / namespace),
                "VIGIL_MODEL_DIR": str(settings.models_path.resolve()),
                # served as in production (their cost is in the numbers), on free ports
                "VIGIL_RISK_METRICS_PORT": str(free_port()),
                "VIGIL_INSPECTION_METRICS_PORT": str(free_port()),
            },
        )


def _await_records(
    bootstrap: str,
    topic: str,
    n: int,
    timeout_s: float = 120.0,
    alive: Callable[[], bool] = lambda: True,
) -> int:
    """Read ``topic`` until ``n`` records (a warm-up's outputs), the timeout, or ``alive()``
    turning false; how many came."""
    deadline = time.monotonic() + timeout_s
    return sum(
        1
        for _ in read_topic(
            bootstrap,
            topic,
            follow=True,
            limit=n,
            should_stop=lambda: time.monotonic() > deadline or not alive(),
        )
    )


def bench_risk(
    settings: Settings,
    events: int,
    rate: float = 0.0,
    timeout_s: float = 300.0,
    seed: int = 7,
    workers: int = 1,
    console: Console | None = None,
) -> dict[str, Any]:
    say = console.print if console else (lambda *_a, **_k: None)
    with scratch_namespace(settings, say) as (bootstrap, topics, env):
        log_path = settings.state_dir / f"{topics.namespace}-worker.log"
        with contextlib.ExitStack() as stack:
            group = [
                stack.enter_context(
                    WorkerProcess(
                        "risk",
                        {**env, "VIGIL_RISK_METRICS_PORT": "0"} if i else env,  # one port
                        log_path.with_suffix(f".{i}.log") if i else log_path,
                    )
                )
                for i in range(workers)
            ]
            # Warm-up: one transaction per partition, whose scores prove every partition has
            # an owner (workers started together join the group in one generation)
            partitions = check_copartitioned(bootstrap, [topics.transactions])
            warm: dict[int, Any] = {}
            for g in TransactionGenerator(GeneratorConfig(seed=999, accounts=200)).take(2000):
                if g.tx is not None:
                    warm.setdefault(partition_for(g.key.encode(), partitions), g)
            # one producer for warm-up and run: its connection and idempotence handshake
            # (hundreds of ms) must not count as pipeline latency
            producer = make_producer(bootstrap)
            sent = publish(
                bootstrap,
                topics.transactions,
                [(g.key, g.value) for g in warm.values()],
                producer=producer,
            )
            if sent.failed:
                raise BenchError(f"{sent.failed} warm-up transactions were not delivered")
            got = _await_records(bootstrap, topics.scores, len(warm))
            if got < len(warm):
                raise BenchError(
                    f"workers scored {got} of {len(warm)} warm-up transactions within 120 s; "
                    f"see {log_path}"
                )
            say("worker ready; generating")
            gen = TransactionGenerator(GeneratorConfig(seed=seed))
            batch = [(g.key, g.value, g.tx["tx_id"]) for g in gen.take(events) if g.tx]
            publish_ms: dict[str, int] = {}
            ids = [tx_id for _k, _v, tx_id in batch]

            def sent(n: int, _value: bytes) -> None:
                publish_ms[ids[n - 1]] = now_ms()

            say(f"publishing {events} transactions")
            publish(
                bootstrap,
                topics.transactions,
                ((k, v) for k, v, _ in batch),
                rate,
                on_sent=sent,
                producer=producer,
            )
            scored: dict[str, dict[str, Any]] = {}
            deadline = time.monotonic() + timeout_s
            for _k, value, _ts in read_topic(
                bootstrap,
                topics.scores,
                follow=True,
                should_stop=lambda: (
                    len(scored) >= events
                    or time.monotonic() > deadline
                    or not all(w.running for w in group)
                ),
            ):
                if isinstance(value, dict) and value.get("tx_id") in publish_ms:
                    scored.setdefault(value["tx_id"], value)
            alerts = sum(
                1
                for _k, value, _ts in read_topic(bootstrap, topics.alerts)
                if isinstance(value, dict) and value.get("tx_id") in publish_ms
            )
            dlq = sum(1 for _ in read_topic(bootstrap, topics.dlq))
    latencies = [float(r["processed_ms"] - publish_ms[t]) for t, r in scored.items()]
    waits = [float(r["consumed_ms"] - publish_ms[t]) for t, r in scored.items()]
    span_ms = max((r["processed_ms"] for r in scored.values()), default=0) - min(
        (r["consumed_ms"] for r in scored.values()), default=0
    )
    return {
        "events": events,
        "scored": len(scored),
        "alerts": alerts,
        "dlq": dlq,
        "tps": round(len(scored) / (span_ms / 1000), 1) if span_ms > 0 else None,
        "p50_ms": percentile(latencies, 50),
        "p99_ms": percentile(latencies, 99),
        "consume_wait_p50_ms": percentile(waits, 50),
        "consume_wait_p99_ms": percentile(waits, 99),
        # from the worker taking the batch to its outputs: the pipeline's own latency
        "process_p99_ms": percentile(
            [float(r["processed_ms"] - r["consumed_ms"]) for r in scored.values()], 99
        ),
        "timed_out": len(scored) < events,
        "model_versions": sorted({r["model_version"] for r in scored.values()}),
        # p99 by tenth of the run (in publish order): where the slow records are
        "p99_ms_by_tenth": _by_tenth(ids, publish_ms, scored),
    }


def _by_tenth(ids: list[str], publish_ms: dict[str, int], scored: dict[str, dict]) -> list:
    done = [t for t in ids if t in scored and t in publish_ms]
    out = []
    for k in range(10):
        part = done[k * len(done) // 10 : (k + 1) * len(done) // 10]
        lat = [float(scored[t]["processed_ms"] - publish_ms[t]) for t in part]
        out.append(percentile(lat, 99) if lat else None)
    return out


def bench_features(events: int = 50_000, batch: int = 1000, seed: int = 7) -> dict[str, Any]:
    """Cost per transaction of the risk pipeline in micro-batches, in-process on one core (no
    broker, no faust): features + ruleset, the whole pipeline, and each stage."""
    from vigil.streams.features.library import FEATURE_SPEC
    from vigil.streams.pipeline import RiskPipeline, fewer_collections
    from vigil.streams.schemas import RawRecord

    gen = TransactionGenerator(GeneratorConfig(seed=seed)).take(events)
    records = [RawRecord("bench", 0, i, g.key.encode(), g.value) for i, g in enumerate(gen)]
    pipeline = RiskPipeline()
    store: dict[str, Any] = {}
    # the collector as the worker sets it (apps.worker): under Python's defaults, full
    # collections walking every kept state cost a third more (95 against 64 us per
    # transaction at lib-7), which the worker never pays
    with fewer_collections():
        start = time.perf_counter()
        for i in range(0, len(records), batch):
            pipeline.process_local(records[i : i + batch], store)
        elapsed_s = time.perf_counter() - start
    stages = {k: round(v / events * 1e6, 2) for k, v in pipeline.stage_seconds.items()}
    metrics_us = _metrics_us_per_tx(batch)
    return {
        "events": events,
        "batch": batch,
        "features": len(FEATURE_SPEC.names),
        "feature_spec": FEATURE_SPEC.label,
        "rules": len(pipeline.ruleset.rules),
        "ruleset": pipeline.ruleset.label,
        # the measure: all features plus the ruleset, per transaction
        "features_rules_us_per_tx": round(stages["features"] + stages["rules"], 2),
        # the whole in-process pipeline: decode, state load/save, features, rules, outputs
        "us_per_tx": round(elapsed_s / events * 1e6, 2),
        "stage_us_per_tx": stages,
        "tx_per_s": round(events / elapsed_s, 1),
        # what the worker's metrics add per transaction (BatchWatch.batch, once a batch),
        # measured here beside the pipeline: its share of the cost
        "metrics_us_per_tx": metrics_us,
        "metrics_share": round(metrics_us / (elapsed_s / events * 1e6), 5),
    }


def _metrics_us_per_tx(batch: int, repeats: int = 7) -> float:
    """CPU per transaction of the risk worker's metrics work on a batch of ``batch``
    consumed records (the fields the worker reads of faust's events), best of
    ``repeats``: the only metrics work on the per-event path."""
    from types import SimpleNamespace

    from vigil.apps.worker import BatchWatch

    topic = "vigil.transactions"
    watch = BatchWatch("risk", [topic])
    now_s = time.time()
    events = [
        SimpleNamespace(
            message=SimpleNamespace(topic=topic, partition=i % 4, offset=i, timestamp=now_s - 0.05)
        )
        for i in range(batch)
    ]
    rounds = max(20, 200_000 // batch)
    best = float("inf")
    for _ in range(repeats):
        start = time.process_time()
        for _ in range(rounds):
            watch.batch(events, 0.01)
        best = min(best, (time.process_time() - start) / rounds)
    return round(best / batch * 1e6, 3)


def bench_scoring(
    settings: Settings, model_dir: Path | None = None, batch: int = 1024, seconds: float = 3.0
) -> dict[str, Any]:
    """Hybrid ONNX scoring on one core (one ONNX Runtime thread per session): rows/s at
    ``batch`` rows per call and the latency of a single row. Rows: the featurised synthetic
    population, as the worker sees it."""
    from vigil.models.kinds import RISK
    from vigil.models.risk import history_from_generator
    from vigil.models.serving import HybridScorer
    from vigil.streams.features.library import FEATURE_SPEC

    if model_dir is not None:
        scorer = HybridScorer.load(model_dir, FEATURE_SPEC.label)
    else:
        scorer = RISK.load_latest(settings.models_path)
        if scorer is None:
            raise NotFoundError(f"no model under {settings.models_path}: run `vigil train risk`")
    rows = history_from_generator(days=3, seed=11).features
    x = np.resize(rows, (max(batch, len(rows)), rows.shape[1]))[:batch]
    scorer.score_batch(x)  # warm-up
    calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        scorer.score_batch(x)
        calls += 1
    elapsed = time.perf_counter() - start
    single = []
    for i in range(2000):
        t = time.perf_counter()
        scorer.score_batch(rows[i % len(rows)][None, :])
        single.append((time.perf_counter() - t) * 1e6)
    return {
        "model_version": scorer.version,
        "batch": batch,
        "rows_per_s": round(calls * batch / elapsed, 1),
        "batch_ms": round(elapsed / calls * 1000, 3),
        "batch1_p50_us": round(percentile(single, 50), 1),
        "batch1_p99_us": round(percentile(single, 99), 1),
        "threads": 1,
    }


def bench_hybrid(
    histories: int = 10,
    seed: int = 7,
    days: int = 21,
    holdout_days: float = 6.0,
    accounts: int = 1000,
    jobs: int = 1,
    say: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Does the hybrid earn its place across histories, not just on one? ``vigil train
    risk``'s evaluation on ``histories`` independent synthetic histories (seeds ``seed``,
    ``seed + 1``, ...: population, cases and training seed), each trained and evaluated
    from scratch: per history the four models' held-out AUC-PR, and for each baseline the
    hybrid's mean lead over the histories with its interval (``paired_summary``), by AUC-PR
    and by log-loss (``hybrid_log_loss_vs``, the baseline's minus the hybrid's). One
    6-day hold-out holds about 1,000 positives, and its interval alone is about +-0.0007."""
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from multiprocessing import get_context

    from vigil.models.metrics import paired_summary

    seeds = list(range(seed, seed + histories))
    rows: dict[int, dict[str, Any]] = {}
    # spawned processes (not forked: torch and ONNX Runtime hold threads); each is
    # deterministic with one torch thread, so --jobs changes the time, not the numbers
    with ProcessPoolExecutor(max_workers=jobs, mp_context=get_context("spawn")) as pool:
        futures = [pool.submit(_evaluate_history, s, days, holdout_days, accounts) for s in seeds]
        for future in as_completed(futures):
            row = future.result()
            rows[row["seed"]] = row
            lead = row["hybrid_vs"]["lightgbm"]
            say(
                f"history {row['seed']} ({len(rows)}/{histories}): hybrid "
                f"{row['auc_pr']['hybrid']:.4f}, LightGBM {row['auc_pr']['lightgbm']:.4f} "
                f"({lead:+.4f}), NN {row['auc_pr']['nn']:.4f}"
            )
    ordered = [rows[s] for s in seeds]
    baselines = list(ordered[0]["hybrid_vs"])
    return {
        "histories": histories,
        "days": days,
        "holdout_days": holdout_days,
        "accounts": accounts,
        "runs": ordered,
        "hybrid_vs": {
            name: paired_summary([r["hybrid_vs"][name] for r in ordered], seed=seed)
            for name in baselines
        },
        # lower log-loss is better: the lead is the baseline's minus the hybrid's
        "hybrid_log_loss_vs": {
            name: paired_summary(
                [r["log_loss"][name] - r["log_loss"]["hybrid"] for r in ordered], seed=seed
            )
            for name in ordered[0]["log_loss"]
            if name != "hybrid"
        },
    }


def _evaluate_history(seed: int, days: int, holdout_days: float, accounts: int) -> dict:
    """One history of ``bench_hybrid``: generate, then train and evaluate as `vigil train
    risk` does."""
    from vigil.models.risk import (
        WARMUP_DAYS,
        TabularConfig,
        fit_and_evaluate,
        history_from_generator,
    )

    history = history_from_generator(days, seed=seed, accounts=accounts, warmup_days=WARMUP_DAYS)
    try:
        _model, report, _test = fit_and_evaluate(
            history, holdout_days, TabularConfig(seed=seed), say=lambda _m: None
        )
    except ValueError as exc:
        raise DataError(f"history {seed}: {exc}") from None
    return {
        "seed": seed,
        "rows": report["rows"],
        "positives": report["positives"],
        "auc_pr": {name: m["auc_pr"] for name, m in report["models"].items()},
        "hybrid_vs": {name: d["difference"] for name, d in report["hybrid_vs"].items()},
        "log_loss": {
            name: m["calibration"]["log_loss"]
            for name, m in report["models"].items()
            if m["calibration"] is not None
        },
    }


def bench_inspection(
    settings: Settings,
    cameras: int = 2,
    fps: float = 100.0,
    seconds: float = 20.0,
    size: int = 128,
    codec: str = "png",
    timeout_s: float = 120.0,
    console: Console | None = None,
    images: Path | None = None,
) -> dict[str, Any]:
    """The inspection worker end to end: ``cameras`` simulated cameras publish ``size``
    grey frames at ``fps`` each for ``seconds`` (their parts: the procedural textures, or
    the user's ``images``); measured from the worker's clip records: frames/s and clips/s
    it sustained, and the latency from a clip's last frame being published to its
    classification (an alert, when there is one, goes out with it)."""
    from vigil.models.kinds import INSPECTION
    from vigil.streams.frames import encode_frame
    from vigil.streams.sources.camera import CameraConfig, CameraSimulator

    say = console.print if console else (lambda *_a, **_k: None)
    model = INSPECTION.load_latest(settings.models_path)
    if model is None:
        raise NotFoundError(
            f"no inspection model under {settings.models_path / 'inspection'}: "
            "run `vigil train inspection`"
        )
    per_camera = int(round(fps * seconds))
    parts = None
    if images is not None:
        from vigil.models.inspection.images import ImageParts, load_parts, scan_images

        parts = ImageParts(load_parts(scan_images(images).images, []), order="line")
    sim = CameraSimulator(
        CameraConfig.framed(size, fill=images is not None, seed=3, fps=fps),
        parts,
    )
    say(f"simulating {cameras} x {per_camera} frames ({size}x{size}, {codec})")
    lines = [sim.frames(f"bench-cam-{i}", i) for i in range(cameras)]
    shots = [next(line).frame for _ in range(per_camera) for line in lines]  # interleaved
    ids = [(f.camera_id, f.seq) for f in shots]
    frames = [encode_frame(f, codec) for f in shots]
    del shots
    stride = settings.inspection_stride
    want_clips = cameras * ((per_camera - model.frames) // stride + 1)
    with scratch_namespace(settings, say) as (bootstrap, topics, env):
        log_path = settings.state_dir / f"{topics.namespace}-inspection.log"
        with WorkerProcess("inspection", env, log_path) as worker:
            producer = make_producer(bootstrap)
            # warm-up: one clip from a camera of its own proves the worker is up
            warm_sim = CameraSimulator(CameraConfig.framed(size, seed=4))
            warm = [
                encode_frame(s.frame, codec)
                for s in itertools.islice(warm_sim.frames("bench-warm-up"), model.frames)
            ]
            publish(bootstrap, topics.frames, warm, producer=producer)
            got = _await_records(
                bootstrap, topics.inspection_clips, 1, alive=lambda: worker.running
            )
            if not got:
                raise BenchError(
                    f"the inspection worker classified no clip in 120 s; see {log_path}"
                )
            say(f"worker ready (model {model.version}); publishing for {seconds:g} s")
            publish_ms: dict[tuple[str, int], int] = {}

            def sent(n: int, _value: bytes) -> None:
                publish_ms[ids[n - 1]] = now_ms()

            publish(
                bootstrap,
                topics.frames,
                frames,
                fps * cameras,
                on_sent=sent,
                producer=producer,
            )
            clips: list[dict[str, Any]] = []
            deadline = time.monotonic() + timeout_s
            for _k, value, _ts in read_topic(
                bootstrap,
                topics.inspection_clips,
                follow=True,
                should_stop=lambda: (
                    len(clips) >= want_clips or time.monotonic() > deadline or not worker.running
                ),
            ):
                if isinstance(value, dict) and value.get("camera_id", "").startswith("bench-cam"):
                    clips.append(value)
            alerts = sum(
                1
                for _k, value, _ts in read_topic(bootstrap, topics.inspection_alerts)
                if isinstance(value, dict) and value.get("camera_id", "").startswith("bench-cam")
            )
            del producer  # closed while the broker is still up
    latencies = [
        float(c["processed_ms"] - publish_ms[(c["camera_id"], c["seq_end"])])
        for c in clips
        if (c["camera_id"], c["seq_end"]) in publish_ms
    ]
    first_ms = min(publish_ms.values(), default=0)
    last_ms = max((c["processed_ms"] for c in clips), default=first_ms)
    span_s = max(last_ms - first_ms, 1) / 1000
    frames_done = sum(c["seq_end"] + 1 for c in _last_clip_per_camera(clips))
    return {
        "cameras": cameras,
        "fps_per_camera": fps,
        "seconds": seconds,
        "size": f"{size}x{size}",
        "codec": codec,
        "model_version": model.version,
        "model_input": f"{model.frames}x{model.size}x{model.size}",
        "frames_published": len(frames),
        "clips": len(clips),
        "clips_expected": want_clips,
        "alerts": alerts,
        # from the first frame published to the last clip classified
        "frames_per_s": round(frames_done / span_s, 1),
        "clips_per_s": round(len(clips) / span_s, 1),
        "publish_rate": fps * cameras,
        "latency_p50_ms": percentile(latencies, 50),
        "latency_p99_ms": percentile(latencies, 99),
        "latency_max_ms": max(latencies, default=float("nan")),
        "timed_out": len(clips) < want_clips,
    }


def _last_clip_per_camera(clips: list[dict[str, Any]]) -> list[dict[str, Any]]:
    last: dict[str, dict[str, Any]] = {}
    for c in clips:
        if c["seq_end"] > last.get(c["camera_id"], {"seq_end": -1})["seq_end"]:
            last[c["camera_id"]] = c
    return list(last.values())


def bench_calibration(
    settings: Settings,
    model_dir: Path | None = None,
    seconds: float = 30.0,
    max_fpr: float = 0.01,
    test_clips: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Calibration on textures the model never saw (``FRESH_TEXTURES``), one camera per
    texture: the camera's clean frames over ``seconds`` (100 fps, clips cut as the worker
    cuts them) set its threshold at ``max_fpr`` (what `vigil inspection calibrate` does);
    false alarms and recall before and after, on ``test_clips`` other clips of that
    texture (half with a defect), scored by ONNX Runtime as the worker scores them."""
    from vigil.models.inspection import VideoConfig, make_clips, pick_threshold
    from vigil.models.kinds import INSPECTION
    from vigil.models.serving import ClipScorer
    from vigil.streams.sources.camera import FRESH_TEXTURES, CameraConfig

    path = model_dir or INSPECTION.latest(settings.models_path)
    if path is None:
        raise NotFoundError(
            f"no inspection model under {settings.models_path / 'inspection'}: train one "
            "(vigil train inspection) or give --model"
        )
    scorer = ClipScorer.load(Path(path))
    cfg = VideoConfig(**scorer.manifest["config"])
    step = cfg.frames // 2  # make_clips cuts a clip every half clip, as the worker does
    calibration_clips = int((seconds * CameraConfig().fps - cfg.frames) // step + 1)
    out: dict[str, Any] = {
        "model": scorer.version,
        "seconds": seconds,
        "calibration_clips": calibration_clips,
        "max_fpr": max_fpr,
        "threshold_before": round(scorer.threshold, 6),
    }
    for i, texture in enumerate(FRESH_TEXTURES):
        clean = make_clips(
            calibration_clips, cfg, (texture,), seed + 7000 + i, positive_share=0.0, belt=True
        )
        threshold = pick_threshold(clean.labels, scorer.score(clean.clips)[0], max_fpr)
        test = make_clips(test_clips, cfg, (texture,), seed + 9000 + i, belt=True)
        scores = scorer.score(test.clips)[0]
        positive = test.labels.astype(bool)
        row = {}
        for name, t in (("before", scorer.threshold), ("after", threshold)):
            alerted = scores >= t
            row[name] = {
                "threshold": round(float(t), 6),
                "false_alarms": round(float(alerted[~positive].mean()), 4),
                "recall": round(float(alerted[positive].mean()), 4),
            }
        out[texture] = row
    return out
