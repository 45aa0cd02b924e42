"""The AllReduce benchmark across emulated nodes. The real run needs root (network
namespaces, veth, tc), which this project's CI machine gives; elsewhere it is skipped and
the benchmark itself exits non-zero with the reason (tested below)."""

from __future__ import annotations

import os

import pytest
from typer.testing import CliRunner

from vigil.apps.cli import app
from vigil.models.engine.bench import bench_allreduce, parse_sizes
from vigil.models.engine.linkemu import EmulatedNodes, LinkEmulationError

runner = CliRunner()
root = pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces need root")


def test_sizes_parse_in_binary_units():
    assert parse_sizes("1MB, 16mb,512KB,100") == [2**20, 16 * 2**20, 512 * 2**10, 100]
    with pytest.raises(ValueError, match="bad size 'lots'"):
        parse_sizes("lots")
    with pytest.raises(ValueError, match="under one float32"):
        parse_sizes("2B")


def test_without_root_the_link_cannot_be_emulated_and_says_so(monkeypatch):
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    with pytest.raises(LinkEmulationError, match="needs root"), EmulatedNodes(2, 200):
        pass
    result = runner.invoke(app, ["bench", "allreduce", "--sizes", "1MB"])
    assert result.exit_code == 1
    assert "cannot emulate the inter-node link here" in result.output


def test_unknown_algorithms_and_sizes_are_usage_errors():
    result = runner.invoke(app, ["bench", "allreduce", "--algorithms", "flat,tree"])
    assert result.exit_code == 2 and "unknown algorithm 'tree'" in result.output
    result = runner.invoke(app, ["bench", "allreduce", "--sizes", "1XB"])
    assert result.exit_code == 2 and "bad size" in result.output


@pytest.mark.slow
@root
def test_hierarchical_sends_a_third_less_over_the_link_than_the_flat_ring():
    """2 nodes x 2 ranks. Bytes on the link, from the veth's own counters: the flat ring
    sends 2(n-1)/n = 1.5 tensors each way per all-reduce; hierarchical and leader send
    2(m-1)/m = 1 (m = 2 nodes). TCP/IP headers add a few percent."""
    size = 2**20
    result = bench_allreduce(2, 2, link_mbit=2000, sizes=[size], iters=2)
    runs = {r["algorithm"]: r for r in result["runs"]}
    assert set(runs) == {"flat", "hierarchical", "leader"}
    assert all(r["correct"] for r in runs.values())
    assert 1.5 * size <= runs["flat"]["link_bytes_per_iter"] <= 1.5 * size * 1.08
    for name in ("hierarchical", "leader"):
        assert size <= runs[name]["link_bytes_per_iter"] <= size * 1.08
    assert result["world_size"] == 4 and set(result["speedup"]) == {"hierarchical", "leader"}
    # the namespaces are gone afterwards
    assert "vigil-" not in os.popen("ip netns list").read()
