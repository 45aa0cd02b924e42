"""Data-parallel training on the engine: DDP with our AllReduce as its communication hook,
the precision scheduler, and checkpoints that resume exactly.

``train_rank`` runs on every rank (under ``spawn``/``supervise`` or torchrun). What a step
does depends only on the step number: the batch is a slice of a permutation seeded by the
epoch, so a job resumed from the checkpoint at step N repeats steps N+1.. exactly.
"""

from __future__ import annotations

import inspect
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn

from vigil.errors import UsageError
from vigil.models.engine.allreduce import Communicator, HookState, comm_hook, discover_topology
from vigil.models.engine.checkpoint import (
    load_checkpoint,
    rng_state,
    save_checkpoint,
    set_rng_state,
)
from vigil.models.engine.distributed import ATTEMPT_ENV
from vigil.models.engine.precision import PrecisionConfig, PrecisionScheduler

__all__ = [
    "FAULT_ENV",
    "Task",
    "TrainConfig",
    "accuracy",
    "bce_loss",
    "synthetic_task",
    "train_rank",
]

log = logging.getLogger("vigil.engine.trainer")
# fault injection for the recovery tests: "RANK:STEP" makes that rank SIGKILL itself after
# that step on the first attempt; "RANK:STEP:always" on every attempt
FAULT_ENV = "VIGIL_FAULT_KILL"


@dataclass(frozen=True)
class TrainConfig:
    steps: int = 300
    batch_per_rank: int = 64
    optimizer: str = "sgd"  # sgd (with momentum) or adam
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 0.0
    select_every: int = 0  # > 0: keep the parameters with the best validation metric,
    # checked before training and every this many steps (rank 0 evaluates)
    seed: int = 0
    checkpoint_every: int = 25  # steps; 0 = never
    algorithm: str = "hierarchical"  # the AllReduce under DDP: flat, hierarchical, leader
    precision: str = "dynamic"  # or one fixed precision for every layer: fp32, bf16, fp16
    probe_every: int = 50  # dynamic: steps between sensitivity measurements


@dataclass(frozen=True)
class Task:
    """A model factory, its training and validation tensors, and a loss."""

    name: str
    make_model: Callable[[], nn.Module]
    x: torch.Tensor
    y: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    metric: Callable[[torch.Tensor, torch.Tensor], float]  # higher is better
    metric_name: str


def accuracy(logits: torch.Tensor, y: torch.Tensor) -> float:
    return float(((logits.squeeze(-1) > 0).float() == y).float().mean())


def bce_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.binary_cross_entropy_with_logits(logits.squeeze(-1), y)


def _mlp(features: int) -> nn.Module:
    return nn.Sequential(
        nn.Linear(features, 64),
        nn.LayerNorm(64),
        nn.ReLU(),
        nn.Linear(64, 64),
        nn.ReLU(),
        nn.Linear(64, 1),
    )


