"""The clip classifier trained on a user's own part images (``vigil train inspection
--images DIR``, ``vigil bench inspection-data``): the images become parts on the simulated
conveyor (motion, vibration, lighting drift, sensor noise), the classifier learns their
clips, and it is evaluated per image on images it never saw.

Modes:
- ``normal-only``: defect-free images only; the defects it learns are synthetic ones
  painted onto them (``ImageParts.paint``), so a new line can start before it has any
  labelled defect. The literature's anomaly-detection protocol: a share of the defect-free
  images for training, the rest and every defective image for testing.
- ``supervised``: the labelled defective images as well (and the painted ones); a split
  stratified by kind.

Per image, the score is the classifier's on the clip whose middle frame shows the part
nearest the camera's centre, as the worker would cut it; the location is right when the
predicted cell of the frame holds some of the image's mask."""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from vigil.errors import DataError
from vigil.models.inspection.data import (
    ClipDataset,
    camera_config,
    cell_of,
    clip_array,
)
from vigil.models.inspection.evaluate import (
    auroc,
    auroc_ci95,
    pick_threshold,
    predict,
    threshold_on_clean,
)
from vigil.models.inspection.images import (
    PAINTED,
    REGIONS,
    ImageParts,
    Part,
    load_parts,
    paint_region,
    scan_images,
)
from vigil.models.inspection.net import GRID, VideoConfig, VideoNet
from vigil.models.inspection.train import train_video
from vigil.streams.sources.camera import draw_defect

__all__ = [
    "MODES",
    "ImageSplit",
    "evaluate_images",
    "image_clips",
    "split_images",
]

MODES = ("normal-only", "supervised")
TRAIN_SHARE = 0.8  # of the defect-free images (DifferNet's split: 761 of 952 magnetic tiles)
SUPERVISED_TRAIN_SHARE = 0.7  # of each kind, for supervised
THRESHOLD_SHARE = 0.1  # of the training images, held out to choose the alert threshold
PAINT = 0.5  # share of the defect-free training clips with a synthetic defect painted on


@dataclass
class ImageSplit:
    """Training, threshold-validation and test images, and what was left out."""

    train: list[Part]
    validation: list[Part]  # defect-free, never trained on: the threshold's false alarms
    test: list[Part]
    problems: list[str]
    mode: str

    def describe(self) -> dict:
        def count(parts: list[Part]) -> dict[str, int]:
            kinds: dict[str, int] = {}
            for p in parts:
                kinds[p.kind or "good"] = kinds.get(p.kind or "good", 0) + 1
            return dict(sorted(kinds.items()))

        return {
            "mode": self.mode,
            "train": count(self.train),
            "validation": count(self.validation),
            "test": count(self.test),
            "unreadable": len(self.problems),
        }


def split_images(
    root: Path | str, mode: str, seed: int = 0, limit: int | None = None
) -> ImageSplit:
    """Read ``root`` (``images.scan_images``) and split it for ``mode``. ``limit``: at most
    that many images of each kind (a quick look, or a test's slice)."""
    if mode not in MODES:
        raise DataError(f"mode is one of {', '.join(MODES)}, not {mode!r}")
    found = scan_images(root)
    rng = np.random.default_rng(seed)
    by_kind: dict[str | None, list] = {}
    for item in found.images:
        by_kind.setdefault(item.kind, []).append(item)
    for kind, items in by_kind.items():
        order = rng.permutation(len(items))
        by_kind[kind] = [items[i] for i in order][: limit or None]
    problems = list(found.problems)
    parts = {kind: load_parts(items, problems) for kind, items in by_kind.items()}
    good = parts.pop(None, [])
    if mode == "supervised" and not parts:
        raise DataError(f"{root}: supervised training needs defective images; none found")
    share = TRAIN_SHARE if mode == "normal-only" else SUPERVISED_TRAIN_SHARE
    n_train = int(math.floor(share * len(good)))
    train, test = good[:n_train], good[n_train:]
    for kind_parts in parts.values():
        if mode == "normal-only":
            test += kind_parts
        else:
            k = int(math.floor(SUPERVISED_TRAIN_SHARE * len(kind_parts)))
            train += kind_parts[:k]
            test += kind_parts[k:]
    # the threshold's validation images: defect-free, out of the training ones
    train_good = [p for p in train if p.kind is None]
    n_val = max(1, int(round(THRESHOLD_SHARE * len(train_good))))
    validation = train_good[:n_val]
    train = [p for p in train if p.kind is not None] + train_good[n_val:]
    if len(train_good) - n_val < 2 or not test:
        raise DataError(
            f"{root}: too few readable images to split ({len(good)} defect-free, "
            f"{sum(map(len, parts.values()))} defective)"
        )
    return ImageSplit(train, validation, test, problems, mode)


