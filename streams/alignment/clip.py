"""A window of frames as the clip classifier takes it: grey 8-bit, resized to the model's
input, aligned to its middle frame, scaled to [0, 1]. Training (models.inspection) and the
inspection worker both go through ``prepare_clip``, so they see the same pixels."""

from __future__ import annotations

from collections.abc import Sequence

import cv2
import numpy as np

from vigil.streams.alignment.motion import align_clip

__all__ = ["grey_u8", "prepare_clip"]


def grey_u8(image: np.ndarray) -> np.ndarray:
    """One frame as 8-bit grey: colour (BGR/BGRA) is converted, uint16 scaled by 1/257,
    float32 taken as [0, 1] when it fits, else as 0..255. Fixed per dtype, never per
    frame, so a clip's frames stay comparable."""
    img = image
    if img.ndim == 3:
        img = img[..., :3] if img.shape[2] == 4 else img
        img = img[..., 0] if img.shape[2] == 1 else cv2.cvtColor(img, cv2.COLOR_BGR2GRAY)
    if img.dtype == np.uint8:
        return img
    if img.dtype == np.uint16:
        return (img // 257).astype(np.uint8)
    f = np.nan_to_num(img.astype(np.float32))
    if f.min() >= 0 and f.max() <= 1:
        f = f * 255
    return np.clip(np.rint(f), 0, 255).astype(np.uint8)


def prepare_clip(images: Sequence[np.ndarray], size: int, method: str = "dis") -> np.ndarray:
    """(1, T, size, size) float32 in [0, 1]: the frames in grey, resized (area) to
    ``size`` when they are not that size, aligned to the middle frame by ``method``."""
    grey = []
    for image in images:
        g = grey_u8(image)
        if g.shape != (size, size):
            g = cv2.resize(g, (size, size), interpolation=cv2.INTER_AREA)
        grey.append(g)
    aligned = align_clip(np.stack(grey), method)
    return (aligned * np.float32(1 / 255))[None]