def synthetic_task(samples: int = 8192, features: int = 16, seed: int = 0) -> Task:
    """Binary labels from a fixed random teacher network plus label noise: a stand-in for
    the tabular risk NN that needs no generated history."""
    g = torch.Generator().manual_seed(10_000 + seed)
    x = torch.randn(samples + samples // 4, features, generator=g)
    w1 = torch.randn(features, 32, generator=g)
    w2 = torch.randn(32, generator=g)
    logits = torch.tanh(x @ w1 / features**0.5) @ w2
    noise = torch.rand(len(x), generator=g) < 0.05
    y = ((logits > 0) ^ noise).float()
    return Task(
        "synthetic-tabular",
        lambda: _mlp(features),
        x[:samples],
        y[:samples],
        x[samples:],
        y[samples:],
        bce_loss,
        accuracy,
        "accuracy",
    )


# buffers (none in these models) are not re-broadcast every forward: the probe runs a
# forward on rank 0 alone. torch 2.13 renamed the option; older torch has only the old name.
_NO_BUFFER_SYNC = (
    {"forward_sync_buffers": False}
    if "forward_sync_buffers" in inspect.signature(nn.parallel.DistributedDataParallel).parameters
    else {"broadcast_buffers": False}
)


def _batch(cfg: TrainConfig, samples: int, step: int, rank: int, world: int) -> torch.Tensor:
    per_step = cfg.batch_per_rank * world
    steps_per_epoch = max(1, samples // per_step)
    epoch, i = divmod(step, steps_per_epoch)
    order = torch.randperm(
        samples, generator=torch.Generator().manual_seed(cfg.seed * 7919 + epoch)
    )
    mine = order[i * per_step : (i + 1) * per_step]
    return mine[rank * cfg.batch_per_rank : (rank + 1) * cfg.batch_per_rank]


def train_rank(
    cfg: TrainConfig, task_factory: Callable[[], Task], checkpoint_dir: str | None
) -> dict[str, Any]:
    """One rank of a data-parallel job (the process group is already initialised)."""
    rank, world = dist.get_rank(), dist.get_world_size()
    task = task_factory()
    torch.manual_seed(cfg.seed)  # the same initial weights on every rank
    model = task.make_model()
    ddp = nn.parallel.DistributedDataParallel(model, **_NO_BUFFER_SYNC)
    comm = Communicator(discover_topology())
    ddp.register_comm_hook(HookState(comm, cfg.algorithm), comm_hook)
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(
            model.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay
        )
    elif cfg.optimizer == "sgd":
        opt = torch.optim.SGD(
            model.parameters(), lr=cfg.lr, momentum=cfg.momentum, weight_decay=cfg.weight_decay
        )
    else:
        raise UsageError(f"unknown optimizer {cfg.optimizer!r}: sgd or adam")
    fixed = None if cfg.precision == "dynamic" else cfg.precision
    sched = PrecisionScheduler(model, PrecisionConfig(every_steps=cfg.probe_every), fixed=fixed)

    ckpt = Path(checkpoint_dir) if checkpoint_dir else None
    start = 0
    best_saved = None
    state = load_checkpoint(ckpt) if ckpt else None
    if state is not None:
        if state["world_size"] != world or state["config"] != asdict(cfg):
            raise UsageError(
                f"checkpoint in {ckpt} is from another job (world size {state['world_size']}, "
                f"config {state['config']}); use a fresh --checkpoint-dir"
            )
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["precision"])
        set_rng_state(state["rng"][rank])
        start = state["step"]
        best_saved = state.get("best")
        if rank == 0:
            log.info("resumed from step %d (%s)", start, ckpt)

    spec = os.environ.get(FAULT_ENV, "")
    fault = spec.removesuffix(":always")
    armed = bool(spec) and (spec.endswith(":always") or os.environ.get(ATTEMPT_ENV) == "0")
    losses: list[float] = []
    # (metric, step, params), on rank 0: checkpointed, so a resumed job selects as an
    # uninterrupted one would
    best: tuple[float, int, dict[str, torch.Tensor]] | None = best_saved if rank == 0 else None

    def select(done: int) -> None:
        nonlocal best
        if rank != 0 or not cfg.select_every or (done % cfg.select_every and done != cfg.steps):
            return
        model.eval()
        with torch.no_grad(), sched.autocast():
            score = task.metric(model(task.x_val).float(), task.y_val)
        model.train()
        if best is None or score > best[0]:
            best = (score, done, {k: v.detach().clone() for k, v in model.state_dict().items()})

    select(start)
    begun = time.perf_counter()
    for step in range(start, cfg.steps):
        idx = _batch(cfg, len(task.x), step, rank, world)
        x, y = task.x[idx], task.y[idx]
        if sched.due(step):
            # rank 0 measures, every rank follows it: one precision per layer in the job
            decided = [None]
            if rank == 0:
                with ddp.no_sync():
                    decided[0] = sched.measure(lambda x=x, y=y: task.loss(ddp(x), y), step)
            dist.broadcast_object_list(decided, src=0)
            sched.decisions = dict(decided[0])
        with sched.autocast():
            loss = task.loss(ddp(x), y)
        scale = sched.backward(loss)
        sched.step(opt, scale)  # the gradients are all-reduced: every rank agrees on a skip
        opt.zero_grad(set_to_none=True)
        losses.append(loss.detach().item())
        if armed and fault == f"{rank}:{step}":
            os.kill(os.getpid(), signal.SIGKILL)
        done = step + 1
        select(done)
        if ckpt and cfg.checkpoint_every and done % cfg.checkpoint_every == 0:
            rngs: list[Any] = [None] * world
            dist.all_gather_object(rngs, rng_state())
            if rank == 0:
                save_checkpoint(
                    ckpt,
                    done,
                    {
                        "config": asdict(cfg),
                        "task": task.name,
                        "world_size": world,
                        "model": model.state_dict(),
                        "optimizer": opt.state_dict(),
                        "precision": sched.state_dict(),
                        "rng": rngs,
                        "data": {"next_step": done, "samples": len(task.x)},
                        "best": best,
                    },
                )
    elapsed_s = time.perf_counter() - begun
    if best is not None:
        model.load_state_dict(best[2])
    model.eval()
    with torch.no_grad(), sched.autocast():
        val_logits = model(task.x_val)
        val_loss = float(task.loss(val_logits, task.y_val))
    return {
        "rank": rank,
        "start_step": start,
        "steps_run": cfg.steps - start,
        "final_train_loss": losses[-1] if losses else None,
        "val_loss": val_loss,
        "val_" + task.metric_name: task.metric(val_logits.float(), task.y_val),
        "samples_per_s": (cfg.steps - start) * cfg.batch_per_rank * world / elapsed_s
        if elapsed_s > 0
        else None,
        "decisions": dict(sched.decisions),
        "skipped_steps": sched.scaler.skipped,
        "loss_scale": sched.scaler.scale,
        "state": model.state_dict() if rank == 0 else None,
        "selected_step": best[1] if best is not None else None,
        "selected_" + task.metric_name: best[0] if best is not None else None,
    }