@dataclass
class ImageClips:
    """One clip per image (in the images' order) and where its part lay in the middle
    frame."""

    clips: np.ndarray  # (N, 1, T, H, W)
    part_xy: list[tuple[float, float]]


def image_clips(parts: list[Part], cfg: VideoConfig, seed: int) -> ImageClips:
    """Each image once on the simulated conveyor (one camera, images in order): the clip
    the worker would cut whose middle frame shows the part nearest the camera's centre."""
    from vigil.streams.alignment import prepare_clip
    from vigil.streams.sources.camera import CameraSimulator

    camera = camera_config(cfg, seed, defect_rate=0.0)
    # the first part is under the camera from the first frame on, already past its centre:
    # the images start with the second
    sim = CameraSimulator(camera, ImageParts(parts, order="cycle", first=1))
    centre = (camera.size - camera.part_px) / 2
    half, step = cfg.frames // 2, cfg.frames // 2
    clips = clip_array(len(parts), cfg)
    xy: list = [None] * len(parts)
    best: dict[int, tuple[float, list, tuple[float, float]]] = {}  # images not yet cut

    def cut(image: int) -> None:
        _off, images, xy[image] = best.pop(image)
        clips[image] = prepare_clip(images, cfg.size, cfg.align)

    window: list = []
    for n, shot in enumerate(sim.frames("images", 0)):
        window.append(shot)
        if len(window) > cfg.frames:
            window.pop(0)
        if len(window) < cfg.frames or (n + 1 - cfg.frames) % step:
            continue  # clips start every `step` frames, as the worker cuts them
        ref = window[half]
        if ref.part is None or ref.part_xy is None or ref.part < 1:
            continue
        image = ref.part - 1
        for done in [k for k in best if k < image]:  # parts gone by
            cut(done)
        if image >= len(parts):
            break  # every image has passed the camera's centre
        off = abs(ref.part_xy[0] - centre)
        if image not in best or off < best[image][0]:
            best[image] = (off, [s.frame.image for s in window], ref.part_xy)
    for image in list(best):
        cut(image)
    return ImageClips(clips, xy)


def _located(part: Part, cell: int, xy: tuple[float, float], cfg: VideoConfig) -> bool:
    """Whether location ``cell`` of the frame holds some of ``part``'s mask, the part at
    ``xy`` in the frame."""
    size = camera_config(cfg, 0).part_px
    mask = ImageParts.mask(part, size)
    if mask is None:
        return False
    ys, xs = np.nonzero(mask)
    fx, fy = xs + xy[0], ys + xy[1]
    span = cfg.camera_size / GRID
    row, col = divmod(int(cell), GRID)
    inside = (fx >= col * span) & (fx < (col + 1) * span) & (fy >= row * span)
    return bool((inside & (fy < (row + 1) * span)).any())


def evaluate_images(
    net: VideoNet, split: ImageSplit, cfg: VideoConfig, seed: int, max_fpr: float = 0.01
) -> dict:
    """Per-image scores of the test images: image-level AUROC with its interval; recall per
    kind at ``max_fpr`` false alarms on the test's defect-free images (the literature's
    reading) and at the deployed threshold (``max_fpr`` on the validation images);
    location accuracy against the masks. The same measures under ``synthetic_defects``
    for the test's defect-free images and a copy of each with a synthetic defect painted
    on: what there is to go by before any real defect is labelled."""
    val_scores = predict(net, image_clips(split.validation, cfg, seed + 1).clips)[0]
    threshold = threshold_on_clean(val_scores, max_fpr)
    good = [p for p in split.test if p.kind is None]
    report = {"threshold": round(threshold, 6)}
    report |= _measures(net, split.test, cfg, seed + 2, threshold, max_fpr)
    painted = painted_copies(good, np.random.default_rng([seed, 3]))
    report["synthetic_defects"] = _measures(net, good + painted, cfg, seed + 3, threshold, max_fpr)
    return report


