"""Fault injection for worker processes started by the integration tests.

Put this directory on a worker's PYTHONPATH and set:

- ``VIGIL_FAULT_SLOW_SEEK_S``: the consumer's seek to committed offsets returns that much later;
- ``VIGIL_FAULT_SLOW_FLUSH_S``: every flush of a micro-batch's outputs waits that much longer
  (like a slow broker); meanwhile the fetcher fills the stream queue;
- ``VIGIL_FAULT_RAISE_ON``: the risk pipeline raises (a bug) on any batch holding a record
  whose value contains these bytes.

Together they widen a faust race that is otherwise a few milliseconds wide (apps/transport.py,
``install_faust_safe_resume``): without that fix a restarted worker drops the records
fetched while it seeks and commits past them.
"""

import importlib.abc
import importlib.util
import os
import sys

_slow_seek_s = float(os.environ.get("VIGIL_FAULT_SLOW_SEEK_S") or 0)
_slow_flush_s = float(os.environ.get("VIGIL_FAULT_SLOW_FLUSH_S") or 0)
_raise_on = os.environ.get("VIGIL_FAULT_RAISE_ON", "").encode()


def _slow_seek(module) -> None:
    thread = module.AIOKafkaConsumerThread
    original = thread.seek_to_committed

    async def seek_to_committed(self):
        import asyncio

        offsets = await original(self)
        await asyncio.sleep(_slow_seek_s)  # seeked, but faust does not know it yet
        return offsets

    thread.seek_to_committed = seek_to_committed


def _slow_flush(module) -> None:
    original = module.Outputs.flush

    async def flush(self):
        import asyncio

        await asyncio.sleep(_slow_flush_s)
        return await original(self)

    module.Outputs.flush = flush


def _raise_on_bytes(module) -> None:
    original = module.RiskPipeline.process

    def process(self, records, *args, **kwargs):
        if any(_raise_on in (r.value or b"") for r in records):
            raise RuntimeError("injected fault: a bug in the batch path")
        return original(self, records, *args, **kwargs)

    module.RiskPipeline.process = process


class _PatchOnImport(importlib.abc.MetaPathFinder):
    def __init__(self, patches) -> None:
        self.patches = patches

    def find_spec(self, name, path, target=None):
        patch = self.patches.pop(name, None)  # popped first: find_spec below comes back here
        if patch is None:
            return None
        spec = importlib.util.find_spec(name)
        exec_module = spec.loader.exec_module

        def exec_and_patch(module) -> None:
            exec_module(module)
            patch(module)

        spec.loader.exec_module = exec_and_patch
        return spec


_patches = {}
if _slow_seek_s > 0:
    _patches["faust.transport.drivers.aiokafka"] = _slow_seek
if _slow_flush_s > 0:
    _patches["vigil.apps.worker"] = _slow_flush
if _raise_on:
    _patches["vigil.streams.pipeline"] = _raise_on_bytes
if _patches:
    sys.meta_path.insert(0, _PatchOnImport(_patches))
