"""Every worker follows the rules topic and hot-swaps rulesets between micro-batches
(apps.follower: read in full from the start, so a restart has the newest rulesets)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Message

from vigil.apps.follower import TopicFollower
from vigil.streams.rules import RuleError, Ruleset, parse_ruleset, read_document

__all__ = ["RulesFollower"]

log = logging.getLogger("vigil.rules")


class RulesFollower(TopicFollower):
    """Reads ``topic``; valid rulesets go to ``install``, invalid ones to ``rejected``."""

    what = "rulesets"

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        names: dict[str, str],
        install: Callable[[Ruleset], None],
        rejected: Callable[[str], None],
    ) -> None:
        super().__init__(bootstrap, topic)
        self.names = names
        self.install, self.rejected = install, rejected

    def handle(self, msg: Message) -> None:
        raw, offset = msg.value() or b"", msg.offset()
        try:
            ruleset = parse_ruleset(read_document(raw, "ruleset record"), self.names)
        except RuleError as exc:
            log.error("ruleset at %s@%d refused, current rules stay: %s", self.topic, offset, exc)
            self.rejected(str(exc))
            return
        log.info(
            "%s ruleset %s (%d rules) from %s@%d",
            ruleset.mode,
            ruleset.label,
            len(ruleset.rules),
            self.topic,
            offset,
        )
        self.install(ruleset)
