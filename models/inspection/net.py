"""The clip classifier's network and its configuration: a 3D-CNN stem, a Transformer over
space-time tokens, per-cell defect and location heads, flips averaged inside the graph."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from vigil.errors import UsageError

GRID = 4  # location cells per side


VIEWS = (1, 2, 4)  # flips averaged at inference: see VideoConfig.views
STEMS = ("small", "deep")  # see VideoConfig.stem


def flip_clips(clips: torch.Tensor, op: int) -> torch.Tensor:
    """(..., H, W) upside down (``op & 1``) and/or left to right (``op & 2``)."""
    if op & 1:
        clips = clips.flip(-2)
    if op & 2:
        clips = clips.flip(-1)
    return clips


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
    # small: two Conv3d layers, tokens at a quarter of the clip's side and half its frames
    # (the simulator's textures; fast). deep: one Conv3d over 4 frames at a time, then
    # three blocks of two per-frame convolutions with batch norm, tokens at a 16th of the
    # side and a quarter of the frames: real surfaces (measured on Magnetic Tile: the
    # small stem underfits them)
    stem: str = "small"
    # the simulated camera's parts fill its frame (a user's photographs, each what the
    # camera sees of a part: `vigil train inspection --images`), else 7/8 of it
    fill: bool = False

    @property
    def reduction(self) -> tuple[int, int]:
        """How many frames and pixels (per side) one token stands for."""
        return (2, 4) if self.stem == "small" else (4, 16)


DEEP_WIDTH = 64  # the deep stem's channels, and so its tokens' width


def stem_config(stem: str) -> dict:
    """VideoConfig fields for ``stem``: the deep stem's tokens are ``DEEP_WIDTH`` wide."""
    return {"stem": stem, "d": DEEP_WIDTH} if stem == "deep" else {"stem": stem}


def _conv_bn(c_in: int, c_out: int) -> list[nn.Module]:
    return [
        nn.Conv3d(c_in, c_out, (1, 3, 3), padding=(0, 1, 1), bias=False),
        nn.BatchNorm3d(c_out),
        nn.ReLU(),
    ]


def _stem(cfg: VideoConfig) -> nn.Sequential:
    if cfg.stem == "small":
        return nn.Sequential(
            nn.Conv3d(1, 16, 3, stride=(1, 2, 2), padding=1),  # (B,16,T,H/2,W/2)
            nn.ReLU(),
            nn.Conv3d(16, cfg.d, 3, stride=2, padding=1),  # (B,d,T/2,H/4,W/4)
            nn.ReLU(),
        )
    layers: list[nn.Module] = [
        nn.Conv3d(1, 16, (4, 5, 5), stride=(4, 2, 2), padding=(0, 2, 2)),  # (B,16,T/4,H/2,W/2)
        nn.ReLU(),
    ]
    for c_in, c_out in ((16, 32), (32, 64), (64, cfg.d)):  # each halves the side
        layers += [*_conv_bn(c_in, c_out), *_conv_bn(c_out, c_out), nn.MaxPool3d((1, 2, 2))]
    # wider at the end: a defect on a real surface is told from its texture by what lies
    # around it (measured on Magnetic Tile: +0.03 AUROC)
    layers += [*_conv_bn(cfg.d, 2 * cfg.d), *_conv_bn(2 * cfg.d, cfg.d)]
    return nn.Sequential(*layers)  # (B,d,T/4,H/16,W/16)


class VideoNet(nn.Module):
    def __init__(self, cfg: VideoConfig) -> None:
        super().__init__()
        if cfg.stem not in STEMS:
            raise UsageError(f"stem is one of {', '.join(STEMS)}, not {cfg.stem!r}")
        per_frames, per_side = cfg.reduction
        if cfg.size % (per_side * GRID) or cfg.frames % per_frames:
            raise UsageError(
                f"with the {cfg.stem} stem, size must be a multiple of {per_side * GRID} "
                f"and frames of {per_frames}"
            )
        if cfg.views not in VIEWS:
            raise UsageError(f"views must be one of {', '.join(map(str, VIEWS))}, not {cfg.views}")
        self.stem = _stem(cfg)
        cell = cfg.size // per_side // GRID
        self.pool = nn.MaxPool3d((1, cell, cell))  # (B,d,T',GRID,GRID): small defects survive
        self.mix = nn.Linear(2 * cfg.d, cfg.d)
        self.t2 = cfg.frames // per_frames
        tokens = self.t2 * GRID * GRID
        self.position = nn.Parameter(torch.zeros(1, tokens, cfg.d))
        layer = nn.TransformerEncoderLayer(
            cfg.d, cfg.heads, dim_feedforward=2 * cfg.d, batch_first=True, dropout=0.0
        )
        self.encoder = nn.TransformerEncoder(layer, cfg.layers, enable_nested_tensor=False)
        self.defect = nn.Linear(cfg.d, 1)
        self.where = nn.Linear(cfg.d, 1)
        self.views = cfg.views
        self.clip_score = cfg.stem == "deep"  # see _view

    def forward(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 1, T, H, W) -> defect logit (B,), location logits (B, GRID * GRID). In
        training one view; in evaluation the mean over ``views`` flips of the clip, the
        location logits flipped back first."""
        if self.training or self.views == 1:
            return self._view(clip)
        ops = range(self.views)  # flip_clips's ops: 0 as is, 1 upside down, 2 and 3 mirrored
        logit, where = self._view(torch.cat([flip_clips(clip, op) for op in ops]))
        logit = logit.view(self.views, -1).mean(0)
        where = where.view(self.views, -1, GRID, GRID)
        where = torch.stack([flip_clips(where[op], op) for op in ops]).mean(0)
        return logit, where.flatten(1)

    def _view(self, clip: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # per-clip standardisation: lighting and texture contrast differ between lines
        mean = clip.mean(dim=(1, 2, 3, 4), keepdim=True)
        std = clip.std(dim=(1, 2, 3, 4), keepdim=True) + 1e-3
        features = self.stem((clip - mean) / std)  # (B, d, T', H', W')
        x = self.pool(features).flatten(3)  # (B, d, T', GRID*GRID)
        # each cell against the clip's other cells: a texture repeats across cells, a
        # defect is where one cell differs
        rel = (x - x.mean(dim=3, keepdim=True)) / (x.std(dim=3, keepdim=True) + 1e-3)
        x = self.mix(torch.cat([x, rel], dim=1).transpose(1, 3)).transpose(1, 3)
        tokens = x.flatten(2).transpose(1, 2) + self.position  # (B, T'*GRID*GRID, d)
        h = self.encoder(tokens)
        where = self.where(h).squeeze(-1).view(-1, self.t2, GRID * GRID).mean(1)
        if self.clip_score:
            # the deep stem: the clip's logit from its features' maxima over space and
            # time (a defect anywhere, in any frame); the Transformer places it
            return self.defect(features.amax(dim=(2, 3, 4))).squeeze(-1), where
        # a defect anywhere makes the clip defective: the most defective cell's logit
        cells = self.defect(h).squeeze(-1).view(-1, self.t2, GRID * GRID).mean(1)
        return cells.max(1).values, where
