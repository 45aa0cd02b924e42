"""Errors of the feature library."""

from __future__ import annotations

from vigil.errors import VigilError

__all__ = ["FeatureError"]


class FeatureError(VigilError, ValueError):
    """A feature spec, state snapshot or input the feature library cannot use."""
