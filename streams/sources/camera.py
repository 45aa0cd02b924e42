"""A seeded factory-line camera: textured parts on a conveyor, seen through a shaking
camera, with sensor noise, slow lighting drift and labelled defects.

Each camera looks down at a belt moving ``speed_px`` pixels per frame. Parts (textured
rectangles) pass with gaps of bare belt between them; some carry a defect (scratch, crack,
stain or pit) drawn into their texture, whose bounding box in frame coordinates is the
frame's label while it is fully in view. The camera shakes: a vibration (sine) plus a
slow random walk, sub-pixel, so consecutive frames do not line up, which the alignment
stage must undo.

Textures: ``TRAIN_TEXTURES`` for training, ``HELDOUT_TEXTURES`` (never seen in training)
for evaluation, and ``FRESH_TEXTURES``, added without ever being looked at while the model
was developed (the held-out ones were: their errors led to the nuisance textures), for an
unbiased evaluation.

Two-tone parts: with ``regions`` > 0, that share of parts has its texture overlaid with
large light and dark regions (uneven coatings, two-tone finishes, shading), 16-64 px
across with edges from soft to sharp. Training clips use it, so that a defect is learned
as a small local anomaly rather than as any large change of brightness; evaluation clips
keep the plain textures.

>>> sim = CameraSimulator(CameraConfig(seed=1, size=64, part_px=56))
>>> shot = next(sim.frames("cam-0"))
>>> shot.frame.image.shape, shot.frame.image.dtype.name, shot.frame.seq
((64, 64), 'uint8', 0)
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import cv2
import numpy as np

from vigil.errors import UsageError
from vigil.streams.frames import Frame

__all__ = [
    "DEFECTS",
    "FRESH_TEXTURES",
    "HELDOUT_TEXTURES",
    "TRAIN_TEXTURES",
    "CameraConfig",
    "CameraSimulator",
    "Defect",
    "PartSource",
    "Shot",
    "draw_defect",
    "texture",
    "two_tone",
]

DEFECTS = ("scratch", "crack", "stain", "pit")
TRAIN_TEXTURES = (
    "grain",
    "weave",
    "speckle",
    "stripes",
    "brushed",
    "blotch",
    "checker",
    # nuisance textures: defect-like marks repeated all over the part, so that a defect is
    # learned as what is unique on a part, not as a dark dot or a line as such
    "dots",
    "hatch",
)
HELDOUT_TEXTURES = ("cells", "marble")  # held out of training; seen while developing
FRESH_TEXTURES = ("wood", "terrazzo")  # held out of training and of development


def texture(kind: str, h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A (h, w) float32 texture in about [60, 200]."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    noise = rng.random((h, w), dtype=np.float32)
    if kind == "grain":
        t = cv2.GaussianBlur(noise, (0, 0), 1.2)
    elif kind == "weave":
        p = rng.uniform(5, 9)
        t = 0.5 + 0.35 * np.sin(2 * np.pi * x / p) * np.sin(2 * np.pi * y / p) + 0.15 * noise
    elif kind == "speckle":
        dots = (noise > 0.97).astype(np.float32)
        t = 0.35 + 2.5 * cv2.GaussianBlur(dots, (0, 0), 1.0) + 0.1 * rng.random((h, w))
    elif kind == "stripes":
        a = rng.uniform(0, np.pi)
        u = x * math.cos(a) + y * math.sin(a)
        t = 0.5 + 0.3 * np.sin(2 * np.pi * u / rng.uniform(6, 12)) + 0.2 * noise
    elif kind == "brushed":  # brushed metal: noise smeared along one direction
        t = cv2.GaussianBlur(noise, (0, 0), sigmaX=float(rng.uniform(4, 8)), sigmaY=0.6)
    elif kind == "blotch":  # low-frequency mottling with fine grain on top
        low = cv2.resize(rng.random((h // 12 + 2, w // 12 + 2), dtype=np.float32), (w, h))
        t = low + 0.25 * cv2.GaussianBlur(noise, (0, 0), 0.8)
    elif kind == "checker":
        p = int(rng.integers(4, 10))
        t = 0.6 * (((x // p) + (y // p)) % 2) + 0.4 * cv2.GaussianBlur(noise, (0, 0), 1.0)
    elif kind == "dots":  # scattered pit-like dots, all dark or all bright on one part
        marks = np.zeros((h, w), np.float32)
        sign = 1.0 if rng.random() < 0.5 else -1.0
        for _ in range(int(h * w / rng.uniform(120, 500))):
            c = (int(rng.integers(w)), int(rng.integers(h)))
            cv2.circle(marks, c, int(rng.integers(1, 5)), float(rng.uniform(0.4, 1.0)), -1)
        t = (
            0.5
            + 0.15 * cv2.GaussianBlur(noise, (0, 0), 1.0)
            + sign * 0.35 * cv2.GaussianBlur(marks, (0, 0), 0.8)
        )
    elif kind == "hatch":  # short scratch-like strokes around one direction
        marks = np.zeros((h, w), np.float32)
        a0 = rng.uniform(0, np.pi)
        for _ in range(int(h * w / rng.uniform(150, 600))):
            a = a0 + rng.normal(0, 0.3)
            n = rng.uniform(h / 12, h / 5)
            x0, y0 = rng.uniform(0, w), rng.uniform(0, h)
            p0 = (int(x0 - n * math.cos(a)), int(y0 - n * math.sin(a)))
            p1 = (int(x0 + n * math.cos(a)), int(y0 + n * math.sin(a)))
            cv2.line(marks, p0, p1, float(rng.uniform(0.4, 1.0)), int(rng.integers(1, 3)))
        sign = 1.0 if rng.random() < 0.5 else -1.0
        t = (
            0.5
            + 0.15 * cv2.GaussianBlur(noise, (0, 0), 1.0)
            + sign * 0.3 * cv2.GaussianBlur(marks, (0, 0), 0.7)
        )
    elif kind == "wood":  # growth rings around a centre off the part, with turbulence
        cx, cy = rng.uniform(-2 * w, 3 * w), rng.uniform(-2 * h, 3 * h)
        turb = cv2.resize(rng.random((h // 8 + 2, w // 8 + 2), dtype=np.float32), (w, h))
        r = np.hypot(x - cx, y - cy) + 8 * turb
        t = 0.5 + 0.35 * np.sin(2 * np.pi * r / rng.uniform(5, 10)) + 0.15 * noise
    elif kind == "terrazzo":  # chips of random grey in a binder
        t = 0.5 + 0.1 * cv2.GaussianBlur(noise, (0, 0), 1.0)
        for _ in range(int(h * w / rng.uniform(60, 150))):
            c = (int(rng.integers(w)), int(rng.integers(h)))
            axes = (int(rng.integers(2, 7)), int(rng.integers(2, 7)))
            grey = float(rng.uniform(0.1, 0.9))
            cv2.ellipse(t, c, axes, float(rng.uniform(0, 180)), 0, 360, grey, -1)
    elif kind == "cells":
        pts = rng.random((max(8, h * w // 300), 2)) * (h, w)
        d = np.full((h, w), np.inf, dtype=np.float32)
        for py, px in pts:
            d = np.minimum(d, np.hypot(y - py, x - px))
        t = np.clip(d / 12, 0, 1) + 0.1 * noise
    elif kind == "marble":
        turb = sum(
            cv2.resize(rng.random((h // s + 2, w // s + 2), dtype=np.float32), (w, h)) / s
            for s in (2, 4, 8, 16)
        )
        t = 0.5 + 0.4 * np.sin(x / 9 + 4 * turb) + 0.1 * noise
    else:
        raise UsageError(f"unknown texture {kind!r}")
    return _grey(t)


GREY_LOW, GREY_SPAN = 60.0, 140.0  # the textures' grey range: [60, 200]


def _grey(t: np.ndarray) -> np.ndarray:
    """Stretched to the textures' grey range."""
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    return (GREY_LOW + GREY_SPAN * t).astype(np.float32)


