"""A user's own part images for the inspection model: a folder of photographs, some of
them defective (with optional masks), read into grey parts for the camera simulator.

Layout of ``DIR`` (``vigil train inspection --images DIR``; docs/models/inspection.md):

- ``good/`` (also ``ok``, ``normal``, ``free``, ``clean``, or a name ending in ``_free``,
  ``-free``, ``_good``, e.g. ``MT_Free``): defect-free images;
- one folder per defect kind (``crack/``, ``MT_Blowhole/``, ...), images at any depth
  below it (a layout folder in between, ``Imgs/``, ``images/``, ``train/``, ``test/``, is
  skipped when naming the kind);
- a mask per defective image, optional (white = defect): ``NAME.png`` beside ``NAME.jpg``,
  ``NAME_mask.png``, or the same name under a ``masks/`` (``ground_truth/``, ``gt/``)
  folder;
- or ``labels.csv`` at the top (``image,kind[,mask]``, paths relative to ``DIR``; an empty
  kind or ``good`` is defect-free), which then says everything.

A common prefix of the kind folders ending in ``_`` is dropped (``MT_Crack`` is ``crack``).
Images of any size and depth (8 or 16 bits, grey, colour or with alpha) are read as 8-bit
grey; a file that cannot be read is reported with why (:class:`ImageSet.problems`), never
fatal."""

from __future__ import annotations

import csv
import os
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from vigil.errors import DataError
from vigil.streams.sources.camera import DEFECTS, Defect, draw_defect

__all__ = [
    "IMAGE_SUFFIXES",
    "PAINTED",
    "REGIONS",
    "ImageParts",
    "ImageSet",
    "LabelledImage",
    "Part",
    "load_parts",
    "paint_region",
    "read_grey",
    "scan_images",
]

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
GOOD_NAMES = frozenset({"good", "ok", "normal", "free", "clean", "defect-free", "defect_free"})
GOOD_SUFFIXES = ("_free", "-free", "_good", "-good", "_ok", "-ok")
LAYOUT_FOLDERS = frozenset({"imgs", "images", "img", "train", "test", "val", "validation"})
MASK_FOLDERS = frozenset({"masks", "mask", "ground_truth", "groundtruth", "gt"})
MIN_SIDE = 16  # pixels: smaller is not a photograph of a part
# read images are shrunk to this longest side: parts are 56-224 pixels on the camera, and
# thousands of photographs held at full size would be gigabytes
MAX_SIDE = 512
LABELS_FILE = "labels.csv"


@dataclass(frozen=True)
class LabelledImage:
    path: Path
    kind: str | None  # None: defect-free
    mask: Path | None = None


@dataclass
class ImageSet:
    """What ``scan_images`` found: images with their kind and mask, and the files it
    left out with why."""

    root: Path
    images: list[LabelledImage]
    problems: list[str] = field(default_factory=list)

    @property
    def good(self) -> list[LabelledImage]:
        return [i for i in self.images if i.kind is None]

    @property
    def defective(self) -> list[LabelledImage]:
        return [i for i in self.images if i.kind is not None]

    def counts(self) -> dict[str, int]:
        """Images per kind (``good`` for the defect-free ones)."""
        return dict(Counter(i.kind or "good" for i in self.images))


def _is_good(name: str) -> bool:
    low = name.lower()
    return low in GOOD_NAMES or low.endswith(GOOD_SUFFIXES)


def _kind_folder(rel: Path) -> str | None:
    """The folder naming an image's kind: the first one below the root that is not a
    layout folder (None: the image lies at the top)."""
    for part in rel.parts[:-1]:
        if part.lower() not in LAYOUT_FOLDERS:
            return part
    return None


def _mask_for(path: Path, root: Path, images: set[Path]) -> Path | None:
    stem = path.stem
    candidates = [path.with_name(f"{stem}_mask.png")]
    if path.suffix.lower() != ".png":
        candidates.append(path.with_suffix(".png"))
    rel = path.relative_to(root)
    for folder in MASK_FOLDERS:
        for base in (root / folder, path.parent / folder):
            for sub in (rel.parent, Path(*rel.parts[1:-1]) if len(rel.parts) > 1 else Path()):
                candidates += [base / sub / f"{stem}.png", base / sub / f"{stem}_mask.png"]
    for c in candidates:
        if c != path and c.is_file() and c not in images:
            return c
    return None


