"""Shared fixtures. Integration tests get a real Kafka-protocol broker: the embedded Tansu
(one per test session), or the cluster named by VIGIL_KAFKA_BOOTSTRAP."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from importlib import resources
from pathlib import Path

import pytest

from apps.broker import EmbeddedBroker, ensure_topics
from apps.settings import Settings


@pytest.fixture(scope="session")
def bootstrap(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    configured = os.environ.get("VIGIL_KAFKA_BOOTSTRAP")
    if configured:
        yield configured
        return
    log = tmp_path_factory.mktemp("broker") / "tansu.log"
    with EmbeddedBroker(log_path=log) as broker:
        yield broker.bootstrap


@pytest.fixture
def namespace() -> str:
    """A fresh topic namespace per test: tests share the broker, never topics."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
def settings(bootstrap: str, namespace: str, tmp_path: Path) -> Settings:
    s = Settings(
        kafka_bootstrap=bootstrap, namespace=namespace, state_dir=tmp_path / "state", partitions=4
    )
    ensure_topics(bootstrap, s.topics.all(s.partitions))
    return s


SEED_RULESET = resources.files("streams.rules").joinpath("rulesets", "seed.yaml")


def worker_env(settings: Settings) -> dict[str, str]:
    return {
        "VIGIL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "VIGIL_NAMESPACE": settings.namespace,
        "VIGIL_STATE_DIR": str(settings.state_dir),
        "VIGIL_PARTITIONS": str(settings.partitions),
        "VIGIL_LOG_LEVEL": "INFO",
        # the seed rules: the decisions tests.reference recomputes independently
        "VIGIL_RULESET_PATH": str(
            resources.files("streams.rules").joinpath("rulesets", "seed.yaml")
        ),
    }
