"""Rule interface: a rule reads a transaction and its features and may fire."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

from streams.schemas import Transaction

__all__ = ["Firing", "Rule", "Ruleset", "RuleError"]


class RuleError(ValueError):
    """A rule or ruleset is invalid; the message names the rule and the field."""


@dataclass(frozen=True, slots=True)
class Firing:
    """One rule that fired on one transaction."""

    rule: str
    typology: str
    score: float  # 0..1
    code: str  # reason code, e.g. LARGE_TRANSFER
    detail: str  # human-readable reason


class Rule(Protocol):
    name: str
    typology: str

    def evaluate(self, tx: Transaction, features: Mapping[str, float | None]) -> Firing | None: ...


@dataclass(frozen=True)
class Ruleset:
    """A versioned, ordered collection of rules."""

    name: str
    version: str
    rules: Sequence[Rule]

    def __post_init__(self) -> None:
        names = [r.name for r in self.rules]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise RuleError(f"ruleset {self.name!r}: duplicate rule names {dupes}")

    def evaluate(self, tx: Transaction, features: Mapping[str, float | None]) -> list[Firing]:
        return [f for r in self.rules if (f := r.evaluate(tx, features)) is not None]
