"""Per-camera frame ordering, clip windows and motion compensation."""

from streams.alignment.motion import METHODS, align_clip, estimate_shift, residual_mad
from streams.alignment.reorder import ClipWindows, ReorderBuffer

__all__ = [
    "METHODS",
    "ClipWindows",
    "ReorderBuffer",
    "align_clip",
    "estimate_shift",
    "residual_mad",
]
