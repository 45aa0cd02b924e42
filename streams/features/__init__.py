"""Streaming feature operators: state objects with update / value / snapshot / restore."""

from streams.features.account import (
    DAY_MS,
    GRACE_MS,
    HOUR_MS,
    SEED_FEATURES_VERSION,
    SMALL_AMOUNT,
    FeatureSet,
)
from streams.features.base import FeatureError, FeatureOperator
from streams.features.windows import (
    EventLog,
    TimeSinceLast,
    WindowCount,
    WindowDistinct,
    WindowSum,
)

__all__ = [
    "DAY_MS",
    "GRACE_MS",
    "HOUR_MS",
    "EventLog",
    "FeatureError",
    "FeatureOperator",
    "FeatureSet",
    "SEED_FEATURES_VERSION",
    "SMALL_AMOUNT",
    "TimeSinceLast",
    "WindowCount",
    "WindowDistinct",
    "WindowSum",
]
