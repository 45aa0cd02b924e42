"""AllReduce for data-parallel training: flat, hierarchical and leader-based, over
torch.distributed process groups built from the machine topology.

- ``flat``: one ``all_reduce`` over every rank (gloo's ring; NCCL's ring/tree): the
  baseline. Across a slow inter-node link a ring moves ``2 (n-1)/n`` of the tensor per rank.
- ``hierarchical``: reduce-scatter inside each node, all-reduce of each shard among the
  ranks with the same local rank (one per node), all-gather inside the node. Each node
  sends only ``2 (m-1)/m`` of the tensor over the link (m nodes), split over its ranks.
- ``leader``: reduce to each node's first rank, all-reduce among those leaders, broadcast
  inside the node. Same link volume as ``hierarchical`` but one rank does all the link work;
  it also works when nodes have different numbers of ranks.
- ``hierarchical-bf16``: ``hierarchical`` with half the bytes on the link: each node's
  partial sums cross it as bf16 and are added up in fp32 on arrival (an all-gather among
  the peers, then a local sum in the same order everywhere). With an error-feedback key
  (the DDP hook passes its bucket) the rounding error of each step is carried into the
  next, so nothing is lost over training (the sum of what was sent telescopes to the sum of
  the true partials, less one residual). The residual buffers are kept in bf16: they hold
  the rounding error, 2^-8 of the values, so their own rounding is 2^-16 of a gradient.

Reductions always run in fp32, whatever the tensor's dtype: low-precision sums lose the
small gradients of large models (bf16 keeps 8 bits of mantissa).
"""

# no `from __future__ import annotations`: DDP checks comm_hook's annotations as objects

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
import torch.distributed as dist

from vigil.errors import UsageError
from vigil.models.engine.distributed import node_name

__all__ = [
    "ALGORITHMS",
    "Communicator",
    "HookState",
    "Topology",
    "all_reduce_coalesced",
    "bucket_by_size",
    "comm_hook",
    "discover_topology",
]

ALGORITHMS = ("flat", "hierarchical", "leader", "hierarchical-bf16")

# torch 2.13 renamed the single-tensor collectives; the old names warn there and are all
# that older torch (the GPU machine's 2.11) has
_reduce_scatter = getattr(dist, "reduce_scatter_single", dist.reduce_scatter_tensor)
_all_gather = getattr(dist, "all_gather_single", dist.all_gather_into_tensor)


@dataclass(frozen=True)
class Topology:
    """Which ranks share a node: ``nodes[i]`` lists node i's global ranks in local-rank
    order. Nodes are ordered by their lowest rank."""

    nodes: tuple[tuple[int, ...], ...]

    @classmethod
    def from_names(cls, names: Sequence[str]) -> "Topology":
        """``names[rank]`` is the node of each rank (hostname, or an emulated name)."""
        by_node: dict[str, list[int]] = {}
        for rank, name in enumerate(names):
            by_node.setdefault(name, []).append(rank)
        return cls(tuple(tuple(ranks) for ranks in by_node.values()))

    @property
    def world_size(self) -> int:
        return sum(len(n) for n in self.nodes)

    @property
    def uniform(self) -> bool:
        return len({len(n) for n in self.nodes}) == 1

    def node_of(self, rank: int) -> int:
        for i, ranks in enumerate(self.nodes):
            if rank in ranks:
                return i
        raise UsageError(f"rank {rank} is not in the topology {self.nodes}")

    def local_rank(self, rank: int) -> int:
        return self.nodes[self.node_of(rank)].index(rank)


def discover_topology() -> Topology:
    """Every rank's node name, gathered from all ranks (collective: call on every rank)."""
    names: list[str | None] = [None] * dist.get_world_size()
    dist.all_gather_object(names, node_name())
    return Topology.from_names([str(n) for n in names])


