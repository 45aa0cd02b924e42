"""What the risk pipeline asks of a model, and how a worker swaps one in.

A scorer turns a micro-batch's feature matrix into probabilities in one call; the models
(``vigil.models.serving``) implement :class:`BatchScorer`. The pipeline knows only this
protocol, so stream logic does not depend on the model code.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from typing import Protocol

import numpy as np

__all__ = ["BatchScorer", "ModelHolder", "RulesOnly"]


class BatchScorer(Protocol):
    version: str

    def score_batch(self, features: np.ndarray) -> Sequence[float] | None:
        """One probability per row of a (rows x spec features) matrix in the order of
        ``FEATURE_SPEC`` (NaN: no value), or None when this scorer has no model."""
        ...


class RulesOnly:
    """Serves no model: decisions come from the rules alone."""

    version = "rules-only"

    def score_batch(self, features: np.ndarray) -> Sequence[float] | None:
        return None


class ModelHolder:
    """Holds the serving scorer; ``swap`` replaces it atomically between micro-batches.

    A worker reads ``current`` once per micro-batch, so every record of a batch is scored
    (and stamped) by the same model version.
    """

    def __init__(self, scorer: BatchScorer | None = None) -> None:
        self._scorer: BatchScorer = scorer or RulesOnly()
        self._lock = threading.Lock()

    @property
    def current(self) -> BatchScorer:
        return self._scorer

    def swap(self, scorer: BatchScorer) -> BatchScorer:
        with self._lock:
            old, self._scorer = self._scorer, scorer
        return old
