"""Training the clip classifier: Adam with the learning rate decaying to 0, flips and
contrast jitter; fine-tuning for quantization."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import torch
import torch.nn.functional as F

from vigil.models.inspection.data import ClipDataset
from vigil.models.inspection.net import GRID, VideoConfig, VideoNet, flip_clips
from vigil.models.threads import keep_freed_memory, torch_threads


def _flip(clips: torch.Tensor, cells: torch.Tensor, op: int) -> tuple[torch.Tensor, ...]:
    """Clips (B, C, T, H, W) flipped upside down (``op & 1``) and/or left to right
    (``op & 2``), with their location cells (-1: none) moved along. (Quarter turns hurt:
    the belt always runs left to right.)"""
    row, col = cells // GRID, cells % GRID
    if op & 1:
        row = GRID - 1 - row
    if op & 2:
        col = GRID - 1 - col
    return flip_clips(clips, op), torch.where(cells >= 0, row * GRID + col, cells)


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
