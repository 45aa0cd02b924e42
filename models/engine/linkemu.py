"""Emulated nodes on one machine: each node after the first lives in its own network
namespace, joined to the host by a veth pair shaped with ``tc tbf`` in both directions, so
traffic between nodes crosses a link of a set bandwidth while traffic inside a node stays
on fast local sockets. Needs root, ``ip`` and ``tc``; anything else is a clear
``LinkEmulationError``.

Node 0 is the host; node k (k >= 1) is namespace ``<prefix>-k`` at ``10.213.k.2``, with the
host side of its link at ``10.213.k.1``. Nodes reach each other through the host (star).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from vigil.errors import VigilError

__all__ = ["EmulatedNodes", "LinkEmulationError"]


class LinkEmulationError(VigilError, RuntimeError):
    """The emulated link cannot be set up here (not root, no ``ip``/``tc``, no netns)."""


def _run(*cmd: str) -> str:
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        raise LinkEmulationError(f"`{' '.join(cmd)}` failed: {done.stderr.strip()}")
    return done.stdout


@dataclass
class EmulatedNodes:
    """``nodes`` emulated nodes joined by links of ``link_mbit`` megabit/s each way."""

    nodes: int
    link_mbit: float
    prefix: str = field(default_factory=lambda: f"vigil-{uuid.uuid4().hex[:6]}")
    _made: list[str] = field(default_factory=list, init=False)

    def namespace(self, node: int) -> str | None:
        return None if node == 0 else f"{self.prefix}-{node}"

    def address(self, node: int) -> str:
        """The address a rank on ``node`` listens on (node 0: its side of the first link)."""
        return "10.213.1.1" if node == 0 else f"10.213.{node}.2"

    def interface(self, node: int) -> str:
        return f"vh{self.prefix[-6:]}1" if node == 0 else f"vn{self.prefix[-6:]}{node}"

    def host_interface(self, node: int) -> str:
        """The host end of node ``node``'s link, where its traffic is counted."""
        return f"vh{self.prefix[-6:]}{node}"

    def command(self, node: int, argv: list[str]) -> list[str]:
        """``argv`` to run on ``node``."""
        ns = self.namespace(node)
        return argv if ns is None else ["ip", "netns", "exec", ns, *argv]

    def __enter__(self) -> EmulatedNodes:
        if self.nodes < 2 or self.nodes > 200:
            raise LinkEmulationError(f"between 2 and 200 nodes, not {self.nodes}")
        if os.geteuid() != 0:
            raise LinkEmulationError(
                "emulating nodes needs root (network namespaces, veth, tc); run as root"
            )
        for tool in ("ip", "tc"):
            if shutil.which(tool) is None:
                raise LinkEmulationError(f"`{tool}` not found (Debian: apt-get install iproute2)")
        try:
            self._setup()
        except BaseException:
            self.__exit__()
            raise
        return self

    def _setup(self) -> None:
        # bytes a token bucket may send at once: 10 ms at the link rate, at least 64 KB
        rate = f"{self.link_mbit}mbit"
        burst = str(max(64 * 1024, int(self.link_mbit * 1e6 / 8 / 100)))
        Path("/proc/sys/net/ipv4/ip_forward").write_text("1")  # node <-> node via the host
        for k in range(1, self.nodes):
            ns, host, peer = self.namespace(k), self.host_interface(k), self.interface(k)
            assert ns is not None
            _run("ip", "netns", "add", ns)
            self._made.append(ns)
            _run("ip", "link", "add", host, "type", "veth", "peer", "name", peer)
            _run("ip", "link", "set", peer, "netns", ns)
            _run("ip", "addr", "add", f"10.213.{k}.1/24", "dev", host)
            _run("ip", "link", "set", host, "up")
            _run("ip", "netns", "exec", ns, "ip", "addr", "add", f"10.213.{k}.2/24", "dev", peer)
            _run("ip", "netns", "exec", ns, "ip", "link", "set", peer, "up")
            _run("ip", "netns", "exec", ns, "ip", "link", "set", "lo", "up")
            _run("ip", "netns", "exec", ns, "ip", "route", "add", "default", "via", f"10.213.{k}.1")
            tbf = ("tbf", "rate", rate, "burst", burst, "latency", "100ms")
            _run("tc", "qdisc", "add", "dev", host, "root", *tbf)
            _run("ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", peer, "root", *tbf)

    def __exit__(self, *exc: object) -> None:
        for ns in self._made:  # deleting a namespace deletes its veth end, and so the pair
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        self._made.clear()
