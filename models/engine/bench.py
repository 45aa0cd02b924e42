"""``vigil bench allreduce``: flat against hierarchical (and leader) AllReduce across
emulated nodes whose link is shaped to a set bandwidth.

Each rank is its own process (``python -m vigil.models.engine.bench``); node k's ranks run in
node k's network namespace (``linkemu.EmulatedNodes``). For every size and algorithm:
one checked warm-up, then ``iters`` timed all-reduces, each between barriers. Reported per
run (nccl-tests definitions): latency = median over iterations of the slowest rank's time;
algbw = size / latency; busbw = algbw * 2 (n - 1) / n; link utilisation = the bytes that
crossed the busiest link direction (the veth's own counters) over the time it had.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vigil.errors import UsageError
from vigil.models.engine.distributed import DistributedError

__all__ = ["bench_allreduce", "parse_sizes"]

SPEC_ENV = "VIGIL_BENCH_SPEC"
_UNITS = {"B": 1, "KB": 2**10, "MB": 2**20, "GB": 2**30}


def parse_sizes(text: str) -> list[int]:
    """``"1MB,16MB,64MB"`` -> bytes (binary units: 1MB = 2**20 bytes, as in nccl-tests)."""
    sizes = []
    for part in text.split(","):
        p = part.strip().upper()
        unit = next((u for u in ("GB", "MB", "KB", "B") if p.endswith(u)), "B")
        number = p[: len(p) - len(unit)] if p.endswith(unit) else p
        try:
            value = float(number) * _UNITS[unit]
        except ValueError:
            raise UsageError(f"bad size {part!r}: use a number with B, KB, MB or GB") from None
        if value < 4:
            raise UsageError(f"size {part!r} is under one float32 (4 bytes)")
        sizes.append(int(value) // 4 * 4)
    return sizes


def bench_allreduce(
    nodes: int,
    procs_per_node: int,
    link_mbit: float,
    sizes: Sequence[int],
    iters: int = 5,
    algorithms: Sequence[str] = ("flat", "hierarchical", "leader"),
    timeout_s: float = 1800.0,
    say: Callable[[str], None] = lambda _m: None,
) -> dict[str, Any]:
    from vigil.models.engine.distributed import free_port
    from vigil.models.engine.linkemu import EmulatedNodes

    world = nodes * procs_per_node
    with EmulatedNodes(nodes, link_mbit) as emu, tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        spec = {
            "sizes": list(sizes),
            "iters": iters,
            "algorithms": list(algorithms),
            "links": [emu.host_interface(k) for k in range(1, nodes)],
            "out": str(out),
        }
        port = free_port(emu.address(0))
        say(f"{nodes} nodes x {procs_per_node} ranks, links {link_mbit} Mbit/s ({emu.prefix})")
        procs = []
        for rank in range(world):
            node = rank // procs_per_node
            env = {
                **os.environ,
                "RANK": str(rank),
                "WORLD_SIZE": str(world),
                "MASTER_ADDR": emu.address(0),
                "MASTER_PORT": str(port),
                "GLOO_SOCKET_IFNAME": emu.interface(node),
                "VIGIL_NODE": f"node{node}",
                "OMP_NUM_THREADS": "1",
                SPEC_ENV: json.dumps(spec),
            }
            argv = emu.command(node, [sys.executable, "-m", "vigil.models.engine.bench"])
            procs.append(
                subprocess.Popen(argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            )
        deadline = time.monotonic() + timeout_s
        try:
            while any(p.poll() is None for p in procs):
                failed = [p for p in procs if p.returncode not in (None, 0)]
                if failed or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
        finally:
            for p in procs:
                if p.poll() is None:
                    p.kill()
            logs = [p.communicate()[0].decode(errors="replace") for p in procs]
        bad = [(r, p.returncode) for r, p in enumerate(procs) if p.returncode != 0]
        if bad or not out.exists():
            rank, code = bad[0] if bad else (0, 0)
            tail = "\n".join(logs[rank].strip().splitlines()[-15:])
            raise DistributedError(f"rank {rank} ended with code {code}:\n{tail}")
        result = json.loads(out.read_text())
    for r in result["runs"]:
        r["link_utilization"] = round(r["link_MBps"] * 8 / link_mbit, 3)
    result.update(
        {"nodes": nodes, "procs_per_node": procs_per_node, "link_mbit": link_mbit, "iters": iters}
    )
    return result


def _link_bytes(links: Sequence[str]) -> list[int]:
    """tx and rx bytes of every link's host end (readable from the host namespace)."""
    out = []
    for name in links:
        stats = Path("/sys/class/net") / name / "statistics"
        out += [int((stats / "tx_bytes").read_text()), int((stats / "rx_bytes").read_text())]
    return out


def _rank_main() -> None:
    import torch
    import torch.distributed as dist

    from vigil.models.engine.allreduce import Communicator, discover_topology
    from vigil.models.engine.distributed import init_from_env

    spec = json.loads(os.environ[SPEC_ENV])
    torch.set_num_threads(1)
    rank, world = init_from_env(timeout_s=600)
    comm = Communicator(discover_topology())
    runs = []
    for size in spec["sizes"]:
        t = torch.empty(size // 4)
        for algorithm in spec["algorithms"]:
            t.fill_(rank + 1)  # warm-up (connections, buffers), and a correctness check
            comm.all_reduce(t, algorithm)
            correct = bool(torch.all(t == world * (world + 1) / 2))
            times = []
            dist.barrier()
            before = _link_bytes(spec["links"]) if rank == 0 else []
            for _ in range(spec["iters"]):
                t.fill_(1.0)
                dist.barrier()
                start = time.perf_counter()
                comm.all_reduce(t, algorithm)
                times.append(time.perf_counter() - start)
            dist.barrier()
            after = _link_bytes(spec["links"]) if rank == 0 else []
            every: list[Any] = [None] * world
            dist.all_gather_object(every, (times, correct))
            if rank != 0:
                continue
            slowest = [max(ts[i] for ts, _ in every) for i in range(spec["iters"])]
            latency_s = statistics.median(slowest)
            algbw = size / latency_s
            busiest = max(a - b for a, b in zip(after, before, strict=True)) if after else 0
            runs.append(
                {
                    "size_bytes": size,
                    "algorithm": algorithm,
                    "correct": all(ok for _, ok in every),
                    "latency_ms": round(latency_s * 1e3, 2),
                    "algbw_MBps": round(algbw / 1e6, 2),
                    "busbw_MBps": round(algbw * 2 * (world - 1) / world / 1e6, 2),
                    "link_bytes_per_iter": busiest // spec["iters"],
                    "_busiest": busiest,
                    "_timed_s": sum(slowest),
                }
            )
    if rank == 0:
        result = {"world_size": world, "runs": runs, "speedup": _speedups(runs)}
        for r in runs:  # the busiest link direction's rate while the timed calls ran
            busiest, timed = r.pop("_busiest"), r.pop("_timed_s")
            r["link_MBps"] = round(busiest / timed / 1e6, 2)
        Path(spec["out"]).write_text(json.dumps(result))
    dist.destroy_process_group()


def _speedups(runs: list[dict]) -> dict[str, dict[str, float]]:
    """Flat latency over each other algorithm's, per size."""
    by = {(r["size_bytes"], r["algorithm"]): r["latency_ms"] for r in runs}
    out: dict[str, dict[str, float]] = {}
    for (size, algorithm), latency in by.items():
        flat = by.get((size, "flat"))
        if algorithm != "flat" and flat:
            out.setdefault(algorithm, {})[str(size)] = round(flat / latency, 3)
    return out


if __name__ == "__main__":
    _rank_main()
