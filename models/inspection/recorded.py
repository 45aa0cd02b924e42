"""The clip classifier trained on what a camera recorded (``vigil record frames``, then
``vigil train inspection --frames DIR``): the recording's frames cut into clips as the
worker cuts them, labelled from a labels file, split in time.

A recording (``DIR``): ``frames.jsonl`` (one line per frame: ``camera_id``, ``seq``,
``ts_ms``, ``file``) and the frames as PNG files beside it.

Labels (``DIR/labels.jsonl`` unless given), JSON lines of either form:

- a range: ``{"camera_id": "cam-0", "seq_start": 120, "seq_end": 160, "kind": "scratch",
  "bbox": [x, y, w, h]}`` (``bbox`` in frame pixels, optional): those frames show a
  defect;
- a frame (what ``vigil publish frames --labels`` writes): ``{"camera_id": "cam-0",
  "seq": 121, "defect": "scratch", "bbox": [x, y, w, h]}`` (``defect`` null: none).

Every frame no label marks is defect-free. A clip is labelled by its middle frame, its
location cell by the box's centre. Clips are split in time per camera: the first 70 %
train, the next 10 % choose the threshold (its defect-free clips), the last 20 % test."""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vigil.errors import DataError
from vigil.models.inspection.data import ClipDataset, cell_of
from vigil.models.inspection.evaluate import auroc, auroc_ci95, predict, threshold_on_clean
from vigil.models.inspection.net import VideoConfig
from vigil.models.inspection.train import train_video

__all__ = [
    "INDEX",
    "LABELS",
    "FrameLabel",
    "read_frame_labels",
    "recorded_clips",
    "train_from_frames",
]

INDEX = "frames.jsonl"
LABELS = "labels.jsonl"
SPLIT = (0.7, 0.1)  # train, threshold validation; the rest tests


@dataclass(frozen=True)
class FrameLabel:
    kind: str
    bbox: tuple[int, int, int, int] | None


def read_frame_labels(path: Path) -> dict[str, dict[int, FrameLabel]]:
    """Defective frames per camera (seq -> label) from a labels file; DataError naming the
    line of anything else."""
    out: dict[str, dict[int, FrameLabel]] = {}
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read the labels ({exc})") from None
    for n, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            camera = str(row["camera_id"])
            bbox = row.get("bbox")
            box = None if bbox is None else tuple(int(v) for v in bbox)
            if box is not None and (len(box) != 4 or min(box[2:]) <= 0 or min(box[:2]) < 0):
                raise ValueError(f"bbox {bbox} is not [x, y, w, h] inside the frame")
            if "seq_start" in row:
                lo, hi = int(row["seq_start"]), int(row["seq_end"])
                kind = str(row.get("kind") or "defect")
                if not 0 <= lo <= hi or hi - lo > 10_000_000:
                    raise ValueError(f"seq_start {lo} .. seq_end {hi} is not a range of frames")
                seqs = range(lo, hi + 1)
            else:
                if row.get("defect") is None:
                    continue
                kind, seqs = str(row["defect"]), range(int(row["seq"]), int(row["seq"]) + 1)
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{n}: not a frame or range label ({exc})") from None
        frames = out.setdefault(camera, {})
        for seq in seqs:
            frames[seq] = FrameLabel(kind, box)  # type: ignore[arg-type]
    return out


def _index(directory: Path) -> dict[str, list[tuple[int, Path]]]:
    path = directory / INDEX
    if not path.is_file():
        raise DataError(f"{directory}: no {INDEX} (record one: vigil record frames)")
    cameras: dict[str, dict[int, Path]] = {}
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        try:
            row = json.loads(line)
            cameras.setdefault(str(row["camera_id"]), {})[int(row["seq"])] = directory / row["file"]
        except (ValueError, KeyError, TypeError) as exc:
            raise DataError(f"{path}:{n}: not a frame entry ({exc})") from None
    return {c: sorted(frames.items()) for c, frames in cameras.items()}


@dataclass
class RecordedClips:
    data: ClipDataset
    cameras: list[str]
    seq_start: list[int]
    problems: list[str]


