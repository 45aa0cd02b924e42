"""Inspection worker: a faust app wiring ``vigil.frames`` through the inspection pipeline
(streams.inspection) to ``vigil.inspection.alerts``.

Per micro-batch (frames of every camera this worker owns): decode, reorder, cut clips,
align and classify them in one ONNX Runtime call, produce alerts, clip scores and dead
letters, wait until the broker has them, then acknowledge the frames no pending clip
needs. Frames still held (in a reorder buffer or an open clip window) stay unacknowledged,
so the committed offset never passes them: a crash or rebalance redelivers them and the
same clips are cut again (clip windows start on seq multiples of the stride).

The heavy part (alignment, classification) runs in a thread so the event loop keeps
fetching and heart-beating meanwhile; one lock serialises batches and the idle-camera
timer. Without an inspection model the worker still orders frames and cuts clips, counts
them as unscored and says so: train one with ``vigil train inspection``. Model releases
on ``vigil.models`` (apps.follower) are swapped in under the same lock, so between two
batches.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import faust

from vigil.apps.broker import check_copartitioned, ensure_all, resolve_bootstrap
from vigil.apps.follower import ModelFollower
from vigil.apps.settings import Settings
from vigil.apps.worker import Outputs, Watch, exit_on_error, faust_app, raw_records, run_app
from vigil.models.kinds import INSPECTION
from vigil.models.registry import Limits, Release, ReleaseError
from vigil.models.serving import ClipScorer, ModelError
from vigil.streams.inspection import InspectionPipeline, InspectionResult
from vigil.streams.pipeline import now_ms

__all__ = ["create_app", "run_worker"]

log = logging.getLogger("vigil.inspection")
STATS_EVERY_S = 10.0


def create_app(settings: Settings, bootstrap: str | None = None) -> faust.App:
    bootstrap = bootstrap or resolve_bootstrap(settings)
    topics = settings.topics
    ensure_all(bootstrap, topics, settings.partitions, settings.replication_factor)
    partitions = check_copartitioned(bootstrap, [topics.frames])
    # frames held for a pending clip are never acknowledged before a rebalance or shutdown:
    # do not wait for them (their offsets are not committed; they are redelivered)
    app = faust_app(
        settings,
        bootstrap,
        "inspection",
        partitions,
        settings.inspection_batch_size,
        wait_empty=False,
    )
    source = app.topic(
        topics.frames,
        key_type=bytes,
        value_type=bytes,
        key_serializer="raw",
        value_serializer="raw",
        partitions=partitions,
    )
    pipeline = InspectionPipeline(
        stride=settings.inspection_stride,
        grace_ms=settings.inspection_grace_ms,
        align=settings.inspection_align,
        threshold=settings.inspection_threshold,
    )
    try:
        model = INSPECTION.load_latest(settings.models_path)
    except ModelError as exc:
        log.error("inspection model refused: %s; clips are cut but not classified", exc)
    else:
        if model is None:
            log.warning(
                "no inspection model under %s: clips are cut but not classified "
                "(train one: vigil train inspection)",
                INSPECTION.directory(settings.models_path),
            )
        else:
            pipeline.swap(model)
            log.info(
                "inspection model %s (%d frames, %dx%d, threshold %.4f)",
                model.version,
                model.frames,
                model.size,
                model.size,
                pipeline.threshold,
            )
    outputs = Outputs(bootstrap)
    lock = asyncio.Lock()
    streams: list[faust.StreamT] = []  # the agent's stream, for the idle timer's acks
    loops: list[asyncio.AbstractEventLoop] = []  # the app's loop, for the follower's swaps

    async def swap(model: ClipScorer) -> None:
        async with lock:  # between two batches
            pipeline.swap(model)

    def install(model: ClipScorer, _release: Release | None) -> None:
        # called in the follower's thread: wait until the swap is done, so it logs the truth
        asyncio.run_coroutine_threadsafe(swap(model), loops[0]).result()

    follower = ModelFollower(
        bootstrap,
        topics.models,
        "inspection",
        settings.release_trusted(),
        check_spec=_check_clip_spec,
        install=install,  # type: ignore[arg-type]
        serving=lambda: pipeline.model.version if pipeline.model else "none",
        counters=pipeline.counters,
        limits=Limits(release_bytes=settings.max_release_bytes),
        serve_demo=settings.serve_demo_models,
    )

    counted: dict[str, float] = {}  # the last counts read (see counts)

    def counts() -> dict[str, float]:
        """The pipeline's counters and its reorder buffers' (late, duplicates, gaps): read
        while a batch may run in the executor's thread, so a read that meets a camera being
        added keeps the last counts."""
        try:
            buffers = pipeline.buffer_counts()
        except RuntimeError:  # the cameras changed while read
            return counted
        buffers.pop("held")  # a level, not a count
        counted.clear()
        counted.update({**pipeline.counters, **buffers})
        return counted

    def ready() -> tuple[bool, str]:
        """``/readyz``: partitions of the frames topic assigned (without a model the
        worker still cuts clips, unscored, and says so)."""
        mine = sorted(tp.partition for tp in app.consumer.assignment() if tp.topic == topics.frames)
        if not mine or not streams:
            return False, f"no partition of {topics.frames} assigned to this worker yet"
        model = pipeline.model.version if pipeline.model else "none (clips unscored)"
        return True, f"ready: partitions {mine} of {topics.frames}; model {model}"

    watch = Watch(
        app,
        "inspection",
        settings,
        settings.inspection_metrics_port,
        counts,
        ready,
        info=lambda: {"model": {"version": pipeline.model.version if pipeline.model else "none"}},
        lag_topics=[topics.frames],
        latency_topics=[topics.frames],
    )

    @app.task
    async def follow_models() -> None:
        loops.append(asyncio.get_running_loop())
        follower.start()

    @app.on_before_shutdown.connect
    async def stop_following(*_args: Any, **_kwargs: Any) -> None:
        follower.stop()

    async def deliver(stream: faust.StreamT, result: InspectionResult) -> None:
        outputs.produce(topics.inspection_alerts, result.alerts)
        outputs.produce(topics.inspection_clips, result.clips)
        outputs.produce(topics.dlq, result.dead)
        await outputs.flush()  # outputs durable before their frames are acknowledged
        for event in result.done:
            await stream.ack(event)

    @app.agent(source)
    async def inspect(stream: faust.StreamT) -> None:
        streams.append(stream)
        loop = asyncio.get_running_loop()
        within_s = settings.inspection_batch_wait_ms / 1000
        # noack_take: a frame is acknowledged once no clip needs it (see module notes)
        async for events in stream.noack_take(settings.inspection_batch_size, within=within_s):
            consumed_ms = now_ms()
            records = raw_records(events)
            async with lock, exit_on_error(len(events)):
                started = time.perf_counter()
                result = await loop.run_in_executor(
                    None, pipeline.process, records, consumed_ms, events
                )
                await deliver(stream, result)
                watch.batch(events, time.perf_counter() - started)

    @app.timer(settings.inspection_idle_ms / 1000)
    async def release_idle() -> None:
        if not streams:
            return
        async with lock, exit_on_error(0):
            result = await asyncio.get_running_loop().run_in_executor(
                None, pipeline.expire, settings.inspection_idle_ms / 1000, now_ms()
            )
            await deliver(streams[0], result)

    @app.timer(STATS_EVERY_S)
    async def report() -> None:
        c = pipeline.counters
        b = pipeline.buffer_counts()
        log.info(
            "frames=%d clips=%d unscored=%d alerts=%d suppressed=%d dlq=%d late=%d "
            "duplicates=%d gaps=%d held=%d cameras=%d model=%s model_swaps=%d model_refused=%d",
            c["frames"],
            c["clips"],
            c["clips_unscored"],
            c["alerts"],
            c["suppressed"],
            c["dlq"],
            b["late"],
            b["duplicates"],
            b["gaps"],
            b["held"],
            len(pipeline.cameras),
            pipeline.model.version if pipeline.model else "none",
            c["model_swaps"],
            c["model_refused"],
        )
        if pipeline.stage_seconds:
            log.info(
                "seconds: %s",
                " ".join(f"{k}={v:.2f}" for k, v in sorted(pipeline.stage_seconds.items())),
            )

    app.pipeline = pipeline  # type: ignore[attr-defined]  # for in-process inspection
    return app


def _check_clip_spec(spec: dict) -> None:
    """The pipeline feeds grey clips (one channel) of any length and size: the model's
    manifest says which, and the pipeline follows it."""
    shape = spec.get("clip")
    if not (isinstance(shape, list) and len(shape) == 5 and shape[1] == 1):
        raise ReleaseError(f"input {shape!r} is not a batch of one-channel clips (N,1,T,H,W)")


def run_worker(settings: Settings) -> None:
    """Run the inspection worker until SIGINT/SIGTERM."""
    run_app(create_app(settings), settings)
