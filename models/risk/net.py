"""The hybrid's network: ``z = w * gbdt_logit + mlp(features)`` over normalised features
(signed log, standardised over the values present, with missing flags)."""

from __future__ import annotations

import numpy as np
import torch
from torch import nn


class TabularNet(nn.Module):
    """``logit = w * gbdt_logit + mlp(normalised features, missing flags, sequence code)``
    (no GBDT input when ``use_gbdt`` is False: the NN-only baseline). Calibrated
    probability: ``sigmoid(a * logit + b)``.

    ``sequence`` (steps x kinds indices into the feature vector, latest step first: the
    ``Recent`` features, ``library.recent_layout``) makes those features a sequence rather
    than columns: each step's values and flags go through one small step network (shared
    by every step, plus a learnt vector per position), and the mean and the maximum over
    the steps present (those with a time) are the sequence code the MLP reads beside the
    other features. The trees see a column per step and position; this sees the account's
    last events as events."""

    def __init__(
        self,
        mean: np.ndarray,
        std: np.ndarray,
        hidden: int,
        use_gbdt: bool,
        keep: np.ndarray | None = None,
        sequence: np.ndarray | tuple | None = None,
        sequence_hidden: int = 16,
    ) -> None:
        super().__init__()
        n = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        # 1 per feature the net learns from, 0 per ignored one (TabularConfig.ignored)
        keep = np.ones(n) if keep is None else keep
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.float32))
        index = torch.as_tensor(
            np.asarray(sequence if sequence is not None else []), dtype=torch.long
        )
        self.has_sequence = index.numel() > 0
        code = 0
        if self.has_sequence:
            steps, kinds = index.shape
            self.register_buffer("seq_index", index)
            flat = torch.ones(n)
            flat[index.reshape(-1)] = 0.0
            self.register_buffer("flat", flat)  # 0 where a feature is a sequence step's
            self.step = nn.Linear(2 * kinds, sequence_hidden)
            self.position = nn.Parameter(torch.zeros(steps, sequence_hidden))
            self.step_out = nn.Linear(sequence_hidden, sequence_hidden)
            code = 2 * sequence_hidden
        self.mlp = nn.Sequential(
            nn.Linear(2 * n + code, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.out = nn.Linear(hidden, 1)
        self.use_gbdt = use_gbdt
        if use_gbdt:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
            self.gbdt_weight = nn.Parameter(torch.ones(()))
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))  # a, b

    def logit(self, x: torch.Tensor, gbdt_logit: torch.Tensor | None = None) -> torch.Tensor:
        missing = torch.isnan(x)
        v = torch.where(missing, torch.zeros_like(x), x)
        v = torch.sign(v) * torch.log1p(torch.abs(v))
        # a missing value sits at the mean (0) and its flag says it is missing: as a raw 0
        # it was (0 - mean) / std, many spreads out for the time features (log ms), where
        # the net extrapolated from the pipeline's warm-up rows
        v = torch.where(missing, torch.zeros_like(v), (v - self.mean) / self.std) * self.keep
        flags = missing.to(x.dtype) * self.keep
        parts = [v, flags]
        if self.has_sequence:
            parts = [v * self.flat, flags * self.flat, self._sequence_code(v, flags, missing)]
        z = self.out(self.mlp(torch.cat(parts, dim=1))).squeeze(1)
        if self.use_gbdt:
            z = z + self.gbdt_weight * gbdt_logit
        return z

    def _sequence_code(
        self, v: torch.Tensor, flags: torch.Tensor, missing: torch.Tensor
    ) -> torch.Tensor:
        """Mean and maximum of the step network's output over the steps present (zeros
        when there are none)."""
        steps = torch.cat([v[:, self.seq_index], flags[:, self.seq_index]], dim=2)
        h = torch.relu(self.step(steps) + self.position)
        h = torch.relu(self.step_out(h))
        present = (~missing[:, self.seq_index[:, 0]]).to(v.dtype).unsqueeze(2)  # rows, steps, 1
        h = h * present
        count = present.sum(dim=1).clamp(min=1.0)
        return torch.cat([h.sum(dim=1) / count, h.amax(dim=1)], dim=1)

    def forward(self, x: torch.Tensor, gbdt_logit: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated probability; the GBDT enters as its raw margin (what the exported
        LightGBM graph outputs)."""
        a, b = self.calibration[0], self.calibration[1]
        return torch.sigmoid(a * self.logit(x, gbdt_logit if self.use_gbdt else None) + b)


def net_logits(net: TabularNet, x: np.ndarray, g: np.ndarray | None) -> np.ndarray:
    with torch.no_grad():
        gt = None if g is None else torch.from_numpy(np.asarray(g, np.float32))
        return net.logit(torch.from_numpy(np.asarray(x, np.float32)), gt).numpy().astype(float)


MIN_SPREAD = 0.1


def normaliser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread of the signed-log features over the values present (a column with
    none: 0 and 1). Counting missing values as zeros would put a mostly-missing feature's
    present values (the inflow features: present for a few accounts) many spreads out."""
    v = np.asarray(x, dtype=np.float64)
    v = np.sign(v) * np.log1p(np.abs(v))
    present = ~np.isnan(v)
    count = present.sum(axis=0)
    filled = np.where(present, v, 0.0)
    mean = np.divide(filled.sum(axis=0), count, out=np.zeros(v.shape[1]), where=count > 0)
    var = np.divide(
        (np.where(present, v - mean, 0.0) ** 2).sum(axis=0),
        count,
        out=np.ones(v.shape[1]),
        where=count > 0,
    )
    # A floor on the spread: a feature (nearly) constant in training would otherwise turn
    # its first other value into a million spreads (distinct_devices_7d, 1 on every
    # training row, then 0 on one held-out row: that row's logit was -1,248, and Platt
    # scaling on it reversed the NN's ranking). 0.1 in signed-log units: at most 10
    # spreads per unit of log1p.
    return mean, np.maximum(np.sqrt(var), MIN_SPREAD)


class HybridLogit(nn.Module):
    """``TabularNet`` taking its input as one tensor: the features, then (hybrid) the
    GBDT logit as the last column."""

    def __init__(self, *net_args: object) -> None:  # TabularNet's
        super().__init__()
        self.net = TabularNet(*net_args)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net.use_gbdt:
            return self.net.logit(x[:, :-1], x[:, -1]).unsqueeze(-1)
        return self.net.logit(x).unsqueeze(-1)
