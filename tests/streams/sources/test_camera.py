"""The camera simulator: seeded, paced, and its defect labels checked against the pixels:
the same line rendered with and without defects differs only inside the labelled boxes."""

from __future__ import annotations

import dataclasses
import itertools

import numpy as np
import pytest

from vigil.streams.alignment import METHODS, align_clip, residual_mad
from vigil.streams.sources.camera import (
    FRESH_TEXTURES,
    HELDOUT_TEXTURES,
    TRAIN_TEXTURES,
    CameraConfig,
    CameraSimulator,
    texture,
    two_tone,
)


def _shots(cfg: CameraConfig, n: int, camera: int = 0) -> list:
    return list(itertools.islice(CameraSimulator(cfg).frames(f"cam-{camera}", camera), n))


def test_the_same_seed_gives_the_same_frames_and_cameras_differ():
    cfg = CameraConfig(seed=5, size=64, part_px=48)
    a, b = _shots(cfg, 30), _shots(cfg, 30)
    assert all(np.array_equal(x.frame.image, y.frame.image) for x, y in zip(a, b, strict=True))
    other = _shots(cfg, 30, camera=1)
    assert not np.array_equal(a[10].frame.image, other[10].frame.image)
    assert [s.frame.seq for s in a] == list(range(30))
    assert [s.frame.ts_ms - a[0].frame.ts_ms for s in a[:3]] == [0, 10, 20]  # 100 fps


def test_defect_boxes_cover_every_pixel_the_defect_changed():
    # one part in view at a time (gap wider than the frame): every changed pixel is the
    # visible part's defect
    with_defects = CameraConfig(
        seed=2, defect_rate=1.0, noise_sigma=0.0, light_drift=0.0, part_px=96, gap_px=140
    )
    clean = dataclasses.replace(with_defects, defect_rate=0.0)
    shots, plain = _shots(with_defects, 600), _shots(clean, 600)
    labelled = 0
    for s, p in zip(shots, plain, strict=True):
        diff = np.abs(s.frame.image.astype(int) - p.frame.image) > 8
        if s.defect is None:
            continue
        labelled += 1
        x, y, w, h = s.defect.bbox
        inside = np.zeros_like(diff)
        inside[max(0, y - 2) : y + h + 2, max(0, x - 2) : x + w + 2] = True  # blur, sub-pixel
        assert diff.any() and not (diff & ~inside).any(), (s.frame.seq, s.defect)
    assert labelled > 50


@pytest.mark.parametrize("method", METHODS)
def test_alignment_cuts_the_residual_of_simulated_conveyor_clips_by_over_80_percent(method):
    # the seven original training textures (parts drawn as before the nuisance textures
    # came); a sharp checker with sub-pixel jitter alone is cut by 79 % (interpolation blur)
    shots = _shots(CameraConfig(seed=9, textures=TRAIN_TEXTURES[:7]), 120)
    for start in (20, 60, 100):  # clips over parts (texture to align on)
        clip = np.stack([s.frame.image for s in shots[start : start + 8]])
        before, after = residual_mad(clip), residual_mad(align_clip(clip, method))
        assert after <= 0.2 * before, (method, start, before, after)


def test_held_out_textures_are_not_the_training_ones():
    assert not set(TRAIN_TEXTURES) & set(HELDOUT_TEXTURES)
    assert not set(FRESH_TEXTURES) & set(TRAIN_TEXTURES + HELDOUT_TEXTURES)
    rng = np.random.default_rng(0)
    for kind in TRAIN_TEXTURES + HELDOUT_TEXTURES + FRESH_TEXTURES:
        t = texture(kind, 40, 50, rng)
        assert t.shape == (40, 50) and t.min() >= 59 and t.max() <= 201 and t.std() > 5
    with pytest.raises(ValueError, match="unknown texture 'fur'"):
        texture("fur", 4, 4, rng)


def _block_means(img: np.ndarray, block: int = 16) -> np.ndarray:
    h, w = (d // block * block for d in img.shape)
    return img[:h, :w].reshape(h // block, block, w // block, block).mean(axis=(1, 3))


def test_two_tone_parts_add_large_regions_and_keep_their_defects():
    rng = np.random.default_rng(3)
    grain = texture("grain", 112, 112, rng)  # fine grain: 16 px blocks all alike
    toned = [two_tone(grain, np.random.default_rng(s)) for s in range(20)]
    assert all(t.shape == grain.shape and t.min() >= 59 and t.max() <= 201 for t in toned)
    # large light and dark regions: the spread of 16 px block means grows many-fold
    flat = _block_means(grain).std()
    assert np.median([_block_means(t).std() for t in toned]) > 5 * flat

    # with regions, the same parts carry the same defects (only their texture changes)
    cfg = CameraConfig(seed=4, defect_rate=0.5)
    plain, mixed = _shots(cfg, 400), _shots(dataclasses.replace(cfg, regions=1.0), 400)
    assert [s.defect for s in plain] == [s.defect for s in mixed]
    assert any(s.defect for s in plain)
    on_part = [i for i, s in enumerate(plain) if s.part is not None]
    assert not any(np.array_equal(plain[i].frame.image, mixed[i].frame.image) for i in on_part)
    with pytest.raises(ValueError, match="between 0 and 1"):
        CameraConfig(regions=1.5)
