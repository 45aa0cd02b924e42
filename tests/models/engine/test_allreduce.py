"""AllReduce algorithms on real multi-process torch.distributed (gloo, 127.0.0.1): 4 ranks
on 2 emulated nodes. The reference is the float64 sum the test computes itself from every
rank's input, and plain DDP for training."""

from __future__ import annotations

import pytest
import torch
import torch.distributed as dist
from torch import nn

from vigil.models.engine import (
    ALGORITHMS,
    Communicator,
    DistributedError,
    HookState,
    Topology,
    all_reduce_coalesced,
    comm_hook,
    discover_topology,
    spawn,
)
from vigil.models.engine.allreduce import bucket_by_size

SIZES = (1, 3, 7, 1000, 65_537, 262_144)  # 1, 3, 7, 65537: not divisible by 2 ranks/node
DTYPES = (torch.float32, torch.bfloat16, torch.float16)


def _input(rank: int, size: int, dtype: torch.dtype) -> torch.Tensor:
    g = torch.Generator().manual_seed(1000 * rank + size)
    return (torch.randn(size, generator=g) * 3).to(dtype)


def _reduce_everything() -> dict:
    """On every rank: each algorithm on each size and dtype, plus the fp32-reduction probe."""
    topology = discover_topology()
    comm = Communicator(topology)
    rank = dist.get_rank()
    out: dict = {"topology": topology.nodes, "results": {}}
    for size in SIZES:
        for dtype in DTYPES:
            for algorithm in ALGORITHMS:
                t = _input(rank, size, dtype)
                comm.all_reduce(t, algorithm)
                out["results"][(size, str(dtype), algorithm)] = t
    # the hierarchical pipeline cut into many small chunks (uneven last chunk)
    chunked = Communicator(topology, chunk_bytes=4096)
    for size in SIZES:
        for dtype in DTYPES:
            t = _input(rank, size, dtype)
            out["results"][(size, str(dtype), "chunked")] = chunked.all_reduce(t, "hierarchical")
    # 256 + 1 + 1 + 1: bf16 sums would stay at 256 (its spacing there is 2); fp32 gives 259
    for algorithm in ALGORITHMS:
        t = torch.full((5,), 256.0 if rank == 0 else 1.0, dtype=torch.bfloat16)
        out["results"][("probe", algorithm)] = comm.all_reduce(t, algorithm, average=False)
        m = torch.full((6,), float(rank), dtype=torch.float32).reshape(2, 3)[:, ::2]  # strided
        out["results"][("strided", algorithm)] = comm.all_reduce(m, algorithm, average=True)
    # hierarchical-bf16, the same tensor 20 times: with error feedback, and without
    x = _input(rank, 1001, torch.float32)
    sums = {"feedback": torch.zeros(1001, dtype=torch.float64), "none": None}
    sums["none"] = torch.zeros_like(sums["feedback"])
    for _ in range(20):
        for mode, key in (("feedback", "probe"), ("none", None)):
            t = x.clone()
            comm.all_reduce(t, "hierarchical-bf16", feedback=key)
            sums[mode] += t.double()
    out["feedback"] = sums
    # many tensors in small buckets, against one call per tensor
    grads = [_input(rank, n, torch.float32) for n in (5, 300, 17, 4096, 1)]
    per_tensor = [comm.all_reduce(g.clone(), "flat") for g in grads]
    all_reduce_coalesced(comm, grads, "hierarchical", bucket_bytes=2000)
    out["coalesced"] = (grads, per_tensor)
    return out


@pytest.fixture(scope="module")
def reduced() -> list[dict]:
    return spawn(_reduce_everything, nprocs=4, nodes=2)


def test_ranks_on_the_same_emulated_node_form_one_group(reduced):
    assert all(r["topology"] == ((0, 1), (2, 3)) for r in reduced)


EXACT = [a for a in ALGORITHMS if a != "hierarchical-bf16"]


def _bf16_link_sum(inputs: list[torch.Tensor]) -> torch.Tensor:
    """What hierarchical-bf16 computes for 2 nodes x 2 ranks: each node's fp32 partial sum
    rounded to bf16 for the link, the two added in fp32."""
    partials = [(inputs[0].float() + inputs[1].float()), (inputs[2].float() + inputs[3].float())]
    return partials[0].bfloat16().float() + partials[1].bfloat16().float()


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("algorithm", [*ALGORITHMS, "chunked"])
def test_every_algorithm_gives_the_sum_of_all_ranks(reduced, algorithm, dtype):
    for size in SIZES:
        want = sum(_input(r, size, dtype).double() for r in range(4))
        for rank, result in enumerate(reduced):
            got = result["results"][(size, str(dtype), algorithm)]
            assert got.dtype == dtype and got.shape == (size,)
            # one rounding of the exact sum to the tensor's dtype (the sum is done in fp32);
            # the bf16 link adds one bf16 rounding of each node's partial sum
            tol = {torch.float32: 1e-5, torch.bfloat16: 8e-3, torch.float16: 1e-3}[dtype]
            if algorithm == "hierarchical-bf16":
                tol = 1.6e-2
            torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol * 12)
            if algorithm != "flat":  # and agrees with the flat ring on every element
                flat = result["results"][(size, str(dtype), "flat")]
                torch.testing.assert_close(got, flat, rtol=tol, atol=tol * 12)
            assert torch.equal(got, reduced[0]["results"][(size, str(dtype), algorithm)]), rank