def scan_images(root: Path | str) -> ImageSet:
    """The images under ``root`` with their kinds and masks (see the module notes).
    DataError when ``root`` is not a folder or holds no defect-free image."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"{root}: not a folder of images")
    labelled = (root / LABELS_FILE).is_file()
    found = _from_labels(root) if labelled else _from_folders(root)
    if not found.good:
        raise DataError(
            f"{root}: no defect-free images (a folder named good/, ok/, normal/ or ending in "
            f"_free, or {LABELS_FILE}); found {found.counts() or 'no images'}"
        )
    return found


def _from_folders(root: Path) -> ImageSet:
    files: list[Path] = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d.lower() not in MASK_FOLDERS)
        here = Path(dirpath)
        files += [here / f for f in sorted(filenames) if f.lower().endswith(IMAGE_SUFFIXES)]
    paths = set(files)
    # a mask is a .png with an image of another suffix and the same stem beside it, or a
    # NAME_mask.png
    masks = {p for p in files if p.name.lower().endswith("_mask.png")}
    for p in files:
        if p.suffix.lower() != ".png":
            twin = p.with_suffix(".png")
            if twin in paths:
                masks.add(twin)
    folders = {}
    problems = []
    for p in files:
        if p in masks:
            continue
        folder = _kind_folder(p.relative_to(root))
        if folder is None:
            problems.append(
                f"{p}: at the top of the folder, so of no kind (put it in good/ or <kind>/)"
            )
            continue
        folders[p] = folder
    names = _short_names(sorted({f for f in folders.values() if not _is_good(f)}))
    images = [
        LabelledImage(
            p,
            None if _is_good(f) else names[f],
            None if _is_good(f) else _mask_for(p, root, paths - masks),
        )
        for p, f in folders.items()
    ]
    return ImageSet(root, images, problems)


def _short_names(folders: list[str]) -> dict[str, str]:
    """Kind names: the folders' names in lower case, less a common prefix ending in ``_``
    (``MT_Crack``, ``MT_Fray`` -> ``crack``, ``fray``)."""
    prefix = os.path.commonprefix(folders) if len(folders) > 1 else ""
    prefix = prefix[: prefix.rfind("_") + 1]
    return {f: f[len(prefix) :].lower() or f.lower() for f in folders}


def _from_labels(root: Path) -> ImageSet:
    images, problems = [], []
    path = root / LABELS_FILE
    with path.open(newline="", encoding="utf-8") as fh:
        rows = csv.DictReader(fh)
        if not rows.fieldnames or not {"image", "kind"} <= set(rows.fieldnames):
            raise DataError(f"{path}: needs the columns image,kind[,mask]")
        for n, row in enumerate(rows, start=2):
            image = root / (row.get("image") or "")
            if not row.get("image") or not image.is_file():
                problems.append(f"{path}:{n}: no image file {row.get('image')!r}")
                continue
            kind = (row.get("kind") or "").strip().lower()
            mask = (row.get("mask") or "").strip()
            good = kind in ("", "good") or _is_good(kind)
            images.append(
                LabelledImage(image, None if good else kind, root / mask if mask else None)
            )
    return ImageSet(root, images, problems)


def read_grey(path: Path, max_side: int = MAX_SIDE) -> np.ndarray:
    """An image file as 8-bit grey (H, W), its longest side at most ``max_side``.
    DataError with why when it cannot be used."""
    try:
        data = np.fromfile(path, np.uint8)
    except OSError as exc:
        raise DataError(f"{path}: {exc.strerror or exc}") from None
    img = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if len(data) else None
    if img is None:
        raise DataError(f"{path}: not an image OpenCV can read")
    if img.ndim == 3:
        if img.shape[2] <= 2:  # grey, or grey and alpha
            img = img[:, :, 0]
        else:
            img = cv2.cvtColor(
                img, cv2.COLOR_BGRA2GRAY if img.shape[2] == 4 else cv2.COLOR_BGR2GRAY
            )
    if img.dtype == np.uint16:
        img = (img >> 8).astype(np.uint8)
    elif img.dtype != np.uint8:  # float or other: its own range stretched to 0-255
        f = np.nan_to_num(img.astype(np.float64))
        span = float(f.max() - f.min())
        img = ((f - f.min()) / span * 255 if span > 0 else np.zeros_like(f)).astype(np.uint8)
    h, w = img.shape
    if min(h, w) < MIN_SIDE:
        raise DataError(f"{path}: {w}x{h} pixels, too small to be a part (at least {MIN_SIDE})")
    if max(h, w) > max_side:
        scale = max_side / max(h, w)
        img = cv2.resize(
            img, (max(1, round(w * scale)), max(1, round(h * scale))), interpolation=cv2.INTER_AREA
        )
    return np.ascontiguousarray(img)


@dataclass(frozen=True)
class Part:
    """A read image: grey pixels, its kind (None: defect-free) and its defect mask
    (None: unknown or none), the same size as the pixels."""

    image: np.ndarray  # (H, W) uint8
    kind: str | None
    mask: np.ndarray | None  # (H, W) bool
    name: str


def load_parts(found: list[LabelledImage], problems: list[str]) -> list[Part]:
    """Read ``found``; a file that cannot be read, or a mask that cannot, is appended to
    ``problems`` with why (the image is left out; an unreadable mask leaves the image
    without one)."""
    parts = []
    for item in found:
        try:
            image = read_grey(item.path)
        except DataError as exc:
            problems.append(str(exc))
            continue
        mask = None
        if item.mask is not None:
            try:
                m = read_grey(item.mask, max_side=1 << 30)
            except DataError as exc:
                problems.append(f"mask of {item.path.name}: {exc}")
            else:
                m = cv2.resize(m, image.shape[::-1], interpolation=cv2.INTER_NEAREST)
                mask = m > 127
                if not mask.any():
                    mask = None  # an empty mask says nothing of where
        parts.append(Part(image, item.kind, mask, item.path.name))
    return parts


# what is painted on defect-free images: the simulator's small marks, and regions unlike
# the rest of the part (after DRAEM's anomalies: a smooth random blob whose inside is
# shifted in brightness, blurred, or another image's surface; a chipped edge)
REGIONS = ("blob", "chip")
PAINTED = (*DEFECTS, *REGIONS)


def _blob(h: int, w: int, rng: np.random.Generator) -> np.ndarray:
    """A random smooth region (bool, h x w): thresholded low-frequency noise, 3-25 % of
    the part."""
    scale = float(rng.uniform(6, 24))
    coarse = rng.standard_normal((int(h / scale) + 2, int(w / scale) + 2)).astype(np.float32)
    field_ = cv2.resize(coarse, (w, h), interpolation=cv2.INTER_CUBIC)
    share = float(rng.uniform(0.03, 0.25))
    cut = np.quantile(field_, 1 - share)
    region = field_ >= cut
    n, labels, stats, _ = cv2.connectedComponentsWithStats(region.astype(np.uint8))
    if n > 2:  # the largest piece only: one defect
        biggest = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
        region = labels == biggest
    return region


def paint_region(
    pixels: np.ndarray, kind: str, rng: np.random.Generator, other: np.ndarray
) -> tuple[int, int, int, int]:
    """Paint a region defect into ``pixels`` (float32, in place); its box. ``blob``: a
    smooth region whose inside is darker or lighter, blurred, or ``other`` image's surface;
    ``chip``: a piece broken off an edge (darker, its edge sharp)."""
    h, w = pixels.shape
    if kind == "chip":
        mask = np.zeros((h, w), np.uint8)
        side = int(rng.integers(4))
        depth, span = int(rng.integers(h // 12, h // 4)), int(rng.integers(w // 8, w // 2))
        at = int(rng.integers(0, w - span))
        pts = [(at, 0), (at + span, 0)]
        pts += [
            (at + int(rng.integers(0, span)), int(rng.integers(depth // 2, depth + 1)))
            for _ in range(3)
        ]
        cv2.fillPoly(mask, [np.array(sorted(pts, key=lambda p: p[0]), np.int32)], 1)
        region = np.rot90(mask, side).astype(bool)
        if region.shape != (h, w):
            region = (
                cv2.resize(region.astype(np.uint8), (w, h), interpolation=cv2.INTER_NEAREST) > 0
            )
        pixels[region] = pixels[region] * float(rng.uniform(0.2, 0.6))
    else:
        region = _blob(h, w, rng)
        how = int(rng.integers(3))
        if how == 0:
            inside = pixels * float(rng.choice([rng.uniform(0.5, 0.85), rng.uniform(1.15, 1.6)]))
        elif how == 1:
            inside = cv2.GaussianBlur(pixels, (0, 0), float(rng.uniform(1.5, 4)))
        else:
            inside = cv2.resize(other, (w, h), interpolation=cv2.INTER_AREA).astype(np.float32)
            inside = np.rot90(inside, int(rng.integers(4))) if h == w else inside
        soft = cv2.GaussianBlur(region.astype(np.float32), (0, 0), float(rng.uniform(0.5, 2)))
        beta = float(rng.uniform(0.5, 1.0))
        pixels += beta * soft * (inside - pixels)
    np.clip(pixels, 0, 255, out=pixels)
    x, y, bw, bh = cv2.boundingRect(region.astype(np.uint8))
    return (x, y, bw, bh)


@dataclass
class ImageParts:
    """The camera simulator's parts made of a user's images (``CameraSimulator(parts=)``):
    each part an image shrunk to the part's size, with its real defect (the box of its
    mask, or the whole part when it has none) or, for a defect-free image, a synthetic
    one painted on with probability ``paint`` (the simulator's scratches, cracks, stains
    and pits, at 25-100 % of their contrast, or a region: ``paint_region``).

    ``order``: ``random`` (training: any image, any time), ``cycle`` (evaluation: part k
    is ``parts[(k - first) % len(parts)]``, each image once per round, none painted) or
    ``line`` (a camera: a defective image with the camera's defect rate, else a
    defect-free one)."""

    parts: list[Part]
    paint: float = 0.0
    order: str = "random"
    first: int = 0  # cycle: the part that shows the first image

    def __post_init__(self) -> None:
        if not self.parts:
            raise DataError("no images to make parts of")
        if self.order not in ("random", "cycle", "line"):
            raise DataError(f"order is random, cycle or line, not {self.order!r}")
        self._good = [i for i, p in enumerate(self.parts) if p.kind is None]
        self._bad = [i for i, p in enumerate(self.parts) if p.kind is not None]

    def index(self, k: int, rng: np.random.Generator, defect_rate: float = 0.0) -> int:
        """Which image part ``k`` is (``rng``: the part's own stream)."""
        if self.order == "cycle":
            return (k - self.first) % len(self.parts)
        if self.order == "line" and self._good and self._bad:
            pool = self._bad if rng.random() < defect_rate else self._good
            return pool[int(rng.integers(len(pool)))]
        return int(rng.integers(len(self.parts)))

    def make(
        self, k: int, rng: np.random.Generator, size: int, defect_rate: float
    ) -> tuple[np.ndarray, Defect | None, str]:
        part = self.parts[self.index(k, rng, defect_rate)]
        pixels = cv2.resize(part.image, (size, size), interpolation=cv2.INTER_AREA)
        pixels = pixels.astype(np.float32)
        if part.kind is not None:
            return pixels, Defect(part.kind, self.box(part, size)), part.name
        defect = None
        if self.order == "random" and rng.random() < self.paint:
            kind = PAINTED[int(rng.integers(len(PAINTED)))]
            if kind in DEFECTS:
                drawn = draw_defect(pixels, kind, rng, contrast=float(rng.uniform(0.25, 1.0)))
                box = drawn.bbox
            else:
                other = self.parts[int(rng.integers(len(self.parts)))].image
                box = paint_region(pixels, kind, rng, other)
            defect = Defect(f"synthetic-{kind}", box)
        return pixels, defect, part.name

    @staticmethod
    def box(part: Part, size: int) -> tuple[int, int, int, int]:
        """The defect's box in a part of ``size`` pixels: its mask's, or the whole part."""
        m = ImageParts.mask(part, size)
        if m is None:
            return (0, 0, size, size)
        m = m.astype(np.uint8)
        if not m.any():  # a defect smaller than a pixel of the part: its centre
            ys, xs = np.nonzero(part.mask)
            h, w = part.mask.shape
            m[
                min(size - 1, int(ys.mean() * size / h)), min(size - 1, int(xs.mean() * size / w))
            ] = 1
        x, y, w, h = cv2.boundingRect(m)
        return (x, y, w, h)

    @staticmethod
    def mask(part: Part, size: int) -> np.ndarray | None:
        """The defect's mask in a part of ``size`` pixels (None: no mask)."""
        if part.mask is None:
            return None
        m = cv2.resize(part.mask.astype(np.uint8), (size, size), interpolation=cv2.INTER_NEAREST)
        return m.astype(bool)
