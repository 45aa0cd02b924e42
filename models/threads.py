"""Scoped torch thread counts: training is deterministic for a seed only at a fixed thread
count (float sums are split by thread), and one trainer's setting must not leak into the
next one in the same process."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import torch

__all__ = ["torch_threads"]


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (default: one per core), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