@dataclass
class Communicator:
    """The process groups of a topology and the three AllReduce algorithms over them.
    Building one is collective: every rank must construct it, with the same topology."""

    topology: Topology
    intra: object = field(init=False)  # this rank's node
    inter: object = field(init=False)  # the ranks with this rank's local rank, one per node
    node: tuple[int, ...] = field(init=False)
    peers: tuple[int, ...] = field(init=False)
    chunk_bytes: int = 2**20  # hierarchical: the pipeline's unit (fp32 bytes)
    # hierarchical-bf16's error feedback: (key, padded size) -> this rank's residual shards
    residuals: dict[tuple[object, int], torch.Tensor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        rank = dist.get_rank()
        if self.topology.world_size != dist.get_world_size():
            raise UsageError(
                f"topology has {self.topology.world_size} ranks, the job {dist.get_world_size()}"
            )
        # new_group is collective over the whole world: same groups, same order, every rank
        for ranks in self.topology.nodes:
            group = dist.new_group(list(ranks))
            if rank in ranks:
                self.intra, self.node = group, ranks
        widest = max(len(n) for n in self.topology.nodes)
        for local in range(widest):
            ranks = tuple(n[local] for n in self.topology.nodes if local < len(n))
            group = dist.new_group(list(ranks))
            if rank in ranks:
                self.inter, self.peers = group, ranks

    def all_reduce(
        self,
        tensor: torch.Tensor,
        algorithm: str = "hierarchical",
        average: bool = False,
        feedback: object = None,
    ) -> torch.Tensor:
        """Sum (or mean) of ``tensor`` over all ranks, written back into ``tensor``, reduced
        in fp32. Returns ``tensor``. ``feedback``: hierarchical-bf16's error-feedback key
        (the same key for the same tensor step after step; None: no feedback)."""
        if algorithm not in ALGORITHMS:
            raise UsageError(f"unknown AllReduce algorithm {algorithm!r}; one of {ALGORITHMS}")
        if algorithm.startswith("hierarchical") and not self.topology.uniform:
            algorithm = "leader"  # reduce-scatter needs the same rank count on every node
        flat = tensor.detach().reshape(-1)
        work = flat if flat.dtype == torch.float32 and flat.is_contiguous() else flat.float()
        if algorithm == "flat":
            dist.all_reduce(work)
        elif algorithm.startswith("hierarchical"):
            work = self._hierarchical(work, algorithm == "hierarchical-bf16", feedback)
        else:
            self._leader(work)
        if average:
            work.div_(self.topology.world_size)
        if work.data_ptr() != flat.data_ptr():
            flat.copy_(work[: flat.numel()])
        if flat.data_ptr() != tensor.data_ptr():
            tensor.detach().copy_(flat.view_as(tensor))
        return tensor

    def _hierarchical(
        self, work: torch.Tensor, link_bf16: bool = False, feedback: object = None
    ) -> torch.Tensor:
        # feedback: the error-feedback key, used only when the link carries bf16
        # Pipelined in chunks: chunk c's all-reduce over the link runs while chunk c+1 is
        # reduce-scattered inside the node, so the link does not wait for the local steps.
        local = len(self.node)
        n = work.numel()
        chunk = max(local, self.chunk_bytes // 4 // local * local)  # elements, local | chunk
        chunks = -(-n // chunk)
        chunk = -(-n // (chunks * local)) * local  # spread evenly: (chunks, local, shard)
        padded = chunks * chunk
        if padded != n:
            buf = torch.zeros(padded, dtype=work.dtype, device=work.device)
            buf[:n] = work
        else:
            buf = work
        parts = buf.view(chunks, chunk)
        shards = torch.empty(chunks, chunk // local, dtype=work.dtype, device=work.device)
        if local > 1:  # queued on the node's group; they run in order
            scattered = [
                _reduce_scatter(shards[c], parts[c], group=self.intra, async_op=True)
                for c in range(chunks)
            ]
        else:
            shards.copy_(parts)
            scattered = [None] * chunks
        residual = None
        if link_bf16 and feedback is not None:
            residual = self.residuals.get((feedback, padded))
            if residual is None:  # the first step of this bucket: nothing carried yet
                residual = torch.zeros(
                    chunks, chunk // local, dtype=torch.bfloat16, device=work.device
                )
                self.residuals[(feedback, padded)] = residual
        reduced = []
        for c in range(chunks):
            if scattered[c] is not None:
                scattered[c].wait()
            if len(self.peers) > 1:
                if link_bf16:
                    reduced.append(
                        self._send_bf16(shards[c], None if residual is None else residual[c])
                    )
                else:
                    reduced.append(dist.all_reduce(shards[c], group=self.inter, async_op=True))
        gathered = []
        for c in range(chunks):  # chunk c gathers while later chunks are on the link
            if reduced and link_bf16:
                handle, received = reduced[c]
                handle.wait()  # every peer's bf16 partial: summed in fp32, in rank order
                shards[c].copy_(received.view(torch.bfloat16).float().sum(0))
            elif reduced:
                reduced[c].wait()
            if local > 1:
                gathered.append(_all_gather(parts[c], shards[c], group=self.intra, async_op=True))
            else:
                parts[c].copy_(shards[c])
        for w in gathered:
            w.wait()
        return buf

    def _send_bf16(
        self, shard: torch.Tensor, residual: torch.Tensor | None
    ) -> tuple[object, torch.Tensor]:
        """Start the all-gather of this node's partial ``shard`` as bf16 among the peers
        (plus the residual carried from the last step, which then keeps this rounding)."""
        value = shard if residual is None else shard + residual.float()
        sent = value.to(torch.bfloat16)
        if residual is not None:
            residual.copy_((value - sent.float()).to(torch.bfloat16))
        received = torch.empty(len(self.peers), 2 * sent.numel(), dtype=torch.uint8)
        # bf16 travels as its two bytes (gloo gathers uint8, not bf16 or int16)
        handle = _all_gather(
            received.view(-1), sent.view(torch.uint8), group=self.inter, async_op=True
        )
        return handle, received

    def _leader(self, work: torch.Tensor) -> None:
        leader = self.node[0]
        if len(self.node) > 1:
            dist.reduce(work, dst=leader, group=self.intra)
        if dist.get_rank() == leader and len(self.topology.nodes) > 1:
            dist.all_reduce(work, group=self.inter)  # local rank 0 of every node: the leaders
        if len(self.node) > 1:
            dist.broadcast(work, src=leader, group=self.intra)


def bucket_by_size(tensors: Sequence[torch.Tensor], bucket_bytes: int) -> list[list[int]]:
    """Consecutive tensors grouped so that each group's fp32 size stays within
    ``bucket_bytes`` (a tensor larger than that is a bucket of its own)."""
    buckets: list[list[int]] = []
    size = 0
    for i, t in enumerate(tensors):
        nbytes = t.numel() * 4
        if buckets and size + nbytes <= bucket_bytes:
            buckets[-1].append(i)
            size += nbytes
        else:
            buckets.append([i])
            size = nbytes
    return buckets


def all_reduce_coalesced(
    comm: Communicator,
    tensors: Sequence[torch.Tensor],
    algorithm: str = "hierarchical",
    average: bool = False,
    bucket_bytes: int = 25 * 2**20,
) -> None:
    """All-reduce many tensors (gradients) in flattened fp32 buckets: one collective per
    bucket instead of per tensor. Each tensor is updated in place."""
    for bucket in bucket_by_size(tensors, bucket_bytes):
        parts = [tensors[i] for i in bucket]
        flat = torch.cat([t.detach().reshape(-1).float() for t in parts])
        comm.all_reduce(flat, algorithm, average)
        offset = 0
        for t in parts:
            t.detach().copy_(flat[offset : offset + t.numel()].view_as(t))
            offset += t.numel()


@dataclass
class HookState:
    comm: Communicator
    algorithm: str = "hierarchical"


def comm_hook(state: HookState, bucket: dist.GradBucket) -> torch.futures.Future[torch.Tensor]:
    """DDP communication hook: DDP's gradient bucket averaged with ``state.algorithm``
    (``ddp.register_comm_hook(HookState(comm), comm_hook)``); hierarchical-bf16 carries
    each bucket's rounding error into its next step."""
    buf = bucket.buffer()
    state.comm.all_reduce(buf, state.algorithm, average=True, feedback=bucket.index())
    fut: torch.futures.Future[torch.Tensor] = torch.futures.Future()
    fut.set_result(buf)
    return fut
