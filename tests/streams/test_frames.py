"""Frames on the wire: codec round trips and the reasons bad frames give for the DLQ."""

from __future__ import annotations

import numpy as np
import pytest

from vigil.streams.frames import MAX_FRAME_BYTES, Frame, FrameError, decode_frame, encode_frame

rng = np.random.default_rng(0)
IMAGES = {
    "grey-u8": rng.integers(0, 256, (48, 64), dtype=np.uint8),
    "colour-u8": rng.integers(0, 256, (32, 40, 3), dtype=np.uint8),
    "grey-u16": rng.integers(0, 65536, (16, 24), dtype=np.uint16),
    "grey-f32": rng.random((8, 12), dtype=np.float32),
}


# PNG has no float pixels: float32 frames travel raw
LOSSLESS = [(n, "raw") for n in IMAGES] + [(n, "png") for n in IMAGES if n != "grey-f32"]


@pytest.mark.parametrize(("name", "codec"), LOSSLESS)
def test_lossless_codecs_round_trip_exactly(name, codec):
    image = IMAGES[name]
    frame = Frame("cam-7", 12345, 1_700_000_000_123, image)
    back = decode_frame(*encode_frame(frame, codec))
    assert (back.camera_id, back.seq, back.ts_ms) == ("cam-7", 12345, 1_700_000_000_123)
    assert back.image.dtype == image.dtype and np.array_equal(back.image, image)


def test_jpeg_round_trips_within_its_loss():
    smooth = np.add.outer(np.arange(64), np.arange(64)).astype(np.uint8)
    back = decode_frame(*encode_frame(Frame("c", 0, 0, smooth), "jpeg", jpeg_quality=95))
    assert back.image.shape == smooth.shape
    assert np.abs(back.image.astype(int) - smooth).mean() < 2.0


def _record(**changes):
    key, value, headers = encode_frame(Frame("cam-1", 3, 1000, IMAGES["grey-u8"]), "png")
    h = dict(headers)
    for k, v in changes.items():
        if v is None:
            h.pop(k)
        else:
            h[k] = v
    return key, value, list(h.items())


@pytest.mark.parametrize(
    ("record", "reason"),
    [
        (_record(seq=None), "missing header 'seq'"),
        (_record(seq=b"three"), "header 'seq' is not an integer"),
        (_record(ts_ms=b"-5"), "header 'ts_ms' is negative"),
        (_record(codec=b"webp"), "unknown codec 'webp'"),
        (_record(shape=b"48by64"), "must be HxW or HxWxC"),
        (_record(shape=b"64x48"), "header 'shape' says (64, 48)"),
        ((b"cam-1", b"\x89PNG not really", _record()[2]), "png data does not decode"),
        ((b"cam-2", _record()[1], _record()[2]), "is not the camera_id header"),
        ((b"cam-1", None, _record()[2]), "no value"),
        ((b"cam-1", b"x" * (MAX_FRAME_BYTES + 1), _record()[2]), "over the 1000000-byte limit"),
        ((b"cam-1", b"\x00" * 10, _record(codec=b"raw", dtype=b"uint8")[2]), "needs 3072 bytes"),
        ((b"cam-1", b"\x00" * 3072, _record(codec=b"raw")[2]), "missing header 'dtype'"),
        ((b"cam-1", b"", None), "missing header 'camera_id'"),
    ],
)
def test_bad_frames_say_why(record, reason):
    with pytest.raises(FrameError) as err:
        decode_frame(*record)
    assert reason in str(err.value)


def test_frames_too_big_for_the_broker_are_refused_before_sending():
    noise = rng.integers(0, 256, (1000, 1100), dtype=np.uint8)
    with pytest.raises(FrameError, match="over the 1000000-byte limit"):
        encode_frame(Frame("c", 0, 0, noise), "raw")
