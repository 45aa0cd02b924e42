"""Process settings for training.

- Scoped torch thread counts: training is deterministic for a seed only at a fixed thread
  count (float sums are split by thread), and one trainer's setting must not leak into the
  next one in the same process.
- ``keep_freed_memory``: glibc serves every allocation over 32 MB with a fresh ``mmap`` and
  returns it on free, so each training step's large activations (tens of MB per clip batch)
  were page-faulted in anew: half of the clip classifier's training CPU went to the kernel.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Iterator

import torch

__all__ = ["keep_freed_memory", "torch_threads"]

_M_TRIM_THRESHOLD, _M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)


@contextlib.contextmanager
def torch_threads(n: int | None = None) -> Iterator[None]:
    """Run the block with ``n`` intra-op threads (default: one per core), then restore."""
    before = torch.get_num_threads()
    torch.set_num_threads(n or os.cpu_count() or 1)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def keep_freed_memory() -> bool:
    """Make glibc keep freed memory for reuse in this process: no ``mmap`` per large
    allocation and no trimming of the heap below 1 GiB free. The process's resident size
    stays at its peak, which suits a training run. True when applied; False where the C
    library is not glibc (nothing changes there)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library this process already runs on
    except (OSError, AttributeError):  # not glibc: the allocator is left as it is
        return False
    return bool(mallopt(_M_MMAP_MAX, 0)) and bool(mallopt(_M_TRIM_THRESHOLD, 1 << 30))
