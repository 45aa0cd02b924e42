"""One rank's part of a training job on the engine, the target that ``spawn``,
``supervise`` and torchrun start. The caller names the task: a picklable factory (a
module-level function, or a ``functools.partial`` of one) that builds it in each rank."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from vigil.models.engine.trainer import Task, TrainConfig, train_rank

__all__ = ["job"]


def job(
    task_factory: Callable[[], Task], cfg: TrainConfig, checkpoint_dir: str | None
) -> dict[str, Any]:
    """Train ``task_factory()`` on this rank (module level, so spawn can start it); rank 0's
    result carries ``state``, the trained state dict."""
    return train_rank(cfg, task_factory, checkpoint_dir)
