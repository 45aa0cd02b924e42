"""Streaming feature operators: state objects with update / value / snapshot / restore."""

from streams.features.account import (
    SEED_FEATURES,
    SEED_FEATURES_VERSION,
    SMALL_AMOUNT,
    FeatureSet,
    FeatureSpec,
)
from streams.features.base import FeatureError, FeatureOperator
from streams.features.windows import (
    TimeSinceLast,
    WindowedCount,
    WindowedDistinct,
    WindowedSum,
)

__all__ = [
    "FeatureError",
    "FeatureOperator",
    "FeatureSet",
    "FeatureSpec",
    "SEED_FEATURES",
    "SEED_FEATURES_VERSION",
    "SMALL_AMOUNT",
    "TimeSinceLast",
    "WindowedCount",
    "WindowedDistinct",
    "WindowedSum",
]