def painted_copies(parts: list[Part], rng: np.random.Generator) -> list[Part]:
    """A copy of each defect-free part with one synthetic defect painted on (any of
    ``PAINTED``), its mask where the pixels changed."""
    out = []
    for part in parts:
        pixels = part.image.astype(np.float32)
        before = pixels.copy()
        kind = PAINTED[int(rng.integers(len(PAINTED)))]
        if kind in REGIONS:
            paint_region(pixels, kind, rng, parts[int(rng.integers(len(parts)))].image)
        else:
            draw_defect(pixels, kind, rng, contrast=float(rng.uniform(0.25, 1.0)))
        image = np.clip(pixels, 0, 255).astype(np.uint8)
        mask = np.abs(image.astype(np.float32) - np.clip(before, 0, 255)) >= 1
        out.append(Part(image, f"synthetic-{kind}", mask if mask.any() else None, part.name))
    return out


def _measures(
    net: VideoNet,
    parts: list[Part],
    cfg: VideoConfig,
    seed: int,
    threshold: float,
    max_fpr: float,
) -> dict:
    """The evaluation's measures on ``parts`` (see ``evaluate_images``); with no defective
    part among them, the false alarms only."""
    clips = image_clips(parts, cfg, seed)
    scores, cells = predict(net, clips.clips)
    labels = np.array([p.kind is not None for p in parts])
    deployed = scores >= threshold
    out: dict = {"images": len(labels), "defective": int(labels.sum())}
    if not labels.all():
        out["false_alarms_at_threshold"] = round(float(deployed[~labels].mean()), 4)
    if not labels.any() or labels.all():
        return out
    at_rate = pick_threshold(labels, scores, max_fpr)
    auc = auroc(labels, scores)
    kinds = sorted({p.kind for p in parts if p.kind})
    masked = [i for i, p in enumerate(parts) if p.kind is not None and p.mask is not None]
    located = [_located(parts[i], cells[i], clips.part_xy[i], cfg) for i in masked]

    def recall(alerted: np.ndarray) -> dict[str, float]:
        return {
            kind: round(float(alerted[[p.kind == kind for p in parts]].mean()), 4) for kind in kinds
        }

    alerted = scores >= at_rate
    return out | {
        "auroc": round(auc, 4),
        "auroc_ci95": [
            round(v, 4) for v in auroc_ci95(auc, int(labels.sum()), int((~labels).sum()))
        ],
        f"recall_at_{max_fpr:g}_false_alarms": round(float(alerted[labels].mean()), 4),
        f"recall_by_kind_at_{max_fpr:g}_false_alarms": recall(alerted),
        "recall_at_threshold": round(float(deployed[labels].mean()), 4),
        "recall_by_kind_at_threshold": recall(deployed),
        "location_accuracy": round(float(np.mean(located)), 4) if located else None,
        "located_images": len(located),
    }


