"""The clip classifier for visual inspection: a 3D-CNN stem, a Transformer over
space-time tokens, a defect probability and a coarse defect location.

Input: (B, 1, T, H, W) aligned grey clips in [0, 1] (T = 8, H = W = 128 by default).
- Stem: two strided Conv3d -> (B, 32, T/2, H/4, W/4), then a fixed ``MaxPool3d`` to a
  4 x 4 spatial grid (fixed pooling: adaptive pooling with a non-global output does not
  export to ONNX; max so small defects survive) -> (B, 32, T/2, 4, 4): one token per
  space-time cell.
- Each cell's features are also taken relative to the clip's other cells (minus their
  mean, over their spread) and mixed in: a texture repeats across cells, a defect is where
  one cell differs.
- A 2-layer Transformer encoder (d = 32) over the T/2 * 16 tokens, with a learned
  position embedding.
- Heads, per spatial cell (averaged over time): a defect logit, whose maximum is the
  clip's (a defect anywhere makes the clip defective: 0.901 held-out AUROC at 64 px
  against 0.895 from the mean token), and a location logit, whose arg-max cell is the
  coarse box.

Training data: clips cut from the camera simulator, aligned to their middle frame; a clip
is positive when a defect is fully in view in that frame (negative when none is; a defect
cut by the frame's edge is left out), and its location cell is the one
holding the defect box's centre. A share of the training parts (``regions``) is two-tone:
large light and dark regions over the texture. Without them the classifier had never seen
large-scale structure, and on unseen textures made of it (bands, blobs) it took the
structure for defects and missed pits on it; with them, and 4-6x the clips, held-out
AUROC rose from about 0.90 to 0.97 (see the README).

Training: Adam, the learning rate decaying to 0 over the run (cosine, per step), flips and
contrast jitter as augmentation.

Inference (``views``): the evaluated and exported model averages its logits over the clip
and the clip upside down (``views=2``, the default), or over all four flips (``views=4``),
inside the one graph. It was trained on flipped clips, so each view is a fair second look;
on three trained models the second view added 0.004-0.010 held-out AUROC, for twice the
classifier's inference cost. Training runs one view per step.
"""

from __future__ import annotations

import io
import itertools
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from vigil.errors import UsageError
from vigil.models.serving import ClipScorer, ModelError
from vigil.models.threads import keep_freed_memory, torch_threads

__all__ = [
    "ClipDataset",
    "VideoConfig",
    "VideoNet",
    "auroc",
    "auroc_ci95",
    "pick_threshold",
    "export_video",
    "fit_inspection",
    "finetune_video",
    "load_video_net",
    "save_video_model",
    "make_clips",
    "predict",
    "train_video",
    "training_clips",
]

GRID = 4  # location cells per side
VIEWS = (1, 2, 4)  # flips averaged at inference: see VideoConfig.views


@dataclass(frozen=True)
class VideoConfig:
    frames: int = 8
    size: int = 128  # the classifier's input (frames are resized to it)
    camera_size: int = 128  # the simulated cameras' frames (as `vigil publish frames`)
    d: int = 32
    layers: int = 2
    heads: int = 4
    seed: int = 0
    epochs: int = 6
    batch: int = 32
    lr: float = 2e-3
    train_clips: int = 1600
    test_clips: int = 400
    align: str = "dis"
    # share of two-tone parts in the training clips (streams.sources.camera): a defect is
    # learned as a small local anomaly, not as any large change of brightness
    regions: float = 0.35
    # flips averaged at inference (1: the clip only, 2: and upside down, 4: all four)
    views: int = 2


