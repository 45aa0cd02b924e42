"""The topic table of wire contract v1: names, keys, partitions."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["TopicSpec", "TopicNames", "CONTRACT_TOPICS", "INTERNAL_TOPICS"]


@dataclass(frozen=True)
class TopicSpec:
    suffix: str  # full name is f"{namespace}.{suffix}"
    key: str
    description: str
    partitioned: bool = True  # False: a single partition keeps a global order
    retain_forever: bool = False  # the control topics: workers replay them from the start


CONTRACT_TOPICS: tuple[TopicSpec, ...] = (
    TopicSpec("transactions", "account_id", "Transaction JSON from producers"),
    TopicSpec("labels", "tx_id", "late ground truth for training"),
    TopicSpec("risk.scores", "account_id", "one score record per processed transaction"),
    TopicSpec("risk.alerts", "account_id", "alerts for transactions not allowed"),
    TopicSpec("frames", "camera_id", "encoded camera frames"),
    TopicSpec("inspection.alerts", "camera_id", "defect alerts"),
    TopicSpec(
        "models",
        "model name",
        "signed, chunked model releases",
        partitioned=False,
        retain_forever=True,
    ),
    TopicSpec("rules", "ruleset name", "ruleset documents", partitioned=False, retain_forever=True),
    TopicSpec(
        "rates", "table name", "currency rates tables", partitioned=False, retain_forever=True
    ),
    TopicSpec("dlq", "original key", "records that could not be processed, with the reason"),
)
# Vigil's own topics, not part of the contract (formats may change between versions).
INTERNAL_TOPICS: tuple[TopicSpec, ...] = (
    # co-partitioned with transactions: same partition count, same (murmur2) partitioner
    TopicSpec("risk.inflows", "payee account_id", "transfers repartitioned by payee"),
    TopicSpec("inspection.clips", "camera_id", "one score record per classified clip"),
)


@dataclass(frozen=True)
class TopicNames:
    """Topic names under one namespace.

    >>> TopicNames("vigil").transactions
    'vigil.transactions'
    """

    namespace: str = "vigil"

    def name(self, suffix: str) -> str:
        return f"{self.namespace}.{suffix}"

    @property
    def transactions(self) -> str:
        return self.name("transactions")

    @property
    def labels(self) -> str:
        return self.name("labels")

    @property
    def scores(self) -> str:
        return self.name("risk.scores")

    @property
    def alerts(self) -> str:
        return self.name("risk.alerts")

    @property
    def frames(self) -> str:
        return self.name("frames")

    @property
    def inspection_alerts(self) -> str:
        return self.name("inspection.alerts")

    @property
    def models(self) -> str:
        return self.name("models")

    @property
    def rules(self) -> str:
        return self.name("rules")

    @property
    def rates(self) -> str:
        return self.name("rates")

    @property
    def dlq(self) -> str:
        return self.name("dlq")

    @property
    def inflows(self) -> str:
        return self.name("risk.inflows")

    @property
    def inspection_clips(self) -> str:
        return self.name("inspection.clips")

    def configs(self) -> dict[str, dict[str, str]]:
        """Topic configs to create with: the control topics keep every record (a worker
        replays them at start; releases and rulesets must not expire)."""
        return {
            self.name(t.suffix): {"retention.ms": "-1", "retention.bytes": "-1"}
            for t in (*CONTRACT_TOPICS, *INTERNAL_TOPICS)
            if t.retain_forever
        }

    def all(self, partitions: int) -> dict[str, int]:
        """Every contract and internal topic with its partition count."""
        return {
            self.name(t.suffix): (partitions if t.partitioned else 1)
            for t in (*CONTRACT_TOPICS, *INTERNAL_TOPICS)
        }
