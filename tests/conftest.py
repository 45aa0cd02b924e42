"""Shared fixtures. Integration tests get a real Kafka-protocol broker: the embedded Tansu
(one per test session), or the cluster named by VIGIL_KAFKA_BOOTSTRAP."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import pytest

from vigil.apps.broker import EmbeddedBroker, ensure_topics
from vigil.apps.settings import Settings


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


SEED_RULESET = resources.files("vigil.streams.rules").joinpath("rulesets", "seed.yaml")


def worker_env(settings: Settings) -> dict[str, str]:
    return {
        "VIGIL_KAFKA_BOOTSTRAP": settings.kafka_bootstrap or "",
        "VIGIL_NAMESPACE": settings.namespace,
        "VIGIL_STATE_DIR": str(settings.state_dir),
        "VIGIL_PARTITIONS": str(settings.partitions),
        "VIGIL_LOG_LEVEL": "INFO",
        # no metrics endpoints (tests run workers side by side): test_metrics_worker.py
        # serves them on ports of its own
        "VIGIL_RISK_METRICS_PORT": "0",
        "VIGIL_INSPECTION_METRICS_PORT": "0",
        # the seed rules: the decisions tests.reference recomputes independently
        "VIGIL_RULESET_PATH": str(
            resources.files("vigil.streams.rules").joinpath("rulesets", "seed.yaml")
        ),
    }


# Trained models, built once per test session and shared read-only by every module that
# needs one (training is most of the suite's time). Modules must not change them.


@dataclass(frozen=True)
class TrainedRisk:
    model: Any  # vigil.models.risk.HybridModel
    train_set: Any  # vigil.models.risk.History
    test_set: Any
    path: Path  # the exported model directory


def _trained_risk(out: Path, days: int, accounts: int, cfg: Any, check_rows: int) -> TrainedRisk:
    from vigil.models.risk import (
        WARMUP_DAYS,
        export,
        history_from_generator,
        temporal_split,
        train,
    )

    history = history_from_generator(days, seed=3, accounts=accounts, warmup_days=WARMUP_DAYS)
    train_set, test_set = temporal_split(history, 2)
    model = train(train_set, cfg, say=lambda _m: None)
    return TrainedRisk(
        model, train_set, test_set, export(model, out, test_set.features[:check_rows])
    )


@pytest.fixture(scope="session")
def small_risk(tmp_path_factory: pytest.TempPathFactory) -> TrainedRisk:
    """8 generated days (400 accounts), the last 2 held out; a small hybrid (40 trees)."""
    from vigil.models.risk import TabularConfig

    cfg = TabularConfig(seed=3, trees=40, epochs=4, folds=3)
    return _trained_risk(tmp_path_factory.mktemp("small-risk"), 8, 400, cfg, 500)


@pytest.fixture(scope="session")
def tiny_risk(tmp_path_factory: pytest.TempPathFactory) -> TrainedRisk:
    """6 generated days (300 accounts), the last 2 held out; a tiny hybrid (30 trees)."""
    from vigil.models.risk import TabularConfig

    cfg = TabularConfig(seed=3, trees=30, epochs=3, folds=3)
    return _trained_risk(tmp_path_factory.mktemp("tiny-risk"), 6, 300, cfg, 200)
