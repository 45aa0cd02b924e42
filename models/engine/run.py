"""A training job on the engine, started by ``vigil train nn`` (local ranks, emulated
nodes, restarts) or by torchrun for real multi-node jobs::

    torchrun --nnodes 2 --nproc-per-node 4 --rdzv-endpoint HOST:29400 \\
        -m vigil.models.engine.run --task tabular --checkpoint-dir /shared/ckpt

Under torchrun each node's ranks report their hostname as their node, so the
hierarchical AllReduce groups them by machine; restarts are left to torchrun there.
"""

from __future__ import annotations

import argparse
import functools
import json
from collections.abc import Callable
from dataclasses import fields, replace
from pathlib import Path
from typing import Any

from vigil.errors import UsageError
from vigil.models.engine.trainer import Task, TrainConfig, train_rank

__all__ = ["TASKS", "config_for", "job", "task_factory"]

TASKS = ("tabular", "video", "synthetic")  # and "risk-net": models.tabular's own data

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
    from vigil.models.engine.tasks import risk_net_task, tabular_task, video_standin_task
    from vigil.models.engine.trainer import synthetic_task

    if task == "tabular":
        if prepared is None:
            raise UsageError("the tabular task needs its prepared history (prepare_tabular)")
        return functools.partial(tabular_task, prepared)
    if task == "risk-net" and prepared is not None:
        return functools.partial(risk_net_task, prepared)
    if task == "video":
        return functools.partial(video_standin_task, seed=seed)
    if task == "synthetic":
        return functools.partial(synthetic_task, seed=seed)
    raise UsageError(f"unknown task {task!r}; one of {TASKS}")


def job(
    task: str, cfg: TrainConfig, checkpoint_dir: str | None, prepared: str | None
) -> dict[str, Any]:
    """One rank's part (module level, so spawn can start it)."""
    # rank 0's result carries "state", the trained state dict
    return train_rank(cfg, task_factory(task, prepared, cfg.seed), checkpoint_dir)


def _prepare_once(task: str, checkpoint_dir: str | None) -> str | None:
    """Under torchrun: rank 0 prepares the tabular history next to the checkpoints."""
    import torch.distributed as dist

    if task != "tabular":
        return None
    if checkpoint_dir is None:
        raise UsageError("--checkpoint-dir (shared by all ranks) is needed for the tabular task")
    path = Path(checkpoint_dir) / "tabular-history.pt"
    if dist.get_rank() == 0 and not path.exists():
        from vigil.models.engine.tasks import prepare_tabular

        path.parent.mkdir(parents=True, exist_ok=True)
        prepare_tabular(path)
    dist.barrier()
    return str(path)


def main(argv: list[str] | None = None) -> None:
    import torch.distributed as dist

    from vigil.models.engine.distributed import init_from_env

    parser = argparse.ArgumentParser(prog="python -m vigil.models.engine.run")
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
        result = job(args.task, cfg, args.checkpoint_dir, prepared)
    finally:
        dist.destroy_process_group()
    if rank == 0:
        result.pop("state", None)
        print(json.dumps(result))


if __name__ == "__main__":
    main()
