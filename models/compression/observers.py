"""Range observers: they watch tensors (weights once, activations over calibration or
training batches) and give the ``[lo, hi]`` range quantization parameters come from.

- ``minmax``: the smallest and largest value ever seen.
- ``moving_average``: each batch's min and max, smoothed: ``r = m * r + (1 - m) * batch``
  (momentum ``m`` = 0.9 as in the seed's quant_config), the first batch taken as is. Robust
  to a rare outlier batch, and it follows the activations as QAT changes the weights.
- ``percentile``: the ``p``-th and ``(100 - p)``-th percentiles of a uniform sample of
  everything seen (at most ``sample`` values per channel): clips the outliers that would
  otherwise stretch a low-bit range.

Per-channel observers (``axis`` set) keep one range per index along ``axis``.
"""

from __future__ import annotations

from typing import Literal

import torch

from vigil.errors import UsageError

__all__ = ["OBSERVERS", "Observer", "make_observer"]

OBSERVERS = ("minmax", "moving_average", "percentile")
ObserverKind = Literal["minmax", "moving_average", "percentile"]


def _per_channel(x: torch.Tensor, axis: int | None) -> torch.Tensor:
    """(channels, values) with ``axis`` first, or (1, values) per tensor."""
    x = x.detach().float()
    if axis is None:
        return x.reshape(1, -1)
    return x.movedim(axis, 0).reshape(x.shape[axis], -1)


class Observer:
    def __init__(
        self,
        kind: ObserverKind = "minmax",
        axis: int | None = None,
        momentum: float = 0.9,
        percentile: float = 99.99,
        sample: int = 100_000,
        seed: int = 0,
    ) -> None:
        if kind not in OBSERVERS:
            raise UsageError(f"observer must be one of {OBSERVERS}, not {kind!r}")
        if not 0 <= momentum < 1:
            raise UsageError(f"momentum must be in [0, 1), not {momentum}")
        if not 50 < percentile <= 100:
            raise UsageError(f"percentile must be in (50, 100], not {percentile}")
        self.kind, self.axis = kind, axis
        self.momentum, self.percentile, self.sample = momentum, percentile, sample
        self._gen = torch.Generator().manual_seed(seed)
        self.reset()

    def reset(self) -> None:
        """Forget everything seen."""
        self.lo: torch.Tensor | None = None
        self.hi: torch.Tensor | None = None
        self._kept: torch.Tensor | None = None  # percentile: the sample so far
        self._seen = 0

    def observe(self, x: torch.Tensor) -> None:
        v = _per_channel(x, self.axis)
        lo, hi = v.min(dim=1).values, v.max(dim=1).values
        if self.kind == "percentile":
            self._keep(v)
            q = torch.tensor([100 - self.percentile, self.percentile]) / 100
            lo, hi = torch.quantile(self._kept, q, dim=1)
        elif self.lo is not None and self.hi is not None:
            if self.kind == "minmax":
                lo, hi = torch.minimum(self.lo, lo), torch.maximum(self.hi, hi)
            else:
                m = self.momentum
                lo, hi = m * self.lo + (1 - m) * lo, m * self.hi + (1 - m) * hi
        self.lo, self.hi = lo, hi

    def _keep(self, v: torch.Tensor) -> None:
        """A uniform sample of every value seen, per channel (reservoir sampling: the
        t-th value replaces a random kept one with probability sample / t)."""
        n = v.shape[1]
        if self._kept is None or self._kept.shape[1] < self.sample:
            room = self.sample - (0 if self._kept is None else self._kept.shape[1])
            take, v = v[:, :room], v[:, room:]
            self._kept = take if self._kept is None else torch.cat([self._kept, take], dim=1)
        self._seen += n - v.shape[1]
        if v.shape[1]:
            t = self._seen + torch.arange(1, v.shape[1] + 1, dtype=torch.float64)
            accept = torch.rand(v.shape[1], generator=self._gen, dtype=torch.float64) < (
                self.sample / t
            )
            slots = torch.randint(self.sample, (int(accept.sum()),), generator=self._gen)
            self._kept[:, slots] = v[:, accept]
            self._seen += v.shape[1]

    def range(self) -> tuple[torch.Tensor, torch.Tensor]:
        """``(lo, hi)``: per channel, or shape (1,) per tensor."""
        if self.lo is None or self.hi is None:
            raise RuntimeError("observer has seen nothing: run calibration batches first")
        return self.lo, self.hi


def make_observer(spec: dict, axis: int | None = None) -> Observer:
    """From a quant_config ``observer`` entry: ``{"type", "momentum", "percentile"}``."""
    return Observer(
        spec.get("type", "minmax"),
        axis,
        momentum=float(spec.get("momentum", 0.9)),
        percentile=float(spec.get("percentile", 99.99)),
    )
