"""Evaluating the clip classifier (AUROC with its interval, the alert threshold at a
false-alarm rate), and ``fit_inspection``: what ``vigil train inspection`` does."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vigil.models.inspection.data import make_clips, training_clips
from vigil.models.inspection.export import save_video_model
from vigil.models.inspection.net import VideoConfig, VideoNet
from vigil.models.inspection.train import train_video


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
    return threshold_on_clean(np.asarray(scores)[~np.asarray(labels).astype(bool)], max_fpr)


def threshold_on_clean(scores: np.ndarray, max_fpr: float = 0.01) -> float:
    """The lowest alert threshold that lets at most ``max_fpr`` of these scores of
    defect-free clips alert."""
    neg = np.sort(np.asarray(scores, dtype=float))
    if not len(neg):
        return 0.5
    allowed = int(np.floor(max_fpr * len(neg)))  # negatives that may reach the threshold
    top = neg[len(neg) - allowed - 1]  # the highest negative that must stay below it
    return float(min(1.0, np.nextafter(top, np.inf)))


def predict(net: VideoNet, clips: np.ndarray, batch: int = 64) -> tuple[np.ndarray, np.ndarray]:
    """Defect probability and location cell per clip."""
    probs, cells = [], []
    with torch.no_grad():
        for i in range(0, len(clips), batch):
            logit, where = net(torch.from_numpy(clips[i : i + batch]))
            probs.append(torch.sigmoid(logit).numpy())
            cells.append(where.argmax(1).numpy())
    return np.concatenate(probs), np.concatenate(cells)


def fit_inspection(
    cfg: VideoConfig, root: Path, say: Callable[[str], object] = print, extra: dict | None = None
) -> tuple[Path, dict]:
    """What ``vigil train inspection`` does: train on simulated clips, evaluate on 1,000-clip
    sets (held-out, fresh and seen textures: AUROC with its interval, location accuracy,
    recall and false alarms at the threshold, recall per defect kind), pick the alert
    threshold at 1 % false alarms on validation clips and export under ``root/inspection``.
    ``extra``: more manifest entries. Returns the model directory and the evaluation."""
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
        net, cfg, root / "inspection", test_set.clips[:8], report, threshold, extra
    )
    report["model"] = str(path)
    return path, report
