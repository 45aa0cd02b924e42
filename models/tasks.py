"""The networks the engine trains by name: ``vigil train nn --task``, ``vigil bench
precision`` and torchrun for real multi-node jobs::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-endpoint HOST:29400 \\
        -m vigil.models.tasks --task tabular --checkpoint-dir /shared/ckpt

Tasks: the real tabular risk NN on the generated, featurised history (``tabular``), a small
3D-CNN + Transformer clip classifier on synthetic clips (``video``), and the engine's own
synthetic task. The engine (``models.engine``) knows none of them: callers hand it a task
factory. Task factories run in every rank, so they take only picklable arguments (a file of
prepared tensors, a seed) and are module-level functions.

Under torchrun each node's ranks report their hostname as their node, so the hierarchical
AllReduce groups them by machine; restarts are left to torchrun there.
"""

from __future__ import annotations

import argparse
import functools
import json
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from vigil.errors import UsageError
from vigil.models.engine.distributed import spawn
from vigil.models.engine.run import job
from vigil.models.engine.trainer import Task, TrainConfig, accuracy, bce_loss, synthetic_task
from vigil.models.metrics import average_precision
from vigil.models.risk import (
    WARMUP_DAYS,
    TabularNet,
    history_from_generator,
    normaliser,
    temporal_split,
)

__all__ = [
    "PRECISION_MODES",
    "TASKS",
    "bench_precision",
    "config_for",
    "prepare_tabular",
    "tabular_task",
    "task_factory",
    "video_standin_task",
]

TASKS = ("tabular", "video", "synthetic")

# per task: steps, optimizer and the global batch, split over the ranks by config_for
DEFAULTS = {
    "tabular": (TrainConfig(steps=600, optimizer="adam", lr=1e-3), 256),
    "video": (TrainConfig(steps=400, optimizer="adam", lr=2e-3), 32),
    "synthetic": (TrainConfig(), 128),
}


def config_for(task: str, nproc: int, **overrides: Any) -> TrainConfig:
    """The task's defaults for ``nproc`` ranks (the same global batch), then ``overrides``."""
    base, global_batch = DEFAULTS[task]
    return replace(base, batch_per_rank=max(1, global_batch // nproc), **overrides)


def task_factory(task: str, prepared: str | None, seed: int = 0) -> Callable[[], Task]:
    """The named task's factory for every rank (``prepared``: ``prepare_tabular``'s file)."""
    if task == "tabular":
        if prepared is None:
            raise UsageError("the tabular task needs its prepared history (prepare_tabular)")
        return functools.partial(tabular_task, prepared)
    if task == "video":
        return functools.partial(video_standin_task, seed=seed)
    if task == "synthetic":
        return functools.partial(synthetic_task, seed=seed)
    raise UsageError(f"unknown task {task!r}; one of {TASKS}")


def prepare_tabular(path: Path, days: int = 14, seed: int = 7) -> Path:
    """Generate and featurise ``days`` of labelled history once (the slow part) and save
    the train/held-out tensors for ``tabular_task``."""

    history = history_from_generator(days, seed=seed, warmup_days=WARMUP_DAYS)
    train, test = temporal_split(history, holdout_days=max(1.0, days / 4))
    mean, std = normaliser(train.features)
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

        self.net = TabularNet(mean, std, hidden=64, use_gbdt=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.logit(x).unsqueeze(-1)


def _average_precision(logits: torch.Tensor, y: torch.Tensor) -> float:

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


def _prepare_once(task: str, checkpoint_dir: str | None) -> str | None:
    """Under torchrun: rank 0 prepares the tabular history next to the checkpoints."""
    import torch.distributed as dist

    if task != "tabular":
        return None
    if checkpoint_dir is None:
        raise UsageError("--checkpoint-dir (shared by all ranks) is needed for the tabular task")
    path = Path(checkpoint_dir) / "tabular-history.pt"
    if dist.get_rank() == 0 and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        prepare_tabular(path)
    dist.barrier()
    return str(path)


def main(argv: list[str] | None = None) -> None:
    import torch.distributed as dist

    from vigil.models.engine.distributed import init_from_env

    parser = argparse.ArgumentParser(prog="python -m vigil.models.tasks")
    parser.add_argument("--task", choices=TASKS, default="tabular")
    parser.add_argument("--checkpoint-dir", default=None)
    for f in fields(TrainConfig):
        parser.add_argument(f"--{f.name.replace('_', '-')}", type=type(f.default), default=None)
    args = parser.parse_args(argv)
    overrides = {f.name: getattr(args, f.name) for f in fields(TrainConfig)}
    rank, world = init_from_env()
    cfg = config_for(args.task, world, **{k: v for k, v in overrides.items() if v is not None})
    try:
        prepared = _prepare_once(args.task, args.checkpoint_dir)
        factory = task_factory(args.task, prepared, cfg.seed)
        result = job(factory, cfg, args.checkpoint_dir)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        result.pop("state", None)
        print(json.dumps(result))


PRECISION_MODES = ("fp32", "bf16", "dynamic")


def bench_precision(
    tasks: Sequence[str] = ("tabular", "video"),
    modes: Sequence[str] = PRECISION_MODES,
    nproc: int = 1,
    seed: int = 0,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    """Train each task in each precision mode on the engine (``nproc`` data-parallel
    ranks): samples/s and the final validation metric. ``bf16`` is static autocast of every
    layer (sensitive ops still fp32); ``dynamic`` is the precision scheduler."""

    # tabular: the real risk NN (NN-only) on 14 generated days, ~15 epochs of Adam;
    # video: the 3D-CNN + Transformer stand-in on 2048 synthetic 8x16x16 clips
    unknown = sorted(set(tasks) - {"tabular", "video"}) + sorted(set(modes) - set(PRECISION_MODES))
    if unknown:
        raise UsageError(f"unknown task or mode {unknown[0]!r}")
    out: dict[str, Any] = {"nproc": nproc, "device": "cpu", "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for task in tasks:
            prepared = None
            if task == "tabular":
                say("generating and featurising 14 days of history for the risk NN")
                prepared = str(prepare_tabular(Path(tmp) / "tabular.pt", seed=7 + seed))
            rows = {}
            for mode in modes:
                cfg = config_for(task, nproc, seed=seed, precision=mode, checkpoint_every=0)
                say(f"{task}: training in {mode} ({cfg.steps} steps on {nproc} rank(s))")
                factory = task_factory(task, prepared, cfg.seed)
                r = spawn(job, nprocs=nproc, args=(factory, cfg, None))[0]
                metric = next(k for k in r if k.startswith("val_") and k != "val_loss")
                counts = {
                    p: list(r["decisions"].values()).count(p) for p in ("fp32", "bf16", "fp16")
                }
                rows[mode] = {
                    "samples_per_s": round(r["samples_per_s"], 1),
                    metric: round(r[metric], 5),
                    "val_loss": round(r["val_loss"], 5),
                    "layers": counts,
                    "skipped_steps": r["skipped_steps"],
                }
            entry: dict[str, Any] = {"metric": metric, "modes": rows}
            if "fp32" in rows:
                base = rows["fp32"][metric]
                for mode in rows:
                    if mode != "fp32":
                        entry[f"{mode}_metric_vs_fp32_pct"] = round(
                            100 * (rows[mode][metric] - base) / base, 3
                        )
                        entry[f"{mode}_speed_vs_fp32"] = round(
                            rows[mode]["samples_per_s"] / rows["fp32"]["samples_per_s"], 3
                        )
            out["tasks"][task] = entry
    return out


if __name__ == "__main__":
    main()