def test_the_bf16_link_rounds_only_each_nodes_partial_sum(reduced):
    for size in SIZES:
        inputs = [_input(r, size, torch.float32) for r in range(4)]
        want = _bf16_link_sum(inputs)
        for result in reduced:
            assert torch.equal(
                result["results"][(size, "torch.float32", "hierarchical-bf16")], want
            )


def test_error_feedback_keeps_the_bf16_link_from_drifting(reduced):
    """20 steps of the same gradients: without feedback each step repeats the same rounding
    (the error grows 20-fold); with it, the sum of what arrived stays within about one
    rounding of the true sum."""
    x = [_input(r, 1001, torch.float32) for r in range(4)]
    true = 20 * sum(t.double() for t in x)
    one_step = (_bf16_link_sum(x).double() - sum(t.double() for t in x)).abs().max()
    assert one_step > 0  # the link does round
    for result in reduced:
        with_feedback = (result["feedback"]["feedback"] - true).abs().max()
        without = (result["feedback"]["none"] - true).abs().max()
        assert with_feedback <= 1.5 * one_step
        assert without >= 10 * one_step


@pytest.mark.parametrize("algorithm", EXACT)
def test_low_precision_tensors_are_reduced_in_fp32(reduced, algorithm):
    want = torch.tensor(259.0).to(torch.bfloat16)  # not 256: what a bf16 running sum gives
    for result in reduced:
        assert torch.all(result["results"][("probe", algorithm)] == want)
        strided = result["results"][("strided", algorithm)]
        assert torch.all(strided == 1.5)  # mean of ranks 0..3, written back through a view


def test_bucketed_gradients_equal_one_all_reduce_per_tensor(reduced):
    for result in reduced:
        bucketed, per_tensor = result["coalesced"]
        for a, b in zip(bucketed, per_tensor, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-5)


def test_buckets_keep_order_and_size():
    ts = [torch.zeros(n) for n in (10, 10, 30, 100, 1, 1)]
    assert bucket_by_size(ts, bucket_bytes=80) == [[0, 1], [2], [3], [4, 5]]
    assert bucket_by_size(ts, bucket_bytes=10_000) == [[0, 1, 2, 3, 4, 5]]


def test_topology_groups_ranks_by_node_name():
    topo = Topology.from_names(["b", "a", "b", "a", "c"])
    assert topo.nodes == ((0, 2), (1, 3), (4,))
    assert (topo.node_of(3), topo.local_rank(3), topo.uniform) == (1, 1, False)


def _uneven() -> list[torch.Tensor]:
    """3 ranks on 2 nodes of 2 and 1: hierarchical falls back to the leader algorithm."""
    comm = Communicator(Topology(((0, 1), (2,))))
    rank = dist.get_rank()
    return [comm.all_reduce(_input(rank, 11, torch.float32), a) for a in ALGORITHMS]


def test_nodes_of_different_sizes_still_reduce_correctly():
    want = sum(_input(r, 11, torch.float32) for r in range(3))
    for per_rank in spawn(_uneven, nprocs=3):
        for got in per_rank:
            torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-5)


def _train(algorithm: str | None, steps: int = 6) -> list[torch.Tensor]:
    """A small MLP under DDP, each rank on its own data; ``algorithm`` None = DDP's own
    all-reduce, else our communication hook."""
    torch.manual_seed(0)  # same initial weights on every rank
    model = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 1))
    ddp = nn.parallel.DistributedDataParallel(model, bucket_cap_mb=0.001)  # several buckets
    if algorithm is not None:
        ddp.register_comm_hook(HookState(Communicator(discover_topology()), algorithm), comm_hook)
    opt = torch.optim.SGD(ddp.parameters(), lr=0.1, momentum=0.9)
    g = torch.Generator().manual_seed(dist.get_rank())
    for _ in range(steps):
        x = torch.randn(16, 12, generator=g)
        loss = ((ddp(x).squeeze(1) - x.sum(1)) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return [p.detach().clone() for p in model.parameters()]


def _train_all() -> dict:
    return {name: _train(name) for name in (None, *ALGORITHMS)}


@pytest.mark.slow
def test_training_with_the_hook_matches_plain_ddp():
    per_rank = spawn(_train_all, nprocs=4, nodes=2)
    plain = per_rank[0][None]
    for result in per_rank:
        for name in ALGORITHMS:
            # the bf16 link rounds each step's gradients by up to 2^-9 (their error carried
            # into the next step); 6 steps of SGD with momentum move weights by ~0.5
            tol = (1e-2, 5e-3) if name == "hierarchical-bf16" else (1e-5, 1e-6)
            for a, b in zip(result[name], plain, strict=True):
                torch.testing.assert_close(a, b, rtol=tol[0], atol=tol[1])
            assert all(
                torch.equal(a, b) for a, b in zip(result[name], per_rank[0][name], strict=True)
            )  # every rank ends with the same weights
    # and training did move the weights: the comparison is not between initial weights
    torch.manual_seed(0)
    start = nn.Sequential(nn.Linear(12, 32), nn.ReLU(), nn.Linear(32, 1))
    assert not torch.allclose(next(start.parameters()), plain[0])


def _fail() -> None:
    if dist.get_rank() == 1:
        raise ValueError("rank 1 cannot go on")
    dist.barrier()


def test_a_failing_rank_is_reported_with_its_traceback():
    with pytest.raises(DistributedError, match="rank 1 failed(.|\n)*rank 1 cannot go on"):
        spawn(_fail, nprocs=2, timeout_s=30)
