"""A camera's own alert threshold (``vigil inspection calibrate``): the inspection model in
service scores a stretch of that camera's frames on ``vigil.frames`` (defect-free, as the
operator vouches), the threshold is set where at most the target share of those clips
would alert, and the model is released again with it (``thresholds.json`` among its files:
a new version, signed like any release); running workers swap it in.

The clips are cut as the worker cuts them (consecutive frames, starting on multiples of
the stride) and prepared the same way (the model's size, the worker's alignment)."""

from __future__ import annotations

import json
import time
from collections import Counter
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from vigil.apps.clients import camera_frames, read_messages
from vigil.apps.releases import publish_release, read_releases
from vigil.apps.settings import Settings
from vigil.errors import DataError, UsageError
from vigil.models.inspection.evaluate import threshold_on_clean
from vigil.models.kinds import INSPECTION
from vigil.models.registry import GOLDEN, build_release
from vigil.models.serving import (
    THRESHOLDS_FILE,
    ClipScorer,
    read_files,
    read_manifest,
    write_model,
)
from vigil.streams.alignment import ClipWindows, prepare_clip
from vigil.streams.frames import Frame

__all__ = ["MIN_CLIPS", "Calibration", "calibrate", "serving_model"]

MIN_CLIPS = 50  # fewer clean clips say too little about a rate of 1 in 100


@dataclass
class Calibration:
    camera: str
    seconds: float
    frames: int  # of the camera in the stretch (decodable)
    undecodable: int
    clips: int
    max_fpr: float
    model_version: str  # the model calibrated
    threshold_before: float  # the camera's threshold under it
    false_alarms_before: float  # share of the stretch's clips at or above it
    threshold: float  # the camera's new threshold
    version: str | None = None  # the released model with it (None: not released)
    model_dir: str | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def serving_model(settings: Settings, bootstrap: str) -> tuple[dict[str, bytes], dict]:
    """The inspection model the workers serve: the newest verified release on the models
    topic, else the newest under the models path. Its files (golden batch left out) and
    manifest; UsageError when there is none."""
    log = read_releases(bootstrap, settings.topics.models, settings.release_trusted())
    release = log.latest(INSPECTION.name)
    if release is not None:
        files = {k: v for k, v in release.files().items() if k != GOLDEN}
        return files, release.manifest["model"]
    path = INSPECTION.latest(settings.models_path)
    if path is None:
        raise UsageError(
            f"no inspection model on {settings.topics.models} or under "
            f"{INSPECTION.directory(settings.models_path)}: train one (vigil train inspection)"
        )
    manifest = read_manifest(path)
    return read_files(path, manifest), manifest


def camera_clips(
    bootstrap: str,
    topic: str,
    camera: str,
    since_ms: int,
    frames: int,
    stride: int,
    size: int,
    align: str,
) -> tuple[np.ndarray, int, int]:
    """The camera's clips from ``since_ms`` on (as the worker cuts them), the number of
    its frames and of those that did not decode."""
    shots: dict[int, Frame] = {}
    counts: Counter[str] = Counter()
    for frame in camera_frames(read_messages(bootstrap, topic, since_ms=since_ms), camera, counts):
        shots.setdefault(frame.seq, frame)  # a redelivered frame once
    windows = ClipWindows(frames, stride)
    clips = [
        prepare_clip([f.image for f in clip], size, align)
        for seq in sorted(shots)
        for clip in windows.push(shots[seq])
    ]
    stacked = np.stack(clips) if clips else np.zeros((0, 1, frames, size, size), np.float32)
    return stacked, len(shots), counts["undecodable"]


def calibrate(
    settings: Settings,
    bootstrap: str,
    camera: str,
    seconds: float,
    max_fpr: float,
    release: bool = True,
) -> Calibration:
    """Calibrate ``camera``'s threshold on its last ``seconds`` of frames; with
    ``release``, write the model with it under the models path and publish it, signed.
    DataError when the stretch holds fewer than ``MIN_CLIPS`` clips."""
    if not 0 < max_fpr < 1:
        raise UsageError(f"the false-alarm rate is a share between 0 and 1, not {max_fpr}")
    files, manifest = serving_model(settings, bootstrap)
    scorer = ClipScorer.from_bytes(files, manifest)
    since_ms = time.time_ns() // 1_000_000 - int(seconds * 1000)
    clips, n_frames, bad = camera_clips(
        bootstrap,
        settings.topics.frames,
        camera,
        since_ms,
        scorer.frames,
        settings.inspection_stride,
        scorer.size,
        settings.inspection_align,
    )
    if len(clips) < MIN_CLIPS:
        raise DataError(
            f"camera {camera!r}: {len(clips)} clips in the last {seconds:g} s of "
            f"{settings.topics.frames} ({n_frames} frames), at least {MIN_CLIPS} needed: "
            "run the camera on defect-free parts longer, or give more --seconds"
        )
    scores, _cells = scorer.score(clips)
    before = scorer.camera_thresholds.get(camera, scorer.threshold)
    threshold = threshold_on_clean(scores, max_fpr)
    out = Calibration(
        camera=camera,
        seconds=seconds,
        frames=n_frames,
        undecodable=bad,
        clips=len(clips),
        max_fpr=max_fpr,
        model_version=manifest["version"],
        threshold_before=round(before, 6),
        false_alarms_before=round(float((scores >= before).mean()), 4),
        threshold=round(threshold, 6),
    )
    if not release:
        return out
    table = json.loads(files[THRESHOLDS_FILE]) if THRESHOLDS_FILE in files else {"cameras": {}}
    table["cameras"][camera] = threshold
    table.setdefault("calibrations", []).append(
        {k: v for k, v in out.as_dict().items() if k not in ("version", "model_dir")}
        | {"at_ms": time.time_ns() // 1_000_000}
    )
    new_files = {**files, THRESHOLDS_FILE: json.dumps(table, indent=1).encode()}
    keep = {k: v for k, v in manifest.items() if k not in ("version", "files", "created_ms")}
    new_manifest = keep | {"parent_version": manifest["version"]}
    path = write_model(INSPECTION.directory(settings.models_path), new_files, new_manifest)
    release_ = build_release(path, settings.release_signer(), replaces=manifest["version"])
    publish_release(bootstrap, settings.topics.models, release_)
    out.version, out.model_dir = release_.version, str(Path(path))
    return out
