"""Starting data-parallel processes on one machine, with emulated nodes.

``spawn(fn, nprocs, nodes)`` runs ``fn(*args)`` in ``nprocs`` fresh processes joined by one
gloo (or NCCL) rendezvous and returns what each rank returned, in rank order. Ranks are
split evenly over ``nodes`` emulated nodes: rank r is on node ``r // (nprocs // nodes)``,
which it reports as its node name (``VIGIL_NODE``) instead of the hostname they all share.
Under torchrun (``RANK``/``WORLD_SIZE``/``MASTER_ADDR`` set) ``init_from_env`` joins the
job torchrun started; the node name is then the hostname unless ``VIGIL_NODE`` says
otherwise.
"""

from __future__ import annotations

import datetime
import logging
import multiprocessing as mp
import os
import pickle
import queue
import signal
import socket
import time
import traceback
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from vigil.errors import UsageError, VigilError

log = logging.getLogger("vigil.engine.distributed")

__all__ = [
    "ATTEMPT_ENV",
    "DistributedError",
    "Rendezvous",
    "backend_for",
    "free_port",
    "init_from_env",
    "node_name",
    "spawn",
    "supervise",
]

NODE_ENV = "VIGIL_NODE"
ATTEMPT_ENV = "VIGIL_ATTEMPT"  # 0 on the first start, 1.. after supervise() restarts


class DistributedError(VigilError, RuntimeError):
    """A rank failed, or the job could not be started. ``retryable`` is False when the
    cause was bad input (a ValueError in a rank), which a restart would only repeat."""

    def __init__(self, message: str, retryable: bool = True) -> None:
        super().__init__(message)
        self.retryable = retryable


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def backend_for(device: str) -> str:
    return "nccl" if device.startswith("cuda") else "gloo"


def node_name() -> str:
    """This rank's node: ``VIGIL_NODE`` (emulated nodes) or the hostname."""
    return os.environ.get(NODE_ENV) or socket.gethostname()


@dataclass(frozen=True)
class Rendezvous:
    """Where ranks meet: rank 0 hosts a TCP store at ``addr:port``."""

    addr: str
    port: int
    world_size: int
    backend: str = "gloo"
    timeout_s: float = 120.0

    def init(self, rank: int) -> None:
        dist.init_process_group(
            self.backend,
            init_method=f"tcp://{self.addr}:{self.port}",
            rank=rank,
            world_size=self.world_size,
            timeout=datetime.timedelta(seconds=self.timeout_s),
        )


def init_from_env(backend: str = "gloo", timeout_s: float = 120.0) -> tuple[int, int]:
    """Join a job started by torchrun (or anything that sets the ``env://`` variables).
    Returns ``(rank, world_size)``."""
    missing = [
        k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ
    ]
    if missing:
        raise DistributedError(f"not started by torchrun: {', '.join(missing)} not set")
    dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def _node_of(rank: int, nprocs: int, nodes: int) -> int:
    return rank // (nprocs // nodes)


def _entry(
    fn: Callable[..., Any],
    rank: int,
    rdzv: Rendezvous,
    node: str,
    attempt: int,
    args: Sequence[Any],
    results: Any,
) -> None:
    os.environ[NODE_ENV] = node
    os.environ[ATTEMPT_ENV] = str(attempt)
    torch.set_num_threads(1)  # ranks share the machine's cores
    try:
        rdzv.init(rank)
    except BaseException:
        results.put((rank, False, (time.time(), traceback.format_exc(), False)))
        raise SystemExit(1) from None
    try:
        value = fn(*args)
        # pickled here: a queue pickles in a background thread and drops what fails there
        results.put((rank, True, pickle.dumps(value)))
    except BaseException as exc:
        # reported before the process group closes: closing breaks the other ranks, whose
        # errors must not look like the cause
        fatal = isinstance(exc, ValueError)
        results.put((rank, False, (time.time(), traceback.format_exc(), fatal)))
        raise SystemExit(1) from None
    finally:
        dist.destroy_process_group()


def spawn(
    fn: Callable[..., Any],
    nprocs: int,
    nodes: int = 1,
    args: Sequence[Any] = (),
    backend: str = "gloo",
    timeout_s: float = 300.0,
) -> list[Any]:
    """Run ``fn(*args)`` on ``nprocs`` ranks (``nodes`` emulated nodes) and return each
    rank's result. ``fn`` must be importable (a module-level function). Any rank's failure
    raises ``DistributedError`` with that rank's traceback; the other ranks are stopped."""
    return _attempt(fn, nprocs, nodes, args, backend, timeout_s, attempt=0)


