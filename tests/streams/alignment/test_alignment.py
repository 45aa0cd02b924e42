"""Reordering, clip windows and motion compensation, against known truths: a shuffled
sequence, a known shift, and jitter whose true offsets the test made."""

from __future__ import annotations

import random

import cv2
import numpy as np
import pytest

from vigil.streams.alignment import (
    METHODS,
    ClipWindows,
    ReorderBuffer,
    align_clip,
    estimate_shift,
    residual_mad,
)
from vigil.streams.frames import Frame


def _frame(seq: int, ts_ms: int | None = None) -> Frame:
    return Frame("cam", seq, seq * 10 if ts_ms is None else ts_ms, None)


def _run(buf: ReorderBuffer, seqs: list[int]) -> list[int]:
    return [f.seq for s in seqs for f in buf.push(_frame(s))]


def test_frames_shuffled_within_the_grace_come_out_in_order():
    seqs = list(range(200))
    rnd = random.Random(4)
    shuffled = sorted(seqs, key=lambda s: s + rnd.uniform(0, 3))  # up to 3 frames early/late
    buf = ReorderBuffer(grace_ms=50)
    assert _run(buf, shuffled) + [f.seq for f in buf.flush()] == seqs
    assert (buf.late, buf.gaps, buf.duplicates) == (0, 0, 0)


def test_a_missing_frame_is_a_gap_once_the_grace_has_passed():
    buf = ReorderBuffer(grace_ms=20)
    assert _run(buf, [0, 1, 3, 4]) == [0, 1]  # 2 may still come: 3 and 4 wait
    assert _run(buf, [5]) == [3, 4, 5]  # frame 5 is 20 ms past frame 3: 2 is a gap
    assert buf.gaps == 1
    assert _run(buf, [2]) == [] and buf.late == 1  # too late now: dropped, counted
    assert _run(buf, [6, 8, 8]) == [6] and buf.duplicates == 1  # a second 8 while 8 waits
    assert _run(buf, [6]) == [] and buf.late == 2  # once released, a repeat is late


def test_clip_windows_slide_and_never_span_a_gap():
    windows = ClipWindows(length=4, stride=2)
    clips = [
        [f.seq for f in c] for s in [*range(10), *range(12, 18)] for c in windows.push(_frame(s))
    ]
    assert clips == [
        [0, 1, 2, 3],
        [2, 3, 4, 5],
        [4, 5, 6, 7],
        [6, 7, 8, 9],
        [12, 13, 14, 15],
        [14, 15, 16, 17],
    ]
    apart = ClipWindows(length=2, stride=5)
    assert [[f.seq for f in c] for s in range(12) for c in apart.push(_frame(s))] == [
        [0, 1],
        [5, 6],
        [10, 11],
    ]
    with pytest.raises(ValueError, match=">= 1"):
        ClipWindows(length=0)


def _texture(seed: int = 0, size: int = 200) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return cv2.GaussianBlur(rng.random((size, size)).astype(np.float32), (0, 0), 1.2) * 255


def _view(tex: np.ndarray, dx: int, dy: int, size: int = 128) -> np.ndarray:
    """The camera's view with the content moved by (-dx, +dy) relative to (0, 0)."""
    return tex[36 + dy : 36 + dy + size, 36 + dx : 36 + dx + size]


def test_phase_correlation_recovers_a_known_shift():
    tex = _texture()
    ref, moved = _view(tex, 0, 0), _view(tex, 3, -2)  # content 3 px left, 2 px down
    dx, dy = estimate_shift(ref.astype(np.uint8), moved.astype(np.uint8))
    assert dx == pytest.approx(-3, abs=0.2) and dy == pytest.approx(2, abs=0.2)


@pytest.mark.parametrize("method", METHODS)
def test_each_method_undoes_a_known_shift(method):
    tex = _texture(1)
    clip = np.stack([_view(tex, 0, 0), _view(tex, 0, 0), _view(tex, 4, 3)]).astype(np.uint8)
    aligned = align_clip(clip, method, reference=0)
    # the shifted frame now matches the reference away from the borders
    assert np.abs(aligned[2] - clip[0])[12:-12, 12:-12].mean() < 1.5
    assert np.abs(clip[2].astype(float) - clip[0])[12:-12, 12:-12].mean() > 10


@pytest.mark.parametrize("method", METHODS)
def test_alignment_cuts_the_residual_of_a_jittered_clip_by_over_80_percent(method):
    rng = np.random.default_rng(7)
    tex = _texture(2)
    shifts = rng.integers(-4, 5, (8, 2))
    clip = np.stack([_view(tex, int(dx), int(dy)) for dx, dy in shifts])
    clip = np.clip(clip + rng.normal(0, 1.5, clip.shape), 0, 255).astype(np.uint8)
    before = residual_mad(clip)
    after = residual_mad(align_clip(clip, method))
    assert after <= 0.2 * before, (method, before, after)


def test_an_unknown_method_is_named():
    with pytest.raises(ValueError, match="unknown alignment method 'sift'"):
        align_clip(np.zeros((2, 8, 8), np.uint8), "sift")
