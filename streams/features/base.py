"""Errors of the feature library."""

from __future__ import annotations

__all__ = ["FeatureError"]


class FeatureError(ValueError):
    """A feature spec, state snapshot or input the feature library cannot use."""