def training_set(
    split: ImageSplit, cfg: VideoConfig, seed: int, paint: float = PAINT
) -> ClipDataset:
    """``cfg.train_clips`` clips of the training images, each centred under the camera as
    the worker sees every part once and as the evaluation scores it (the same motion,
    vibration, lighting drift and noise). The images come in rounds: each round every
    training image once and copies of defect-free ones with a synthetic defect painted on,
    ``paint`` of the round's defect-free clips (at most one copy each), shuffled; each
    round with paint of its own. (Clips cut wherever the parts lay measured worse on
    Magnetic Tile: benchmarks.md, 2026-12-08.)"""
    goods = [p for p in split.train if p.kind is None]
    # c copies among g defect-free clips: c / (g + c) = paint; one copy each from 0.5 on
    painted = len(goods) if paint >= 0.5 else round(len(goods) * paint / (1 - paint))
    parts: list[Part] = []
    for n in itertools.count():
        rng = np.random.default_rng([seed, 5, n])
        chosen = [goods[i] for i in np.sort(rng.permutation(len(goods))[:painted])]
        round_ = split.train + painted_copies(chosen, rng)
        parts += [round_[i] for i in rng.permutation(len(round_))]  # a short last round: any
        if len(parts) >= cfg.train_clips:
            break
    parts = parts[: cfg.train_clips]
    shown = image_clips(parts, cfg, seed + 50)
    size = camera_config(cfg, 0).part_px
    boxes: list = [None] * len(parts)  # the defect's box in the frame
    for k, part in enumerate(parts):
        if part.kind is not None:
            bx, by, bw, bh = ImageParts.box(part, size)
            x, y = shown.part_xy[k]
            boxes[k] = [round(x + bx), round(y + by), bw, bh]
    frame = (cfg.camera_size, cfg.camera_size)
    return ClipDataset(
        shown.clips,
        np.array([p.kind is not None for p in parts], int),
        np.array([-1 if b is None else cell_of(b, frame) for b in boxes], int),
        boxes,
        [p.kind for p in parts],
        [p.name for p in parts],
    )


def fit_images(
    split: ImageSplit,
    cfg: VideoConfig,
    say: Callable[[str], object] = print,
    paint: float = PAINT,
    max_fpr: float = 0.01,
) -> tuple[VideoNet, dict]:
    """Train on ``split.train`` and evaluate on its test images (the threshold at
    ``max_fpr`` false alarms); (net, report)."""
    began = time.perf_counter()
    say(
        f"making {cfg.train_clips} training clips from {len(split.train)} images "
        f"({cfg.size}x{cfg.size}, {cfg.frames} frames; synthetic defects on "
        f"{paint:.0%} of the defect-free parts)"
    )
    train = training_set(split, cfg, cfg.seed, paint)
    made = time.perf_counter()
    net = train_video(train, cfg, say=lambda m: say(m))
    trained = time.perf_counter()
    say(f"evaluating on {len(split.test)} test images")
    report = evaluate_images(net, split, cfg, cfg.seed + 100, max_fpr)
    report |= {
        "split": split.describe(),
        "config": {
            "size": cfg.size,
            "camera_size": cfg.camera_size,
            "stem": cfg.stem,
            "epochs": cfg.epochs,
            "train_clips": cfg.train_clips,
            "paint": paint,
        },
        "clips_s": round(made - began, 1),
        "train_s": round(trained - made, 1),
        "evaluate_s": round(time.perf_counter() - trained, 1),
    }
    return net, report


# image-level AUROC on Magnetic Tile Defects, normal-only (DifferNet's split), all with
# ImageNet-pretrained backbones (../shared/data/README.md)
PUBLISHED_NORMAL_ONLY = {
    "DifferNet": 0.977,
    "PatchCore": 0.979,
    "MSFlow": 0.992,
}


def train_from_images(
    images: Path | str,
    mode: str | None,
    cfg: VideoConfig,
    out_root: Path,
    say: Callable[[str], object] = print,
    max_fpr: float = 0.01,
    extra: dict | None = None,
) -> tuple[Path, dict]:
    """What ``vigil train inspection --images DIR`` does: split the user's images
    (``mode`` None: supervised when there are defective images, else normal-only), train,
    evaluate on the held-out images, export under ``out_root/inspection`` with the alert
    threshold at ``max_fpr`` false alarms on the held-out defect-free validation images."""
    from vigil.models.inspection.export import save_video_model

    if mode is None:
        found = scan_images(images)
        mode = "supervised" if found.defective else "normal-only"
    split = split_images(images, mode, seed=cfg.seed)
    for problem in split.problems:
        say(f"left out: {problem}")
    say(f"{mode}: {split.describe()}")
    net, report = fit_images(split, cfg, say, max_fpr=max_fpr)
    check = image_clips(split.validation[:4], cfg, cfg.seed + 1).clips
    trained_on = {"images": str(Path(images).resolve()), "mode": mode, **split.describe()}
    path = save_video_model(
        net,
        cfg,
        out_root / "inspection",
        check,
        report,
        report["threshold"],
        {"trained_on": trained_on, **(extra or {})},
    )
    report["model"] = str(path)
    return path, report
