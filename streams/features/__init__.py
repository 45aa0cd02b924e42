"""The feature library: named operators over per-account state (``library``) and the
vectorised engine that evaluates them for whole micro-batches (``engine``)."""

from vigil.streams.features.base import FeatureError
from vigil.streams.features.engine import AccountLog, FeatureEngine, event_rows
from vigil.streams.features.library import FEATURE_SPEC, FEATURES, FeatureSpec

__all__ = [
    "FEATURES",
    "FEATURE_SPEC",
    "AccountLog",
    "FeatureEngine",
    "FeatureError",
    "FeatureSpec",
    "event_rows",
]
