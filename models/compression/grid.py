"""Uniform quantization: quantization parameters from a range, quantize, dequantize, and
fake quantization (quantize-dequantize in float) with a straight-through gradient.

Symmetric (weights): the signed restricted range ``[-(2^(b-1) - 1), 2^(b-1) - 1]`` (int8:
-127..127, so that negation is exact and the zero point is 0), scale = max|x| / qmax.
Asymmetric (activations): ``[0, 2^b - 1]``, the range widened to hold 0 so that zero (padding,
ReLU output) is exact; zero point = round(-min / scale). Rounding is half to even (as numpy,
torch and ONNX ``QuantizeLinear``). Per-channel: one scale (and zero point) per index along
``axis``, the range taken over every other dimension.

>>> scale, zp = qparams(np.float32(-1.0), np.float32(3.0), 8, "asymmetric")
>>> float(scale), int(zp)
(0.01568627543747425, 64)
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from vigil.errors import UsageError

__all__ = [
    "BITS",
    "Scheme",
    "dequantize",
    "fake_quantize",
    "qparams",
    "qrange",
    "quantize",
]

BITS = (2, 3, 4, 8)  # integer widths (16 at export time means float16)
Scheme = Literal["symmetric", "asymmetric"]
_TINY = 1e-12  # scale floor: an all-zero tensor still gets a usable scale


def qrange(bits: int, scheme: Scheme, reduce_range: bool = False) -> tuple[int, int]:
    """The integer range ``(qmin, qmax)`` of ``bits`` in ``scheme``; ``reduce_range``: the
    range of one bit less, stored in ``bits`` (int8 weights of -63..63)."""
    if bits not in BITS:
        raise UsageError(f"bit width must be one of {BITS}, not {bits}")
    b = bits - 1 if reduce_range else bits
    if scheme == "symmetric":
        q = 2 ** (b - 1) - 1
        return -q, q
    if scheme == "asymmetric":
        return 0, 2**b - 1
    raise UsageError(f"scheme must be 'symmetric' or 'asymmetric', not {scheme!r}")


def qparams(lo, hi, bits: int, scheme: Scheme, reduce_range: bool = False):  # type: ignore[no-untyped-def]
    """``(scale, zero_point)`` for the range ``[lo, hi]`` (scalars or per-channel arrays,
    numpy or torch alike); zero points are integers in ``[qmin, qmax]``."""
    qmin, qmax = qrange(bits, scheme, reduce_range)
    xp = torch if isinstance(lo, torch.Tensor) else np
    if scheme == "symmetric":
        amax = xp.maximum(xp.abs(lo), xp.abs(hi))
        scale = xp.clip(amax / qmax, _TINY, None)
        return scale, xp.zeros_like(scale)
    lo, hi = xp.minimum(lo, 0 * lo), xp.maximum(hi, 0 * hi)  # 0 must be representable
    scale = xp.clip((hi - lo) / (qmax - qmin), _TINY, None)
    zero_point = xp.clip(xp.round(qmin - lo / scale), qmin, qmax)
    return scale, zero_point


def _along(v, x, axis: int | None):  # type: ignore[no-untyped-def]
    """Per-channel parameters shaped to broadcast against ``x`` along ``axis``."""
    if axis is None:
        return v
    shape = [1] * x.ndim
    shape[axis] = -1
    return v.reshape(shape)


def quantize(  # type: ignore[no-untyped-def]
    x, scale, zero_point, bits: int, scheme: Scheme, axis: int | None = None, reduce_range=False
):
    """The integers (in a float array) that ``x`` maps to: round(x / scale) + zero point,
    clamped to the range."""
    qmin, qmax = qrange(bits, scheme, reduce_range)
    xp = torch if isinstance(x, torch.Tensor) else np
    s, z = _along(scale, x, axis), _along(zero_point, x, axis)
    return xp.clip(xp.round(x / s) + z, qmin, qmax)


def dequantize(q, scale, zero_point, axis: int | None = None):  # type: ignore[no-untyped-def]
    return (q - _along(zero_point, q, axis)) * _along(scale, q, axis)


class _FakeQuant(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, scale, zero_point, bits, scheme, axis, reduce_range):  # type: ignore[no-untyped-def]
        qmin, qmax = qrange(bits, scheme, reduce_range)
        s, z = _along(scale, x, axis), _along(zero_point, x, axis)
        unclamped = torch.round(x / s) + z
        ctx.save_for_backward((unclamped >= qmin) & (unclamped <= qmax))
        return (torch.clamp(unclamped, qmin, qmax) - z) * s

    @staticmethod
    def backward(ctx, grad):  # type: ignore[no-untyped-def]
        (inside,) = ctx.saved_tensors
        # straight through where x is in range; nothing flows where it was clamped
        return grad * inside, None, None, None, None, None, None


def fake_quantize(
    x: torch.Tensor,
    scale: torch.Tensor,
    zero_point: torch.Tensor,
    bits: int,
    scheme: Scheme,
    axis: int | None = None,
    reduce_range: bool = False,
) -> torch.Tensor:
    """Quantize then dequantize in float; the gradient passes straight through inside the
    range and is zero where ``x`` was clamped."""
    return _FakeQuant.apply(x, scale, zero_point, bits, scheme, axis, reduce_range)
