"""AML rule engine: rules, rulesets, and how their outcomes become a decision."""

from streams.rules.base import Firing, Rule, RuleError, Ruleset
from streams.rules.scoring import Decision, Thresholds, alert_id, combine, decide
from streams.rules.seed import FrequentSmall, LargeTransfer, seed_ruleset

__all__ = [
    "Decision",
    "Firing",
    "FrequentSmall",
    "LargeTransfer",
    "Rule",
    "RuleError",
    "Ruleset",
    "Thresholds",
    "alert_id",
    "combine",
    "decide",
    "seed_ruleset",
]
