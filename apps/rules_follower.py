"""Every worker follows the rules topic and hot-swaps rulesets between micro-batches.

The topic has one partition and is read by each worker in full (no consumer group: every
worker needs every ruleset, unlike transactions, which are shared out). At start the
worker replays it, so the newest live and shadow rulesets are in force after a restart.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

import yaml
from confluent_kafka import KafkaError

from apps.kafka import make_reader, read_from_start
from streams.rules import RuleError, Ruleset, parse_ruleset

__all__ = ["RulesFollower"]

log = logging.getLogger("vigil.rules")


class RulesFollower(threading.Thread):
    """Reads ``topic``; valid rulesets go to ``install``, invalid ones to ``rejected``."""

    def __init__(
        self,
        bootstrap: str,
        topic: str,
        names: dict[str, str],
        install: Callable[[Ruleset], None],
        rejected: Callable[[str], None],
    ) -> None:
        super().__init__(name="rules-follower", daemon=True)
        self.bootstrap, self.topic, self.names = bootstrap, topic, names
        self.install, self.rejected = install, rejected
        self.stopping = threading.Event()
        self.caught_up = threading.Event()  # the topic's backlog has been applied

    def run(self) -> None:
        reader = make_reader(self.bootstrap)
        try:
            read_from_start(reader, self.topic)
            while not self.stopping.is_set():
                for msg in reader.consume(100, 0.2):
                    err = msg.error()
                    if err is not None:
                        if err.code() == KafkaError._PARTITION_EOF:
                            self.caught_up.set()
                        else:
                            log.error("reading %s: %s", self.topic, err)
                        continue
                    self._apply(msg.value() or b"", msg.offset())
        except Exception:  # never take the worker down; it keeps its current rules
            log.exception("rules follower stopped; the current rulesets stay in force")
        finally:
            reader.close()

    def _apply(self, raw: bytes, offset: int) -> None:
        try:
            ruleset = parse_ruleset(yaml.safe_load(raw.decode("utf-8")), self.names)
        except (RuleError, yaml.YAMLError, UnicodeDecodeError) as exc:
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

    def stop(self) -> None:
        self.stopping.set()
