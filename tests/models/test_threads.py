"""``keep_freed_memory``: checked by what it is for, the page faults of training steps,
counted by the kernel in child processes (the setting is process-wide)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHILD = """
import resource, sys, torch
from vigil.models.threads import keep_freed_memory
if sys.argv[1] == "keep":
    assert keep_freed_memory()
torch.set_num_threads(1)
conv = torch.nn.Conv3d(1, 16, 3, stride=(1, 2, 2), padding=1)
x = torch.rand(16, 1, 8, 128, 128)
conv(x).sum().backward()  # the first step's pages are faulted in either way
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(10):
    conv(x).sum().backward()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def _faults(mode: str) -> int:
    out = subprocess.run(
        [sys.executable, "-c", CHILD, mode], capture_output=True, text=True, check=True
    )
    return int(out.stdout.split()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_training_steps_reuse_freed_memory_instead_of_faulting_it_in():
    # each step's activations are over glibc's 32 MB mmap limit: mapped, faulted in 4 KiB
    # page by page and unmapped, every step; kept, later steps reuse the first one's pages
    plain, kept = _faults("plain"), _faults("keep")
    assert plain > 10 * 10_000
    assert kept < plain / 5, (plain, kept)
