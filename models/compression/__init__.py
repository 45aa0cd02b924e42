"""Compression: our own range observers, uniform quantization (per-channel symmetric
weights, per-tensor asymmetric activations, 8 down to 2 bits) and fake quantization for
quantization-aware training. Not built on torch.ao.quantization (deprecated)."""

from vigil.models.compression.fake_quant import (
    FakeQuantize,
    QuantConfig,
    QuantSpec,
    prepare_qat,
    quant_config,
)
from vigil.models.compression.grid import (
    BITS,
    dequantize,
    fake_quantize,
    qparams,
    qrange,
    quantize,
)
from vigil.models.compression.observers import OBSERVERS, Observer, make_observer

__all__ = [
    "BITS",
    "OBSERVERS",
    "FakeQuantize",
    "Observer",
    "QuantConfig",
    "QuantSpec",
    "dequantize",
    "fake_quantize",
    "make_observer",
    "prepare_qat",
    "qparams",
    "qrange",
    "quant_config",
    "quantize",
]
