"""Atomic, self-describing training checkpoints that resume exactly.

A checkpoint is one file ``step-<N>.pt`` holding everything the next step depends on:
model and optimizer state, the precision scheduler (decisions, loss scale), every rank's
RNG states, the data position and the config it was trained with. It is written to a
temporary file, flushed to disk and renamed, so a crash mid-write leaves the previous
checkpoint intact; a file that still fails to load (a torn disk) is skipped for the one
before it.
"""

from __future__ import annotations

import logging
import os
import random
import re
from pathlib import Path
from typing import Any

import numpy as np
import torch

__all__ = ["latest_checkpoint", "load_checkpoint", "rng_state", "save_checkpoint", "set_rng_state"]

log = logging.getLogger("vigil.engine.checkpoint")
_NAME = re.compile(r"^step-(\d{8})\.pt$")


def rng_state() -> dict[str, Any]:
    """This process's random generators (python, numpy, torch, CUDA when present)."""
    state = {
        "python": random.getstate(),
        "numpy": np.random.get_state(),
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(directory: Path, step: int, state: dict[str, Any], keep: int = 3) -> Path:
    """Write ``state`` as step ``step`` atomically; keep the newest ``keep`` files."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"step-{step:08d}.pt"
    tmp = directory / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as f:
        torch.save({**state, "step": step}, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    dir_fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(dir_fd)  # the rename itself survives a crash
    finally:
        os.close(dir_fd)
    for old in _steps(directory)[:-keep]:
        old[1].unlink(missing_ok=True)
    return path


def _steps(directory: Path) -> list[tuple[int, Path]]:
    if not directory.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in directory.iterdir() if (m := _NAME.match(p.name))]
    return sorted(found)


def latest_checkpoint(directory: Path) -> Path | None:
    steps = _steps(directory)
    return steps[-1][1] if steps else None


def load_checkpoint(directory: Path) -> dict[str, Any] | None:
    """The newest checkpoint that loads, or None when there is none."""
    for _step, path in reversed(_steps(directory)):
        try:
            return torch.load(path, map_location="cpu", weights_only=False)
        except Exception as exc:  # truncated or corrupt: fall back to the one before
            log.warning("checkpoint %s does not load (%s); trying the previous one", path, exc)
    return None
