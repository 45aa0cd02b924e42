"""Per-camera frame ordering, clip windows and motion compensation."""

from vigil.streams.alignment.clip import grey_u8, prepare_clip
from vigil.streams.alignment.motion import METHODS, align_clip, estimate_shift, residual_mad
from vigil.streams.alignment.reorder import ClipWindows, ReorderBuffer

__all__ = [
    "METHODS",
    "ClipWindows",
    "ReorderBuffer",
    "align_clip",
    "estimate_shift",
    "grey_u8",
    "prepare_clip",
    "residual_mad",
]
