"""Clips for training and evaluation, cut from the camera simulator and aligned to their
middle frame; a clip is labelled by its middle frame."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Any

import numpy as np

from vigil.errors import DataError
from vigil.models.inspection.net import GRID, VideoConfig
from vigil.streams.sources.camera import CameraConfig, PartSource


@dataclass
class ClipDataset:
    clips: np.ndarray  # (N, 1, T, H, W) float32 in [0, 1]
    labels: np.ndarray  # (N,) 0/1
    cells: np.ndarray  # (N,) location cell of the defect, -1 when none
    boxes: list  # (N,) [x, y, w, h] in the camera's reference-frame pixels, or None
    kinds: list  # (N,) the defect's kind (scratch, crack, stain, pit), or None
    textures: list  # (N,) the texture of the part under the camera (None: bare belt)


def make_clips(
    n: int,
    cfg: VideoConfig,
    textures: tuple[str, ...],
    seed: int,
    positive_share: float = 0.5,
    belt: bool = False,
    regions: float = 0.0,
    parts: PartSource | None = None,
) -> ClipDataset:
    """``n`` aligned clips from simulated cameras (balanced positives and negatives), cut
    as the worker cuts them (every ``frames // 2``).

    A clip is labelled by its reference (middle) frame: positive with a defect fully in
    view, negative with none in view. A defect cut by the frame's edge is neither (a
    "don't care" clip, left out). ``belt``: also clips with bare belt under the camera's
    centre (negatives the worker sees between parts; for training). ``regions``: the share
    of two-tone parts (training data; see ``training_clips``). ``parts``: the parts come
    from there (a user's images: ``images.ImageParts``) instead of ``textures``."""
    from vigil.streams.alignment import prepare_clip
    from vigil.streams.sources.camera import CameraSimulator

    sim = CameraSimulator(
        camera_config(cfg, seed, defect_rate=0.5, textures=textures, regions=regions), parts
    )
    want_pos = int(round(n * positive_share))
    # filled in place: thousands of 128x128 clips are gigabytes, a list to stack twice that
    clips = clip_array(n, cfg)
    labels, cells, boxes, kinds, textures = [], [], [], [], []
    pos = neg = 0
    for camera in itertools.count():
        if camera >= 50 and not pos and want_pos:
            raise DataError("no defect in view in 50 cameras' frames: no positive clips to make")
        shots = list(itertools.islice(sim.frames(f"cam-{camera}", camera), 600))
        for start in range(0, len(shots) - cfg.frames, cfg.frames // 2):
            window = shots[start : start + cfg.frames]
            ref = window[cfg.frames // 2]
            if (ref.part is None and not belt) or (ref.partial and ref.defect is None):
                continue
            label = int(ref.defect is not None)
            if (label and pos >= want_pos) or (not label and neg >= n - want_pos):
                continue
            clips[pos + neg] = prepare_clip([s.frame.image for s in window], cfg.size, cfg.align)
            labels.append(label)
            if label:
                cells.append(cell_of(ref.defect.bbox, (cfg.camera_size, cfg.camera_size)))
                boxes.append(list(ref.defect.bbox))
                kinds.append(ref.defect.kind)
            else:
                cells.append(-1)
                boxes.append(None)
                kinds.append(None)
            textures.append(ref.texture)
            pos, neg = pos + label, neg + (1 - label)
            if pos + neg >= n:
                return ClipDataset(clips, np.array(labels), np.array(cells), boxes, kinds, textures)
    raise AssertionError("unreachable")


def clip_array(n: int, cfg: VideoConfig) -> np.ndarray:
    """Room for ``n`` clips of ``cfg`` (N, 1, T, H, W), float32, not filled."""
    return np.empty((n, 1, cfg.frames, cfg.size, cfg.size), np.float32)


def cell_of(box: tuple[float, float, float, float], shape: tuple[int, int]) -> int:
    """The location cell holding the centre of ``box`` ([x, y, w, h]) in a frame of
    ``shape`` (height, width)."""
    x, y, w, h = box
    col = min(GRID - 1, max(0, int((x + w / 2) * GRID // shape[1])))
    row = min(GRID - 1, max(0, int((y + h / 2) * GRID // shape[0])))
    return row * GRID + col


def camera_config(cfg: VideoConfig, seed: int, **more: Any) -> CameraConfig:
    """The simulated camera a classifier of ``cfg`` is trained and evaluated on: frames of
    ``cfg.camera_size``, framed as ``CameraConfig.framed`` (parts filling the frame with
    ``cfg.fill``; ``more``: other fields)."""
    return CameraConfig.framed(cfg.camera_size, fill=cfg.fill, seed=seed, **more)


def training_clips(n: int, cfg: VideoConfig, seed: int) -> ClipDataset:
    """Clips as the classifier is trained on them: training textures, ``cfg.regions`` of
    the parts two-tone, bare belt included."""
    from vigil.streams.sources.camera import TRAIN_TEXTURES

    return make_clips(n, cfg, TRAIN_TEXTURES, seed, belt=True, regions=cfg.regions)
