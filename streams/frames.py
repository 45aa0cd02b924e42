"""Camera frames on the wire (contract v1, ``vigil.frames``).

Key: the camera id. Value: the encoded image. Headers (ASCII): ``camera_id``, ``seq``
(integer, per camera), ``ts_ms``, ``codec`` (``raw``, ``png`` or ``jpeg``), ``shape``
(``HxW`` or ``HxWxC``) and, for ``raw``, ``dtype`` (``uint8``, ``uint16`` or
``float32``; little-endian, C order). Anything that does not decode into what its headers
promise raises ``FrameError`` with the reason, for the dead-letter topic.

>>> img = np.arange(12, dtype=np.uint8).reshape(3, 4)
>>> key, value, headers = encode_frame(Frame("cam-1", 7, 1_700_000_000_000, img), "png")
>>> back = decode_frame(key, value, headers)
>>> (back.camera_id, back.seq, bool((back.image == img).all()))
('cam-1', 7, True)
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from vigil.errors import VigilError

__all__ = [
    "CODECS",
    "MAX_FRAME_BYTES",
    "Frame",
    "FrameError",
    "decode_frame",
    "encode_frame",
    "frame_seq",
]

CODECS = ("raw", "png", "jpeg")
RAW_DTYPES = ("uint8", "uint16", "float32")
# Kafka's default message.max.bytes is 1 MB (1048588 with overhead): stay under it
MAX_FRAME_BYTES = 1_000_000
_SHAPE = re.compile(r"^(\d{1,5})x(\d{1,5})(?:x([134]))?$")


class FrameError(VigilError, ValueError):
    """A frame that cannot be used; the message is the dead-letter reason."""


@dataclass(frozen=True)
class Frame:
    camera_id: str
    seq: int
    ts_ms: int
    image: np.ndarray  # (H, W) or (H, W, C)


def encode_frame(
    frame: Frame, codec: str = "png", jpeg_quality: int = 90
) -> tuple[bytes, bytes, list[tuple[str, bytes]]]:
    """``(key, value, headers)`` for a producer."""
    img = np.ascontiguousarray(frame.image)
    if codec == "raw":
        if img.dtype.name not in RAW_DTYPES:
            raise FrameError(f"raw frames carry {RAW_DTYPES}, not {img.dtype.name}")
        value = img.astype(img.dtype.newbyteorder("<"), copy=False).tobytes()
    elif codec in ("png", "jpeg"):
        ext, params = (
            (".png", [cv2.IMWRITE_PNG_COMPRESSION, 1])
            if codec == "png"
            else (".jpg", [cv2.IMWRITE_JPEG_QUALITY, jpeg_quality])
        )
        ok, buf = cv2.imencode(ext, img, params)
        if not ok:
            raise FrameError(f"cannot encode a {img.dtype.name} {img.shape} image as {codec}")
        value = buf.tobytes()
    else:
        raise FrameError(f"unknown codec {codec!r}; one of {CODECS}")
    if len(value) > MAX_FRAME_BYTES:
        raise FrameError(
            f"encoded frame is {len(value)} bytes, over the {MAX_FRAME_BYTES}-byte limit"
        )
    shape = "x".join(str(d) for d in img.shape)
    headers = [
        ("camera_id", frame.camera_id.encode()),
        ("seq", str(frame.seq).encode()),
        ("ts_ms", str(frame.ts_ms).encode()),
        ("codec", codec.encode()),
        ("shape", shape.encode()),
    ]
    if codec == "raw":
        headers.append(("dtype", img.dtype.name.encode()))
    return frame.camera_id.encode(), value, headers


def _text_headers(headers: Sequence[tuple[str, bytes | None]] | None) -> dict[str, str]:
    try:
        return {k: (v or b"").decode("ascii") for k, v in (headers or [])}
    except UnicodeDecodeError:
        raise FrameError("frame headers are not ASCII") from None


def frame_seq(headers: Sequence[tuple[str, bytes | None]] | None) -> int:
    """A frame record's ``seq`` header, without decoding its image (``FrameError`` when it
    is missing or not a non-negative integer)."""
    return _int_header(_text_headers(headers), "seq")


def _header(headers: dict[str, str], name: str) -> str:
    if name not in headers:
        raise FrameError(f"missing header {name!r}")
    return headers[name]


def _int_header(headers: dict[str, str], name: str) -> int:
    text = _header(headers, name)
    try:
        value = int(text)
    except ValueError:
        raise FrameError(f"header {name!r} is not an integer: {text[:40]!r}") from None
    if value < 0:
        raise FrameError(f"header {name!r} is negative: {value}")
    return value


def decode_frame(
    key: bytes | None,
    value: bytes | None,
    headers: Sequence[tuple[str, bytes | None]] | None,
) -> Frame:
    """The frame a record carries, or ``FrameError`` saying why not."""
    if value is None:
        raise FrameError("frame has no value")
    if len(value) > MAX_FRAME_BYTES:
        raise FrameError(f"frame is {len(value)} bytes, over the {MAX_FRAME_BYTES}-byte limit")
    h = _text_headers(headers)
    camera_id = _header(h, "camera_id")
    if key is not None and key.decode(errors="replace") != camera_id:
        raise FrameError(f"key {key[:40]!r} is not the camera_id header {camera_id!r}")
    seq, ts_ms = _int_header(h, "seq"), _int_header(h, "ts_ms")
    codec = _header(h, "codec")
    m = _SHAPE.match(_header(h, "shape"))
    if m is None:
        raise FrameError(f"header 'shape' must be HxW or HxWxC, not {h['shape'][:40]!r}")
    shape = tuple(int(d) for d in m.groups() if d is not None)
    if codec == "raw":
        dtype = _header(h, "dtype")
        if dtype not in RAW_DTYPES:
            raise FrameError(f"header 'dtype' must be one of {RAW_DTYPES}, not {dtype[:40]!r}")
        want = int(np.prod(shape)) * np.dtype(dtype).itemsize
        if len(value) != want:
            raise FrameError(f"raw {dtype} {h['shape']} needs {want} bytes, got {len(value)}")
        image = np.frombuffer(value, dtype=np.dtype(dtype).newbyteorder("<")).reshape(shape)
        image = image.astype(dtype, copy=False)
    elif codec in ("png", "jpeg"):
        image = cv2.imdecode(np.frombuffer(value, np.uint8), cv2.IMREAD_UNCHANGED)
        if image is None:
            raise FrameError(f"{codec} data does not decode")
        if image.shape != shape:
            raise FrameError(f"decoded image is {image.shape}, header 'shape' says {shape}")
    else:
        raise FrameError(f"unknown codec {codec[:40]!r}; one of {CODECS}")
    return Frame(camera_id, seq, ts_ms, image)