class VideoNet(nn.Module):
    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        if cfg.size % (4 * GRID) or cfg.frames % 2:
            raise UsageError(f"size must be a multiple of {4 * GRID} and frames even")
        if cfg.views not in VIEWS:
            raise UsageError(f"views must be one of {', '.join(map(str, VIEWS))}, not {cfg.views}")
        self.stem = nn.Sequential(
            nn.Conv3d(1, 16, 3, stride=(1, 2, 2), padding=1),  # (B,16,T,H/2,W/2)
            nn.ReLU(),
            nn.Conv3d(16, cfg.d, 3, stride=2, padding=1),  # (B,d,T/2,H/4,W/4)
            nn.ReLU(),
        )
        cell = cfg.size // 4 // GRID
        self.pool = nn.MaxPool3d((1, cell, cell))  # (B,d,T/2,GRID,GRID): small defects survive
        self.mix = nn.Linear(2 * cfg.d, cfg.d)
        tokens = cfg.frames // 2 * GRID * GRID
        self.position = nn.Parameter(torch.zeros(1, tokens, cfg.d))
        layer = nn.TransformerEncoderLayer(
            cfg.d, cfg.heads, dim_feedforward=2 * cfg.d, batch_first=True, dropout=0.0
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.defect = nn.Linear(cfg.d, 1)
        self.where = nn.Linear(cfg.d, 1)
        self.t2 = cfg.frames // 2
        self.views = cfg.views

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, T, H, W) -> defect logit (B,), location logits (B, GRID * GRID). In
        training one view; in evaluation the mean over ``views`` flips of the clip, the
        location logits flipped back first."""
        if self.training or self.views == 1:
            return self._view(clip)
        ops = range(self.views)  # _flip_clips's ops: 0 as is, 1 upside down, 2 and 3 mirrored
        logit, where = self._view(torch.cat([_flip_clips(clip, op) for op in ops]))
        logit = logit.view(self.views, -1).mean(0)
        where = where.view(self.views, -1, GRID, GRID)
        where = torch.stack([_flip_clips(where[op], op) for op in ops]).mean(0)
        return logit, where.flatten(1)

    def _view(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # per-clip standardisation: lighting and texture contrast differ between lines
        mean = clip.mean(dim=(1, 2, 3, 4), keepdim=True)
        std = clip.std(dim=(1, 2, 3, 4), keepdim=True) + 1e-3
        x = (clip - mean) / std
        x = self.pool(self.stem(x)).flatten(3)  # (B, d, T/2, GRID*GRID)
        # each cell against the clip's other cells: a texture repeats across cells, a
        # defect is where one cell differs
        rel = (x - x.mean(dim=3, keepdim=True)) / (x.std(dim=3, keepdim=True) + 1e-3)
        x = self.mix(torch.cat([x, rel], dim=1).transpose(1, 3)).transpose(1, 3)
        tokens = x.flatten(2).transpose(1, 2) + self.position  # (B, T/2*GRID*GRID, d)
        h = self.encoder(tokens)
        # a defect anywhere makes the clip defective: the most defective cell's logit
        cells = self.defect(h).squeeze(-1).view(-1, self.t2, GRID * GRID).mean(1)
        logit = cells.max(1).values
        where = self.where(h).squeeze(-1).view(-1, self.t2, GRID * GRID).mean(1)
        return logit, where


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
) -> ClipDataset:
    """``n`` aligned clips from simulated cameras (balanced positives and negatives), cut
    as the worker cuts them (every ``frames // 2``).

    A clip is labelled by its reference (middle) frame: positive with a defect fully in
    view, negative with none in view. A defect cut by the frame's edge is neither (a
    "don't care" clip, left out). ``belt``: also clips with bare belt under the camera's
    centre (negatives the worker sees between parts; for training). ``regions``: the share
    of two-tone parts (training data; see ``training_clips``)."""
    from vigil.streams.alignment import prepare_clip
    from vigil.streams.sources.camera import CameraConfig, CameraSimulator

    sim = CameraSimulator(
        CameraConfig(
            seed=seed,
            size=cfg.camera_size,
            part_px=cfg.camera_size * 7 // 8,
            gap_px=cfg.camera_size * 3 // 8,
            defect_rate=0.5,
            textures=textures,
            regions=regions,
        )
    )
    want_pos = int(round(n * positive_share))
    # filled in place: thousands of 128x128 clips are gigabytes, a list to stack twice that
    clips = np.empty((n, 1, cfg.frames, cfg.size, cfg.size), np.float32)
    labels, cells, boxes, kinds, textures = [], [], [], [], []
    pos = neg = 0
    for camera in itertools.count():
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
                x, y, w, h = ref.defect.bbox
                cam = cfg.camera_size
                cx, cy = (x + w / 2) * GRID // cam, (y + h / 2) * GRID // cam
                cells.append(int(min(GRID - 1, cy) * GRID + min(GRID - 1, cx)))
                boxes.append([x, y, w, h])
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


def training_clips(n: int, cfg: VideoConfig, seed: int) -> ClipDataset:
    """Clips as the classifier is trained on them: training textures, ``cfg.regions`` of
    the parts two-tone, bare belt included."""
    from vigil.streams.sources.camera import TRAIN_TEXTURES

    return make_clips(n, cfg, TRAIN_TEXTURES, seed, belt=True, regions=cfg.regions)


def auroc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney, ties count half)."""
    y = np.asarray(labels).astype(bool)
    s = np.asarray(scores, dtype=float)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return math.nan
    order = np.argsort(np.concatenate([pos, neg]), kind="mergesort")
    ranks = np.empty(len(order))
    allv = np.concatenate([pos, neg])[order]
    i = 0
    while i < len(allv):  # average ranks over ties
        j = i
        while j + 1 < len(allv) and allv[j + 1] == allv[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return float((ranks[: len(pos)].sum() - len(pos) * (len(pos) + 1) / 2) / (len(pos) * len(neg)))


def auroc_ci95(auc: float, positives: int, negatives: int) -> tuple[float, float]:
    """A 95 % interval for an AUROC measured on ``positives`` + ``negatives`` clips
    (Hanley & McNeil's standard error): how far two evaluations may differ by chance."""
    if math.isnan(auc) or not positives or not negatives:
        return (math.nan, math.nan)
    q1, q2 = auc / (2 - auc), 2 * auc * auc / (1 + auc)
    var = (
        auc * (1 - auc) + (positives - 1) * (q1 - auc * auc) + (negatives - 1) * (q2 - auc * auc)
    ) / (positives * negatives)
    half = 1.96 * math.sqrt(max(var, 0.0))
    return (max(0.0, auc - half), min(1.0, auc + half))


def pick_threshold(labels: np.ndarray, scores: np.ndarray, max_fpr: float = 0.01) -> float:
    """The lowest alert threshold (alert when score >= it) that keeps the false-positive
    rate on these negatives within ``max_fpr``."""
    neg = np.sort(np.asarray(scores, dtype=float)[~np.asarray(labels).astype(bool)])
    if not len(neg):
        return 0.5
    allowed = int(np.floor(max_fpr * len(neg)))  # negatives that may reach the threshold
    top = neg[len(neg) - allowed - 1]  # the highest negative that must stay below it
    return float(min(1.0, np.nextafter(top, np.inf)))


def _flip_clips(clips: torch.Tensor, op: int) -> torch.Tensor:
    """(..., H, W) upside down (``op & 1``) and/or left to right (``op & 2``)."""
    if op & 1:
        clips = clips.flip(-2)
    if op & 2:
        clips = clips.flip(-1)
    return clips


def _flip(clips: torch.Tensor, cells: torch.Tensor, op: int) -> tuple[torch.Tensor, ...]:
    """Clips (B, C, T, H, W) flipped upside down (``op & 1``) and/or left to right
    (``op & 2``), with their location cells (-1: none) moved along. (Quarter turns hurt:
    the belt always runs left to right.)"""
    row, col = cells // GRID, cells % GRID
    if op & 1:
        row = GRID - 1 - row
    if op & 2:
        col = GRID - 1 - col
    return _flip_clips(clips, op), torch.where(cells >= 0, row * GRID + col, cells)


def train_video(
    train: ClipDataset, cfg: VideoConfig, say: Callable[[str], None] = print
) -> VideoNet:
    """Fit the classifier; deterministic for a seed on a machine (one thread per core)."""
    with torch_threads():
        return _train_video(train, cfg, say)


def _train_video(train: ClipDataset, cfg: VideoConfig, say: Callable[[str], None]) -> VideoNet:
    torch.manual_seed(cfg.seed)
    net = VideoNet(cfg)
    _fit(net, train, cfg, cfg.epochs, cfg.lr, say)
    return net


def finetune_video(
    net: VideoNet,
    train: ClipDataset,
    cfg: VideoConfig,
    epochs: int,
    lr: float,
    say: Callable[[str], None] = print,
) -> VideoNet:
    """More epochs on ``net`` as it is, with the training loss and augmentation: the
    quantization-aware fine-tuning of a fake-quantized classifier."""
    with torch_threads():
        _fit(net, train, cfg, epochs, lr, say)
    return net


def _fit(
    net: VideoNet,
    train: ClipDataset,
    cfg: VideoConfig,
    epochs: int,
    lr: float,
    say: Callable[[str], None],
) -> None:
    keep_freed_memory()  # large activations every step: reuse them, do not fault them in
    opt = torch.optim.Adam(net.parameters(), lr=lr)
    # cosine decay from ``lr`` to 0 over the run, per step
    steps = epochs * math.ceil(len(train.labels) / cfg.batch)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    x = torch.from_numpy(train.clips)
    y = torch.from_numpy(train.labels.astype(np.float32))
    cells = torch.from_numpy(train.cells)
    gen = torch.Generator().manual_seed(cfg.seed)
    for epoch in range(epochs):
        net.train()
        order = torch.randperm(len(y), generator=gen)
        total = 0.0
        for i in range(0, len(order), cfg.batch):
            idx = order[i : i + cfg.batch]
            xb, cb = x[idx], cells[idx]
            xb, cb = _flip(xb, cb, int(torch.randint(4, (), generator=gen)))
            # contrast and brightness jitter: textures differ in both
            xb = xb * (0.7 + 0.6 * torch.rand(len(idx), 1, 1, 1, 1, generator=gen))
            logit, where = net(xb)
            loss = F.binary_cross_entropy_with_logits(logit, y[idx])
            located = cb >= 0
            if located.any():
                loss = loss + 0.5 * F.cross_entropy(where[located], cb[located])
            opt.zero_grad()
            loss.backward()
            opt.step()
            schedule.step()
            total += float(loss.detach()) * len(idx)
        say(f"  epoch {epoch + 1}/{epochs}: loss {total / len(y):.4f}")
    net.eval()


def predict(net: VideoNet, clips: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Defect probability and location cell per clip."""
    probs, cells = [], []
    with torch.no_grad():
        for i in range(0, len(clips), batch):
            logit, where = net(torch.from_numpy(clips[i : i + batch]))
            probs.append(torch.sigmoid(logit).numpy())
            cells.append(where.argmax(1).numpy())
    return np.concatenate(probs), np.concatenate(cells)


def export_video(net: VideoNet, cfg: VideoConfig) -> bytes:
    """ONNX with a dynamic batch (exported with a batch of 2)."""
    from vigil.models.onnx_export import torch_to_onnx

    example = (torch.zeros(2, 1, cfg.frames, cfg.size, cfg.size),)
    return torch_to_onnx(net, example, ["clip"], ["defect_logit", "location_logits"])


# absolute for outputs within [-1, 1], relative beyond: the logits reach tens, and float32
# rounding between two runtimes (other conv and attention kernels) grows with them through
# the per-clip and per-cell normalisations: trained 128x128 models measured 1.3e-4..1.6e-4
PARITY_TOLERANCE = 1e-3


def save_video_model(
    net: VideoNet,
    cfg: VideoConfig,
    out_dir: Path,
    check: np.ndarray,
    metrics: dict,
    threshold: float = 0.5,
) -> Path:
    """Export to ONNX, check ONNX Runtime against torch on ``check`` clips (both outputs
    within ``PARITY_TOLERANCE``), and write ``out_dir/<version>`` with a manifest that
    carries the alert ``threshold`` on the defect probability."""
    from vigil.models.serving import onnx_session, write_model

    graph = export_video(net, cfg)
    session = onnx_session(graph)
    got = session.run(None, {"clip": check.astype(np.float32)})
    with torch.no_grad():
        want = [t.numpy() for t in net(torch.from_numpy(check.astype(np.float32)))]
    worst = max(
        float(np.max(np.abs(g - w) / np.maximum(1.0, np.abs(w))))
        for g, w in zip(got, want, strict=True)
    )
    if not worst <= PARITY_TOLERANCE:
        raise ModelError(f"ONNX export differs from torch by {worst:.2e} on the check clips")
    manifest = {
        "name": "inspection",
        "format": ClipScorer.FORMAT,
        "input": {"clip": [None, 1, cfg.frames, cfg.size, cfg.size], "range": [0, 1]},
        "grid": GRID,
        "threshold": threshold,
        "parity_max_diff": worst,  # absolute within [-1, 1], relative beyond
        "parity_clips": len(check),
        "config": asdict(cfg),
        "metrics": metrics,
        "bits": 32,
    }
    # the torch weights too: quantized exports (vigil export) start from them
    state = io.BytesIO()
    torch.save(net.state_dict(), state)
    return write_model(out_dir, {"clip.onnx": graph, "state.pt": state.getvalue()}, manifest)


def load_video_net(directory: Path) -> tuple[VideoNet, VideoConfig, dict]:
    """The torch classifier of a model directory written by ``save_video_model``."""
    from vigil.models.serving import ModelError, read_files, read_manifest

    manifest = read_manifest(directory)
    files = read_files(directory, manifest)
    if "state.pt" not in files:
        raise ModelError(
            f"{directory}: model {manifest['version']} has no torch weights (state.pt)"
        )
    # models written before ``views`` existed ran one view
    cfg = VideoConfig(**{"views": 1, **manifest["config"]})
    net = VideoNet(cfg)
    net.load_state_dict(torch.load(io.BytesIO(files["state.pt"]), weights_only=True))
    return net.eval(), cfg, manifest


def fit_inspection(
    cfg: VideoConfig, root: Path, say: Callable[[str], object] = print
) -> tuple[Path, dict]:
    """What ``vigil train inspection`` does: train on simulated clips, evaluate on 1,000-clip
    sets (held-out, fresh and seen textures: AUROC with its interval, location accuracy,
    recall and false alarms at the threshold, recall per defect kind), pick the alert
    threshold at 1 % false alarms on validation clips and export under ``root/inspection``.
    Returns the model directory and the evaluation (plain data)."""
    from vigil.streams.sources.camera import FRESH_TEXTURES, HELDOUT_TEXTURES, TRAIN_TEXTURES

    seed, clips, test_clips, size = cfg.seed, cfg.train_clips, cfg.test_clips, cfg.size
    began = time.perf_counter()
    say(f"simulating and aligning {clips} training clips ({size}x{size}, {cfg.frames} frames)")
    train_set = training_clips(clips, cfg, seed=seed)
    say(f"and {test_clips} held-out clips with unseen textures {list(HELDOUT_TEXTURES)}")
    test_set = make_clips(test_clips, cfg, HELDOUT_TEXTURES, seed=seed + 1000)
    fresh_set = make_clips(test_clips, cfg, FRESH_TEXTURES, seed=seed + 3000)
    seen_set = make_clips(test_clips, cfg, TRAIN_TEXTURES, seed=seed + 2000)
    # the threshold's validation clips, as the worker sees them: bare belt included
    val_set = make_clips(test_clips, cfg, TRAIN_TEXTURES, seed=seed + 4000, belt=True)
    net = train_video(train_set, cfg, say=say)
    report: dict = {
        "train_clips": clips,
        "size": size,
        "camera_size": cfg.camera_size,
        "epochs": cfg.epochs,
    }
    scored = {
        name: (data, *predict(net, data.clips))
        for name, data in (
            ("heldout_textures", test_set),  # unseen in training
            ("fresh_textures", fresh_set),  # unseen in training and in development
            ("seen_textures_new_parts", seen_set),
        )
    }
    # the alert threshold: at most 1 % false alarms on validation clips
    threshold = pick_threshold(val_set.labels, predict(net, val_set.clips)[0], max_fpr=0.01)
    report["threshold"] = round(threshold, 6)
    for name, (data, probs, cells) in scored.items():
        located = data.cells >= 0
        alerted = probs >= threshold
        positive = data.labels.astype(bool)
        report[name] = {
            "clips": len(data.labels),
            "auroc": round(auc := auroc(data.labels, probs), 4),
            "auroc_ci95": [
                round(v, 4) for v in auroc_ci95(auc, int(positive.sum()), int((~positive).sum()))
            ],
            "location_accuracy": round(float((cells[located] == data.cells[located]).mean()), 4),
            "recall_at_threshold": round(float(alerted[positive].mean()), 4),
            "false_positive_rate_at_threshold": round(float(alerted[~positive].mean()), 4),
            "recall_by_defect": {
                kind: round(float(alerted[[k == kind for k in data.kinds]].mean()), 4)
                for kind in sorted({k for k in data.kinds if k})
            },
        }
    report["train_s"] = round(time.perf_counter() - began, 1)
    path = save_video_model(
        net, cfg, root / "inspection", test_set.clips[:8], report, threshold=threshold
    )
    report["model"] = str(path)
    return path, report
