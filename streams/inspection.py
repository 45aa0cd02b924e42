"""The inspection pipeline on one micro-batch of frame records: decode -> per-camera
reorder -> clip windows -> alignment -> one classifier call for every clip of the batch,
whatever camera it comes from -> alerts.

Pure: no broker code. The worker (apps/inspection.py) feeds it raw records and acknowledges
what it hands back as done.

Delivery: a frame record is *done* once no future clip needs it: dead-lettered, dropped as
late or duplicate, or out of its camera's reorder buffer and clip window. The worker
commits only done records, so a restart redelivers every frame a pending clip still
needs. Clip windows start on ``seq`` multiples of the stride, so redelivered frames cut
the same clips, and an alert's id is derived from its camera, seq range and model
version: a redelivered alert repeats the same id (at-least-once, idempotent downstream).

Alerts: a camera's consecutive clips above the threshold are one *incident* (a defective
part passing under the camera is in view for several clips): the first clip raises the
alert, the rest count as ``suppressed``; ``quiet_clips`` clips below the threshold in a
row end the incident.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from vigil.streams.alignment import ClipWindows, ReorderBuffer, prepare_clip
from vigil.streams.frames import Frame, FrameError, decode_frame
from vigil.streams.schemas import (
    ClipScore,
    DeadLetter,
    InspectionAlert,
    RawRecord,
    dlq_counter,
)

__all__ = ["ClipModel", "InspectionPipeline", "InspectionResult", "clip_bbox"]

log = logging.getLogger(__name__)
DEFAULT_FRAMES = 8  # clip length without a model


class ClipModel(Protocol):
    version: str
    frames: int  # clip length T
    size: int  # input height and width
    grid: int  # location cells per side
    threshold: float
    camera_thresholds: dict[str, float]  # calibrated per camera (vigil inspection calibrate)

    def score(self, clips: np.ndarray) -> tuple[np.ndarray, np.ndarray]: ...


@dataclass
class InspectionResult:
    alerts: list[tuple[bytes, bytes]] = field(default_factory=list)  # (camera id, JSON)
    clips: list[tuple[bytes, bytes]] = field(default_factory=list)  # one per classified clip
    dead: list[tuple[bytes | None, bytes]] = field(default_factory=list)
    done: list[Any] = field(default_factory=list)  # refs of the records fully handled


@dataclass
class _Camera:
    reorder: ReorderBuffer
    windows: ClipWindows
    refs: dict[int, Any] = field(default_factory=dict)  # seq -> ref of a frame still needed
    incident: bool = False
    quiet: int = 0  # clips below the threshold since the incident's last positive one
    seen_s: float = 0.0  # monotonic time of the newest frame (for ``expire``)


def clip_bbox(cell: int, grid: int, height: int, width: int) -> list[int]:
    """A location cell as ``[x, y, w, h]`` in the pixels of a ``height x width`` frame."""
    row, col = divmod(int(cell), grid)
    x0, x1 = round(col * width / grid), round((col + 1) * width / grid)
    y0, y1 = round(row * height / grid), round((row + 1) * height / grid)
    return [x0, y0, x1 - x0, y1 - y0]


class InspectionPipeline:
    """Classifies clips of micro-batches of frame records. Counters: ``self.counters``."""

    def __init__(
        self,
        model: ClipModel | None = None,
        stride: int = 4,
        grace_ms: int = 50,
        align: str = "dis",
        threshold: float | None = None,
        quiet_clips: int = 2,
    ) -> None:
        self.model = model
        self.stride = stride
        self.grace_ms = grace_ms
        self.align = align
        self.threshold_override = threshold
        self.quiet_clips = quiet_clips
        self.cameras: dict[str, _Camera] = {}
        self.counters: Counter[str] = Counter()
        self.stage_seconds: Counter[str] = Counter()

    @property
    def threshold(self) -> float:
        """The alert threshold of a camera without one of its own."""
        if self.threshold_override is not None:
            return self.threshold_override
        return self.model.threshold if self.model is not None else 1.0

    @property
    def clip_frames(self) -> int:
        return self.model.frames if self.model is not None else DEFAULT_FRAMES

    def swap(self, model: ClipModel) -> None:
        """Serve ``model`` from the next batch on. A different clip length restarts every
        camera's window (frames already taken stay done)."""
        if self.model is None or model.frames != self.model.frames:
            for cam in self.cameras.values():
                cam.windows = ClipWindows(model.frames, self.stride)
        self.model = model

    def _camera(self, camera_id: str) -> _Camera:
        cam = self.cameras.get(camera_id)
        if cam is None:
            cam = _Camera(ReorderBuffer(self.grace_ms), ClipWindows(self.clip_frames, self.stride))
            self.cameras[camera_id] = cam
        return cam

    def process(
        self,
        records: Sequence[RawRecord],
        consumed_ms: int,
        refs: Sequence[Any] | None = None,
    ) -> InspectionResult:
        """One micro-batch; ``refs`` (default: the records) are what ``done`` hands back."""
        out = InspectionResult()
        refs = records if refs is None else refs
        t0 = time.perf_counter()
        clips: list[tuple[_Camera, list[Frame]]] = []
        touched: set[str] = set()
        for record, ref in zip(records, refs, strict=True):
            try:
                frame = decode_frame(record.key, record.value, record.headers)
            except FrameError as exc:
                letter = DeadLetter.of(record, str(exc), consumed_ms, "invalid")
                self.counters["dlq"] += 1
                self.counters[dlq_counter(letter.reason)] += 1
                out.dead.append((record.key, letter.model_dump_json().encode()))
                out.done.append(ref)
                continue
            self.counters["frames"] += 1
            cam = self._camera(frame.camera_id)
            cam.seen_s = time.monotonic()
            touched.add(frame.camera_id)
            dropped = cam.reorder.late + cam.reorder.duplicates
            released = cam.reorder.push(frame)
            if cam.reorder.late + cam.reorder.duplicates > dropped:
                out.done.append(ref)  # late or a duplicate: counted by the buffer, dropped
                continue
            cam.refs[frame.seq] = ref
            for f in released:
                clips += [(cam, clip) for clip in cam.windows.push(f)]
        t1 = time.perf_counter()
        self._classify(clips, out, consumed_ms)
        self.stage_seconds["decode"] += t1 - t0
        for camera_id in touched:
            self._release(self.cameras[camera_id], out)
        return out

    def expire(self, idle_s: float, consumed_ms: int) -> InspectionResult:
        """Cameras silent for ``idle_s``: their held frames are not waiting for anything
        any more (the stream ended or paused): release them, skipping the gaps."""
        out = InspectionResult()
        now = time.monotonic()
        clips = []
        for cam in self.cameras.values():
            if cam.reorder.held and now - cam.seen_s >= idle_s:
                for f in cam.reorder.flush():
                    clips += [(cam, clip) for clip in cam.windows.push(f)]
        self._classify(clips, out, consumed_ms)
        for cam in self.cameras.values():
            self._release(cam, out)
        return out

    def _classify(
        self, clips: list[tuple[_Camera, list[Frame]]], out: InspectionResult, consumed_ms: int
    ) -> None:
        if not clips:
            return
        model = self.model  # one model for the whole batch
        if model is None:
            self.counters["clips_unscored"] += len(clips)
            return
        t0 = time.perf_counter()
        batch = np.stack(
            [prepare_clip([f.image for f in clip], model.size, self.align) for _, clip in clips]
        )
        t1 = time.perf_counter()
        probs, cells = model.score(batch)
        t2 = time.perf_counter()
        self.stage_seconds["align"] += t1 - t0
        self.stage_seconds["classify"] += t2 - t1
        processed_ms = time.time_ns() // 1_000_000
        # a camera's calibrated threshold, else the model's; VIGIL_INSPECTION_THRESHOLD
        # (the override) for every camera
        default = self.threshold
        per_camera = model.camera_thresholds if self.threshold_override is None else {}
        self.counters["clips"] += len(clips)
        for (cam, clip), prob, cell in zip(clips, probs, cells, strict=True):
            score = float(prob)
            ref = clip[len(clip) // 2]
            camera_id = ref.camera_id
            alerted = False
            if score >= per_camera.get(camera_id, default):
                cam.quiet = 0
                if cam.incident:
                    self.counters["suppressed"] += 1
                else:
                    cam.incident = alerted = True
                    h, w = ref.image.shape[:2]
                    alert = InspectionAlert(
                        alert_id=_alert_id(camera_id, clip[0].seq, clip[-1].seq, model.version),
                        camera_id=camera_id,
                        seq_start=clip[0].seq,
                        seq_end=clip[-1].seq,
                        ts_ms=ref.ts_ms,
                        score=score,
                        bbox=clip_bbox(cell, model.grid, h, w),
                        model_version=model.version,
                        ref_seq=ref.seq,
                        cell=int(cell),
                        processed_ms=processed_ms,
                    )
                    out.alerts.append((camera_id.encode(), alert.model_dump_json().encode()))
                    self.counters["alerts"] += 1
            elif cam.incident:
                cam.quiet += 1
                if cam.quiet >= self.quiet_clips:
                    cam.incident = False
            record = ClipScore(
                camera_id=camera_id,
                seq_start=clip[0].seq,
                seq_end=clip[-1].seq,
                ts_ms=ref.ts_ms,
                score=score,
                alerted=alerted,
                model_version=model.version,
                consumed_ms=consumed_ms,
                processed_ms=processed_ms,
            )
            out.clips.append((camera_id.encode(), record.model_dump_json().encode()))

    def _release(self, cam: _Camera, out: InspectionResult) -> None:
        """Hand back the frames no future clip of this camera needs."""
        needed = set(cam.reorder.held)
        needed.update(f.seq for f in cam.windows.frames)
        for seq in [s for s in cam.refs if s not in needed]:
            out.done.append(cam.refs.pop(seq))

    def buffer_counts(self) -> dict[str, int]:
        """Reorder-buffer totals over the cameras: late, duplicates, gaps, held frames."""
        cams = self.cameras.values()
        return {
            "late": sum(c.reorder.late for c in cams),
            "duplicates": sum(c.reorder.duplicates for c in cams),
            "gaps": sum(c.reorder.gaps for c in cams),
            "held": sum(len(c.refs) for c in cams),
        }


def _alert_id(camera_id: str, seq_start: int, seq_end: int, version: str) -> str:
    return hashlib.sha256(f"{camera_id}:{seq_start}:{seq_end}:{version}".encode()).hexdigest()[:24]
