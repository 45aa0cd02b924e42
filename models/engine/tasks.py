"""Training tasks for the engine's benchmarks: the real tabular risk NN on the generated,
featurised history, and a small 3D-CNN + Transformer clip classifier on synthetic clips
(a stand-in until the inspection model exists).

Task factories run in every rank, so they take only picklable arguments (a file of
prepared tensors, a seed) and are module-level functions.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from vigil.models.engine.trainer import Task, accuracy, bce_loss

__all__ = ["prepare_tabular", "tabular_task", "video_standin_task"]


def prepare_tabular(path: Path, days: int = 14, seed: int = 7) -> Path:
    """Generate and featurise ``days`` of labelled history once (the slow part) and save
    the train/held-out tensors for ``tabular_task``."""
    from vigil.models.tabular import _normaliser, history_from_generator, temporal_split

    history = history_from_generator(days, seed=seed)
    train, test = temporal_split(history, holdout_days=max(1.0, days / 4))
    mean, std = _normaliser(train.features)
    torch.save(
        {
            "x": torch.from_numpy(train.features),
            "y": torch.from_numpy(train.labels.astype(np.float32)),
            "x_val": torch.from_numpy(test.features),
            "y_val": torch.from_numpy(test.labels.astype(np.float32)),
            "mean": mean,
            "std": std,
        },
        path,
    )
    return path


class _Logit(nn.Module):
    """The risk NN (``TabularNet``, NN-only) with its logit as output, for training."""

    def __init__(self, mean: np.ndarray, std: np.ndarray) -> None:
        super().__init__()
        from vigil.models.tabular import TabularNet

        self.net = TabularNet(mean, std, hidden=64, use_gbdt=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.logit(x).unsqueeze(-1)


def _average_precision(logits: torch.Tensor, y: torch.Tensor) -> float:
    from vigil.models.metrics import average_precision

    return average_precision(y.numpy(), logits.squeeze(-1).double().numpy())


def tabular_task(path: str) -> Task:
    data = torch.load(path, weights_only=False)
    mean, std = data["mean"], data["std"]
    return Task(
        "risk-nn",
        lambda: _Logit(mean, std),
        data["x"],
        data["y"],
        data["x_val"],
        data["y_val"],
        bce_loss,
        _average_precision,
        "auc_pr",
    )


class ClipClassifier(nn.Module):
    """(B, 1, T, H, W) clip -> defect logit: a Conv3d stem, one token per remaining
    space-time cell, a Transformer encoder, mean pooling."""

    def __init__(self, d: int = 32) -> None:
        super().__init__()
        self.stem = nn.Sequential(
            nn.Conv3d(1, 16, 3, stride=(1, 2, 2), padding=1),  # -> (B, 16, T, H/2, W/2)
            nn.ReLU(),
            nn.Conv3d(16, d, 3, stride=2, padding=1),  # -> (B, d, T/2, H/4, W/4)
            nn.ReLU(),
        )
        layer = nn.TransformerEncoderLayer(d, nhead=4, dim_feedforward=2 * d, batch_first=True)
        self.encoder = nn.TransformerEncoder(layer, num_layers=2, enable_nested_tensor=False)
        self.head = nn.Linear(d, 1)

    def forward(self, clip: torch.Tensor) -> torch.Tensor:
        tokens = self.stem(clip).flatten(2).transpose(1, 2)  # (B, T/2 * H/4 * W/4, d)
        return self.head(self.encoder(tokens).mean(1))


def _clips(n: int, g: torch.Generator, frames: int = 8, size: int = 16) -> tuple:
    """Moving noise texture; half the clips carry a 3x3 blob that drifts down over it."""
    base = torch.rand(n, 1, 1, size + frames, size + frames, generator=g)
    clips = torch.stack(
        [base[:, :, 0, t : t + size, t : t + size] for t in range(frames)], dim=2
    )  # (n, 1, T, size, size): the texture slides one pixel per frame
    y = (torch.rand(n, generator=g) < 0.5).float()
    at = torch.randint(1, size - 3 - frames // 2, (n, 2), generator=g)
    for i in torch.nonzero(y).squeeze(1).tolist():
        r, c = at[i].tolist()
        for t in range(frames):
            clips[i, 0, t, r + t // 2 : r + t // 2 + 3, c : c + 3] += 0.45
    return clips + 0.1 * torch.randn(clips.shape, generator=g), y


def video_standin_task(samples: int = 2048, seed: int = 0) -> Task:
    g = torch.Generator().manual_seed(20_000 + seed)
    x, y = _clips(samples, g)
    x_val, y_val = _clips(samples // 4, g)
    return Task("video-standin", ClipClassifier, x, y, x_val, y_val, bce_loss, accuracy, "accuracy")


class _HybridLogit(nn.Module):
    """``TabularNet`` taking its input as one tensor: the features, then (hybrid) the
    GBDT logit as the last column."""

    def __init__(self, *net_args: object) -> None:  # TabularNet's
        super().__init__()
        from vigil.models.tabular import TabularNet

        self.net = TabularNet(*net_args)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net.use_gbdt:
            return self.net.logit(x[:, :-1], x[:, -1]).unsqueeze(-1)
        return self.net.logit(x).unsqueeze(-1)


def risk_net_task(path: str) -> Task:
    """The hybrid's NN (or the NN-only baseline) as ``models.tabular.train`` fits it, from
    the tensors it saved: features (+ out-of-fold GBDT logit), labels, the selection block."""
    d = torch.load(path, weights_only=False)
    return Task(
        "risk-hybrid-nn" if d["use_gbdt"] else "risk-nn",
        lambda: _HybridLogit(d["mean"], d["std"], d["hidden"], d["use_gbdt"], d.get("keep")),
        d["x"],
        d["y"],
        d["x_val"],
        d["y_val"],
        bce_loss,
        _average_precision,
        "auc_pr",
    )
