"""Combine rule firings (and later a model score) into a score, a decision and an alert id."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from vigil.streams.rules.base import Firing, RuleError

__all__ = ["Decision", "Thresholds", "combine", "decide", "alert_id"]

Decision = Literal["allow", "review", "block"]


@dataclass(frozen=True)
class Thresholds:
    review: float = 0.5
    block: float = 0.9

    def __post_init__(self) -> None:
        if not 0 < self.review <= self.block <= 1:
            raise RuleError(
                f"thresholds: need 0 < review <= block <= 1, got review={self.review} "
                f"block={self.block}"
            )


def combine(firings: Sequence[Firing], model_score: float | None = None) -> float:
    """Noisy-or of the rule scores and the model score: independent evidence adds up,
    and the result stays in 0..1 (0.8 and 0.5 give 0.9)."""
    keep = 1.0
    for f in firings:
        keep *= 1.0 - f.score
    if model_score is not None:
        keep *= 1.0 - model_score
    return round(1.0 - keep, 6)


def decide(score: float, thresholds: Thresholds) -> Decision:
    if score >= thresholds.block:
        return "block"
    if score >= thresholds.review:
        return "review"
    return "allow"


def alert_id(tx_id: str, decision: str, firings: Sequence[Firing], model_version: str) -> str:
    """Deterministic from the transaction and the decision inputs, so a redelivered
    transaction yields the same alert id (idempotent downstream)."""
    parts = [tx_id, decision, model_version, *sorted(f"{f.rule}:{f.score}" for f in firings)]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()[:32]
