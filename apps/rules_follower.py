"""Every worker follows the control topics of documents (rulesets, rates tables) and
hot-swaps what they hold between micro-batches (apps.follower: read in full from the
start, so a restart has the newest ones)."""

from __future__ import annotations

import logging
from collections.abc import Callable

from confluent_kafka import Message

from vigil.apps.follower import TopicFollower
from vigil.errors import VigilError
from vigil.streams.currency import Rates, read_rates
from vigil.streams.rules import Ruleset, parse_ruleset, read_document

__all__ = ["DocumentFollower", "RatesFollower", "RulesFollower"]

log = logging.getLogger("vigil.rules")


class DocumentFollower(TopicFollower):
    """Reads ``topic``: each record is parsed (``parse``); what parses goes to ``install``,
    which may refuse it too (a ``VigilError``); refusals go to ``rejected``, and what is in
    force stays."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        parse: Callable[[bytes], object],
        install: Callable,
        rejected: Callable[[str], None],
        describe: Callable[[object], str] = str,
    ) -> None:
        super().__init__(bootstrap, topic)
        self.parse, self.install, self.rejected = parse, install, rejected
        self.describe = describe

    def handle(self, msg: Message) -> None:
        raw, offset = msg.value() or b"", msg.offset()
        try:
            document = self.parse(raw)
            self.install(document)
        except VigilError as exc:
            log.error(
                "%s at %s@%d refused, current %s stay: %s",
                self.noun,
                self.topic,
                offset,
                self.what,
                exc,
            )
            self.rejected(str(exc))
            return
        log.info("%s from %s@%d", self.describe(document), self.topic, offset)


class RulesFollower(DocumentFollower):
    """Rulesets: valid ones go to ``install``, invalid ones to ``rejected``."""

    what, noun = "rules", "ruleset"

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        names: dict[str, str],
        install: Callable[[Ruleset], None],
        rejected: Callable[[str], None],
    ) -> None:
        def parse(raw: bytes) -> Ruleset:
            return parse_ruleset(read_document(raw, "ruleset record"), names)

        def describe(ruleset: Ruleset) -> str:
            return f"{ruleset.mode} ruleset {ruleset.label} ({len(ruleset.rules)} rules)"

        super().__init__(bootstrap, topic, parse, install, rejected, describe)


class RatesFollower(DocumentFollower):
    """Rates tables: one that parses and is in the reporting currency is installed."""

    what, noun = "rates", "rates table"

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        install: Callable[[Rates], None],
        rejected: Callable[[str], None],
    ) -> None:
        def describe(rates: Rates) -> str:
            return f"rates table {rates.label} ({len(rates.rates)} currencies in {rates.base})"

        super().__init__(
            bootstrap,
            topic,
            lambda raw: read_rates(raw, "rates record"),
            install,
            rejected,
            describe,
        )