def supervise(
    fn: Callable[..., Any],
    nprocs: int,
    nodes: int = 1,
    args: Sequence[Any] = (),
    max_restarts: int = 3,
    backend: str = "gloo",
    timeout_s: float = 600.0,
    say: Callable[[str], None] = lambda _m: None,
) -> list[Any]:
    """``spawn`` that survives rank failures: when a rank dies (an exception, a signal,
    SIGKILL included), every rank of the job is stopped and all are started again with a
    fresh rendezvous, up to ``max_restarts`` times. ``fn`` resumes from its own checkpoints
    (``VIGIL_ATTEMPT`` tells it which attempt it is). Bad input (a ValueError in a rank)
    is not retried. torchrun's own restarts did not
    recover gloo workers on this machine: their old rendezvous and sockets linger."""
    for attempt in range(max_restarts + 1):
        try:
            return _attempt(fn, nprocs, nodes, args, backend, timeout_s, attempt)
        except DistributedError as exc:
            if not exc.retryable:
                raise
            if attempt == max_restarts:
                raise DistributedError(f"gave up after {attempt + 1} attempts: {exc}") from None
            first = str(exc).splitlines()[0]
            log.warning("attempt %d failed (%s); restarting every rank", attempt + 1, first)
            say(f"attempt {attempt + 1} failed ({first}); restarting every rank")
    raise AssertionError("unreachable")


def _attempt(
    fn: Callable[..., Any],
    nprocs: int,
    nodes: int,
    args: Sequence[Any],
    backend: str,
    timeout_s: float,
    attempt: int,
) -> list[Any]:
    if nprocs < 1 or nodes < 1 or nprocs % nodes:
        raise UsageError(f"{nprocs} processes cannot be split evenly over {nodes} nodes")
    ctx = mp.get_context("spawn")
    results = ctx.Queue()
    rdzv = Rendezvous("127.0.0.1", free_port(), nprocs, backend, timeout_s)
    procs = [
        ctx.Process(
            target=_entry,
            args=(fn, r, rdzv, f"node{_node_of(r, nprocs, nodes)}", attempt, args, results),
            daemon=False,
        )
        for r in range(nprocs)
    ]
    for p in procs:
        p.start()
    out: dict[int, Any] = {}
    failures: list[tuple[float, int, str]] = []  # (when, rank, traceback)
    fatal = False
    try:
        while len(out) < nprocs and not failures:
            try:
                rank, ok, value = results.get(timeout=0.5)
            except queue.Empty:  # ranks that ended without a word (a signal, SIGKILL)
                gone = [r for r, p in enumerate(procs) if p.exitcode is not None and r not in out]
                if gone and results.empty():
                    failures.append((time.time(), gone[0], _exit_text(procs[gone[0]].exitcode)))
                continue
            if ok:
                out[rank] = pickle.loads(value)
            else:
                failures.append((value[0], rank, value[1]))
                fatal = fatal or value[2]
        if failures:
            # the first rank to fail is the cause; the others then fail on their broken
            # connections to it, and their reports can arrive first
            end = time.monotonic() + 2.0
            while time.monotonic() < end:
                try:
                    r, ok, v = results.get(timeout=max(0.0, end - time.monotonic()))
                except queue.Empty:
                    break
                if not ok:
                    failures.append((v[0], r, v[1]))
                    fatal = fatal or v[2]
    finally:
        stopped = set()  # ranks this supervisor killed: never the cause
        for r, p in enumerate(procs):
            if failures and p.is_alive():
                p.kill()
                stopped.add(r)
            p.join(timeout=timeout_s)
    if failures:
        reports: dict[int, tuple[float, str]] = {}
        for when, r, trace in sorted(failures):
            reports.setdefault(r, (when, trace))
        for r, p in enumerate(procs):
            # a rank killed by a signal (not ours) is the cause, however late it was
            # noticed: the others' tracebacks are their broken connections to it
            if r not in stopped and p.exitcode is not None and p.exitcode < 0:
                reports[r] = (0.0, _exit_text(p.exitcode))
        ordered = sorted((when, r, trace) for r, (when, trace) in reports.items())
        _, first, trace = ordered[0]
        others = sorted({r for _, r, _ in ordered[1:]} - {first})
        raise DistributedError(
            f"rank {first} failed: {trace}"
            + (f"\n(then ranks {', '.join(map(str, others))} failed too)" if others else ""),
            retryable=not fatal,
        )
    return [out[r] for r in range(nprocs)]


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exited with code {code} without a result"