def recorded_clips(
    directory: Path, labels: dict[str, dict[int, FrameLabel]], cfg: VideoConfig, stride: int = 4
) -> RecordedClips:
    """Every clip of the recording, cut as the worker cuts them (consecutive frames,
    starting on multiples of ``stride``), labelled by its middle frame."""
    from vigil.streams.alignment import ClipWindows, prepare_clip
    from vigil.streams.frames import Frame

    clips, ys, cells, boxes, kinds, cams, starts, problems = [], [], [], [], [], [], [], []
    for camera, frames in _index(Path(directory)).items():
        windows = ClipWindows(cfg.frames, stride)
        marked = labels.get(camera, {})
        for seq, path in frames:
            image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
            if image is None:
                problems.append(f"{path}: not an image OpenCV can read")
                continue
            for clip in windows.push(Frame(camera, seq, 0, image)):
                ref = clip[len(clip) // 2]
                label = marked.get(ref.seq)
                clips.append(prepare_clip([f.image for f in clip], cfg.size, cfg.align))
                ys.append(int(label is not None))
                kinds.append(label.kind if label else None)
                box = label.bbox if label else None
                boxes.append(list(box) if box else None)
                cells.append(-1 if box is None else cell_of(box, ref.image.shape[:2]))
                cams.append(camera)
                starts.append(clip[0].seq)
    if not clips:
        raise DataError(f"{directory}: no clip of {cfg.frames} consecutive frames recorded")
    data = ClipDataset(
        np.stack(clips), np.array(ys), np.array(cells), boxes, kinds, [None] * len(clips)
    )
    return RecordedClips(data, cams, starts, problems)


def _take(data: ClipDataset, idx: np.ndarray) -> ClipDataset:
    return ClipDataset(
        data.clips[idx],
        data.labels[idx],
        data.cells[idx],
        [data.boxes[i] for i in idx],
        [data.kinds[i] for i in idx],
        [data.textures[i] for i in idx],
    )


def split_in_time(rec: RecordedClips) -> tuple[ClipDataset, ClipDataset, ClipDataset]:
    """Per camera, by first frame: the first 70 % of its clips, the next 10 %, the rest.
    (Consecutive clips share frames: a random split would test on training frames.)"""
    parts: list[list[int]] = [[], [], []]
    for camera in sorted(set(rec.cameras)):
        idx = sorted(
            (i for i, c in enumerate(rec.cameras) if c == camera), key=lambda i: rec.seq_start[i]
        )
        a = int(math.floor(SPLIT[0] * len(idx)))
        b = a + max(1, int(math.floor(SPLIT[1] * len(idx))))
        for part, chosen in zip(parts, (idx[:a], idx[a:b], idx[b:]), strict=True):
            part += chosen
    return tuple(_take(rec.data, np.array(p, dtype=int)) for p in parts)  # type: ignore[return-value]


def train_from_frames(
    directory: Path | str,
    labels_path: Path | str | None,
    cfg: VideoConfig,
    out_root: Path,
    say: Callable[[str], object] = print,
    max_fpr: float = 0.01,
    stride: int = 4,
) -> tuple[Path, dict]:
    """What ``vigil train inspection --frames DIR`` does (see the module notes)."""
    from vigil.models.inspection.export import save_video_model

    directory = Path(directory)
    labels = read_frame_labels(Path(labels_path) if labels_path else directory / LABELS)
    began = time.perf_counter()
    rec = recorded_clips(directory, labels, cfg, stride)
    for problem in rec.problems:
        say(f"left out: {problem}")
    train, val, test = split_in_time(rec)
    counts = {
        name: {"clips": len(d.labels), "defective": int(d.labels.sum())}
        for name, d in (("train", train), ("validation", val), ("test", test))
    }
    say(f"clips from {directory}: {counts}")
    if not train.labels.any() or train.labels.all():
        raise DataError(
            f"{directory}: the training part ({counts['train']}) needs clips with and without "
            "a labelled defect"
        )
    net = train_video(train, cfg, say=lambda m: say(m))
    negatives = val.labels == 0
    val_scores = predict(net, val.clips[negatives])[0] if negatives.any() else np.zeros(0)
    threshold = threshold_on_clean(val_scores, max_fpr)
    scores, cells = predict(net, test.clips)
    positive = test.labels.astype(bool)
    alerted = scores >= threshold
    report: dict = {"clips": counts, "threshold": round(threshold, 6)}
    if positive.any() and not positive.all():
        auc = auroc(test.labels, scores)
        located = test.cells >= 0
        report |= {
            "auroc": round(auc, 4),
            "auroc_ci95": [
                round(v, 4) for v in auroc_ci95(auc, int(positive.sum()), int((~positive).sum()))
            ],
            "recall_at_threshold": round(float(alerted[positive].mean()), 4),
            "recall_by_kind_at_threshold": {
                k: round(float(alerted[[x == k for x in test.kinds]].mean()), 4)
                for k in sorted({k for k in test.kinds if k})
            },
            "location_accuracy": (
                round(float((cells[located] == test.cells[located]).mean()), 4)
                if located.any()
                else None
            ),
        }
    if (~positive).any():
        report["false_alarms_at_threshold"] = round(float(alerted[~positive].mean()), 4)
    report["train_s"] = round(time.perf_counter() - began, 1)
    trained_on = {"frames": str(directory.resolve()), **counts}
    path = save_video_model(
        net,
        cfg,
        out_root / "inspection",
        test.clips[:4],
        report,
        threshold,
        {"trained_on": trained_on},
    )
    report["model"] = str(path)
    return path, report
