"""AML rule engine: rule documents, their expression language, and how firings become a
decision."""

from vigil.streams.rules.base import Firing, RuleError
from vigil.streams.rules.language import BOOL, NUM, STR, ExpressionError, compile_expression
from vigil.streams.rules.ruleset import (
    LIMITS,
    TX_FIELDS,
    CompiledRule,
    Ruleset,
    default_ruleset,
    load_ruleset,
    parse_ruleset,
    read_document,
)
from vigil.streams.rules.scoring import Decision, Thresholds, alert_id, combine, decide

__all__ = [
    "LIMITS",
    "BOOL",
    "NUM",
    "STR",
    "TX_FIELDS",
    "CompiledRule",
    "Decision",
    "ExpressionError",
    "Firing",
    "RuleError",
    "Ruleset",
    "Thresholds",
    "alert_id",
    "combine",
    "compile_expression",
    "decide",
    "default_ruleset",
    "load_ruleset",
    "parse_ruleset",
    "read_document",
]
