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
them as unscored and says so: train one with ``vigil train inspection``.
"""

from __future__ import annotations

import asyncio
import logging

import faust

from apps.broker import check_copartitioned, ensure_topics, resolve_bootstrap
from apps.kafka import make_producer
from apps.settings import Settings
from apps.worker import Outputs, faust_app, run_app
from models.serving import ModelError, load_latest_clip
from streams.inspection import InspectionPipeline, InspectionResult
from streams.pipeline import now_ms
from streams.schemas import RawRecord

__all__ = ["create_app", "run_worker"]

log = logging.getLogger("vigil.inspection")
STATS_EVERY_S = 10.0


def create_app(settings: Settings, bootstrap: str | None = None) -> faust.App:
    bootstrap = bootstrap or resolve_bootstrap(settings)
    topics = settings.topics
    ensure_topics(bootstrap, topics.all(settings.partitions))
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
        model = load_latest_clip(settings.models_path)
    except ModelError as exc:
        log.error("inspection model refused: %s; clips are cut but not classified", exc)
    else:
        if model is None:
            log.warning(
                "no inspection model under %s: clips are cut but not classified "
                "(train one: vigil train inspection)",
                settings.models_path / "inspection",
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
    outputs = Outputs(make_producer(bootstrap))
    lock = asyncio.Lock()
    streams: list[faust.StreamT] = []  # the agent's stream, for the idle timer's acks

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
            records = [
                RawRecord(
                    ev.message.topic,
                    ev.message.partition,
                    ev.message.offset,
                    ev.key,
                    ev.value,
                    tuple(ev.message.headers or ()),
                )
                for ev in events
            ]
            async with lock:
                result = await loop.run_in_executor(
                    None, pipeline.process, records, consumed_ms, events
                )
                await deliver(stream, result)

    @app.timer(settings.inspection_idle_ms / 1000)
    async def release_idle() -> None:
        if not streams:
            return
        async with lock:
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
            "duplicates=%d gaps=%d held=%d cameras=%d model=%s",
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
        )
        if pipeline.stage_seconds:
            log.info(
                "seconds: %s",
                " ".join(f"{k}={v:.2f}" for k, v in sorted(pipeline.stage_seconds.items())),
            )

    app.pipeline = pipeline  # type: ignore[attr-defined]  # for in-process inspection
    return app


def run_worker(settings: Settings) -> None:
    """Run the inspection worker until SIGINT/SIGTERM."""
    run_app(create_app(settings), settings)