def two_tone(tex: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``tex`` overlaid with large light and dark regions: a smooth random field 16-64 px
    across through a sigmoid of random steepness (soft shading to sharp-edged patches),
    blended in or multiplied, at 30-80 % strength."""
    h, w = tex.shape
    scale = rng.uniform(16, 64)
    coarse = rng.standard_normal((int(h / scale) + 2, int(w / scale) + 2)).astype(np.float32)
    f = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    f = 1 / (1 + np.exp(-rng.uniform(0.5, 6) * (f - f.mean()) / (f.std() + 1e-6)))
    strength = rng.uniform(0.3, 0.8)
    u = (tex - GREY_LOW) / GREY_SPAN  # back to [0, 1], as ``f``
    if rng.random() < 0.5:
        u = (1 - strength) * u + strength * f
    else:
        u = u * ((1 - strength) + strength * f)
    return _grey(u)


@dataclass(frozen=True)
class Defect:
    kind: str
    bbox: tuple[int, int, int, int]  # x, y, w, h in the part's (later: the frame's) pixels


def draw_defect(
    part: np.ndarray, kind: str, rng: np.random.Generator, contrast: float = 1.0
) -> Defect:
    """Draw a defect into ``part`` (in place; ``contrast`` scales its shade); its bounding
    box."""
    h, w = part.shape
    mask = np.zeros((h, w), np.uint8)
    cx, cy = int(rng.integers(w // 4, 3 * w // 4)), int(rng.integers(h // 4, 3 * h // 4))
    if kind == "scratch":
        a, n = rng.uniform(0, np.pi), int(rng.integers(h // 5, h // 3))
        dx, dy = int(n * math.cos(a)), int(n * math.sin(a))
        cv2.line(mask, (cx - dx, cy - dy), (cx + dx, cy + dy), 255, 2)
        shade = 70.0
    elif kind == "crack":
        pts = [(cx, cy)]
        for _ in range(int(rng.integers(6, 10))):
            px, py = pts[-1]
            pts.append((px + int(rng.integers(2, 7)), py + int(rng.integers(-4, 5))))
        cv2.polylines(mask, [np.array(pts, np.int32)], False, 255, 2)
        shade = -90.0
    elif kind == "stain":
        r = int(rng.integers(h // 12, h // 7))
        cv2.ellipse(
            mask,
            (cx, cy),
            (r + int(rng.integers(0, r)), r),
            float(rng.uniform(0, 180)),
            0,
            360,
            255,
            -1,
        )
        shade = -55.0
    elif kind == "pit":
        cv2.circle(mask, (cx, cy), int(rng.integers(3, 5)), 255, -1)
        shade = -100.0
    else:
        raise UsageError(f"unknown defect {kind!r}")
    soft = cv2.GaussianBlur(mask.astype(np.float32) / 255, (0, 0), 0.8)
    part += contrast * shade * soft
    x, y, bw, bh = cv2.boundingRect(mask)
    return Defect(kind, (x, y, bw, bh))


@dataclass(frozen=True)
class CameraConfig:
    seed: int = 0
    size: int = 128  # frame height and width (grey)
    fps: float = 100.0
    speed_px: float = 3.0  # belt travel per frame
    part_px: int = 112  # part length along the belt (and its height)
    gap_px: int = 48  # bare belt between parts
    jitter_px: float = 2.0  # vibration amplitude
    vibration_hz: float = 7.0
    noise_sigma: float = 2.0
    light_drift: float = 0.08  # relative, over ``light_period_s``
    light_period_s: float = 20.0
    defect_rate: float = 0.3  # share of parts with a defect
    textures: tuple[str, ...] = TRAIN_TEXTURES
    regions: float = 0.0  # share of parts made two-tone (see the module notes)
    start_ms: int = 1_767_225_600_000  # 2026-01-01T00:00:00Z

    @classmethod
    def framed(cls, size: int, fill: bool = False, **more: Any) -> CameraConfig:
        """A camera of ``size`` pixels framing parts as the default one does: parts 7/8
        of the frame, or all of it with ``fill`` (a user's photographs: what the camera
        sees of a part), gaps 3/8 of it (8 pixels at least; ``more``: other fields)."""
        part = size if fill else max(8, size * 7 // 8)
        return cls(size=size, part_px=part, gap_px=max(8, size * 3 // 8), **more)

    def __post_init__(self) -> None:
        if not 8 <= self.part_px <= self.size:
            raise UsageError(f"part_px must be between 8 and the frame size {self.size}")
        if self.fps <= 0 or self.speed_px < 0:
            raise UsageError("fps must be positive and speed_px not negative")
        if not 0 <= self.regions <= 1:
            raise UsageError(f"regions is a share of parts, between 0 and 1: {self.regions}")


@dataclass(frozen=True)
class Shot:
    """One simulated frame and its ground truth."""

    frame: Frame
    part: int | None  # the part under the camera's centre, if any
    defect: Defect | None  # fully in view in this frame (bbox in frame pixels)
    partial: bool = False  # a defect is partly in view (cut by the frame's edge)
    texture: str | None = None  # of the part under the camera's centre (its name)
    part_xy: tuple[float, float] | None = None  # that part's top-left corner in the frame


class PartSource(Protocol):
    """Where a camera's parts come from instead of the procedural textures (the user's
    own images: ``models.inspection.images.ImageParts``)."""

    def make(
        self, k: int, rng: np.random.Generator, size: int, defect_rate: float
    ) -> tuple[np.ndarray, Defect | None, str]:
        """Part ``k``: (size, size) float32 grey pixels, its defect (box in the part's
        pixels) or None, and its name."""
        ...


@dataclass
class CameraSimulator:
    config: CameraConfig = field(default_factory=CameraConfig)
    parts: PartSource | None = None  # None: procedural textures (config.textures)

    def _part(self, index: int, k: int) -> tuple[np.ndarray, Defect | None, str]:
        """Part ``k`` of camera ``index``: its pixels (float32, ``part_px`` square), its
        defect (box in the part's pixels) and its name (the texture, or the image's)."""
        cfg = self.config
        prng = np.random.default_rng([cfg.seed, index, k])
        if self.parts is not None:
            return self.parts.make(k, prng, cfg.part_px, cfg.defect_rate)
        kind = cfg.textures[int(prng.integers(len(cfg.textures)))]
        tex = texture(kind, cfg.part_px, cfg.part_px, prng)
        if cfg.regions:  # its own stream: the parts' defects stay as they were
            trng = np.random.default_rng([cfg.seed, index, k, 1])
            if trng.random() < cfg.regions:
                tex = two_tone(tex, trng)
        defect = None
        if prng.random() < cfg.defect_rate:
            defect = draw_defect(tex, DEFECTS[int(prng.integers(len(DEFECTS)))], prng)
        return tex, defect, kind

    def frames(self, camera_id: str, index: int = 0) -> Iterator[Shot]:
        """Endless frames of camera ``index`` (its own seeded line)."""
        cfg = self.config
        rng = np.random.default_rng([cfg.seed, index])
        size, pitch = cfg.size, cfg.part_px + cfg.gap_px
        belt = texture("grain", size + 8, 4 * size, np.random.default_rng([cfg.seed, index, 99]))
        belt = 0.35 * belt + 20
        parts: dict[int, tuple[np.ndarray, Defect | None]] = {}
        walk = np.zeros(2)
        top = (size + 8 - cfg.part_px) // 2  # the parts' top edge in the view's pixels
        period_ms = 1000.0 / cfg.fps
        for seq in range(10**12):
            t_s = seq / cfg.fps
            # camera shake: vibration + slow random walk (sub-pixel)
            walk = 0.98 * walk + rng.normal(0, cfg.jitter_px * 0.15, 2)
            phase = 2 * np.pi * cfg.vibration_hz * t_s
            jx = cfg.jitter_px * math.sin(phase) + walk[0]
            jy = cfg.jitter_px * math.cos(1.3 * phase) + walk[1]
            x0 = seq * cfg.speed_px  # belt position under the frame's left edge
            view = np.empty((size + 8, size + 8), np.float32)
            # belt, then every part overlapping the view (x in belt coordinates)
            bx = int(x0) % (belt.shape[1] - size - 8)
            view[:] = belt[:, bx : bx + size + 8]
            left = int(x0) - 4
            first, last = left // pitch, (left + size + 8) // pitch
            for k in range(max(0, first), last + 1):
                if k not in parts:
                    parts[k] = self._part(index, k)
                    for old in [p for p in parts if p < k - 2]:
                        del parts[old]
                tex, _, _ = parts[k]
                px = k * pitch - left  # part's left edge in view pixels
                py = top
                a, b = max(0, px), min(size + 8, px + cfg.part_px)
                if a < b:
                    view[py : py + cfg.part_px, a:b] = tex[:, a - px : b - px]
            # sub-pixel shake and the fractional belt position: one affine warp
            fx = x0 - int(x0)
            m = np.float32([[1, 0, 4 + fx + jx], [0, 1, 4 + jy]])
            img = cv2.warpAffine(
                view,
                m,
                (size, size),
                flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                borderMode=cv2.BORDER_REFLECT,
            )
            light = 1 + cfg.light_drift * math.sin(2 * np.pi * t_s / cfg.light_period_s + index)
            img = img * light + rng.normal(0, cfg.noise_sigma, img.shape)
            centre = int(x0) + size // 2
            k, off = divmod(centre, pitch)
            part = k if off < cfg.part_px else None
            shown, partial = None, False
            for kk in range(max(0, first), last + 1):
                _, defect, _ = parts[kk]
                if defect is None:
                    continue
                dx, dy, dw, dh = defect.bbox
                fx0 = kk * pitch + dx - x0 - jx  # frame coordinates of the defect box
                fy0 = top + dy - 4 - jy
                if fx0 >= 0 and fx0 + dw <= size and fy0 >= 0 and fy0 + dh <= size:
                    shown = Defect(defect.kind, (int(round(fx0)), int(round(fy0)), dw, dh))
                elif fx0 < size and fx0 + dw > 0 and fy0 < size and fy0 + dh > 0:
                    partial = True
            yield Shot(
                Frame(
                    camera_id,
                    seq,
                    cfg.start_ms + int(seq * period_ms),
                    np.clip(img, 0, 255).astype(np.uint8),
                ),
                part,
                shown,
                partial,
                parts[part][2] if part is not None and part in parts else None,
                None if part is None else (part * pitch - x0 - jx, top - 4 - jy),
            )
