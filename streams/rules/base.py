"""What a rule produces when it fires, and the rule engine's error type."""

from __future__ import annotations

from dataclasses import dataclass

from vigil.errors import VigilError

__all__ = ["Firing", "RuleError"]


class RuleError(VigilError, ValueError):
    """A rule or ruleset is invalid; the message names the rule and the field."""


@dataclass(frozen=True, slots=True)
class Firing:
    """One rule that fired on one transaction."""

    rule: str
    typology: str
    score: float  # 0..1
    code: str  # reason code, e.g. LARGE_TRANSFER
    detail: str  # human-readable reason
