"""Quantization-aware training: fake-quantized layers configured like the seed's
``quant_config``::

    {"activation": {"bit_width": 8, "scheme": "asymmetric", "per_channel": False},
     "weight": {"bit_width": 4, "scheme": "symmetric", "per_channel": True},
     "observer": {"type": "moving_average", "momentum": 0.9}}

``prepare_qat`` wraps every ``Linear`` and ``Conv1d/2d/3d`` of a model: its input goes
through an activation ``FakeQuantize`` (per tensor, ranges from the configured observer)
and its weight through a weight ``FakeQuantize`` (per output channel, the current weight's
own min/max on every call, since training moves it). Layers inside ``MultiheadAttention``
are left alone (torch reads their weights directly, not through the module), and a
``TransformerEncoderLayer``'s inference fast path is turned off for the same reason.

``activation: None`` is weight-only quantization (the 4- and 2-bit exports: ONNX Runtime
runs MatMulNBits on packed weights and float activations). Then the attention projections
are quantized too (through a parametrization of their weights, which torch does read), and
``bake`` writes the fake-quantized weights into plain layers for a float export.
"""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn
from torch.nn.utils import parametrize

from vigil.errors import UsageError
from vigil.models.compression.grid import BITS, fake_quantize, qparams
from vigil.models.compression.observers import Observer, make_observer

__all__ = [
    "FakeQuantize",
    "QuantConfig",
    "QuantSpec",
    "QuantWrapper",
    "bake",
    "prepare_qat",
    "quant_config",
]


class QuantSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    bit_width: int
    scheme: Literal["symmetric", "asymmetric"]
    per_channel: bool = False
    # the range of one bit less, stored in bit_width (see quant_config: 8-bit integer kernels)
    reduce_range: bool = False

    def model_post_init(self, _context: Any) -> None:
        if self.bit_width not in BITS:
            raise UsageError(f"bit_width must be one of {BITS}, not {self.bit_width}")


class ObserverSpec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    type: Literal["minmax", "moving_average", "percentile"] = "moving_average"
    momentum: float = Field(default=0.9, ge=0, lt=1)
    percentile: float = Field(default=99.99, gt=50, le=100)


class QuantConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    activation: QuantSpec | None = QuantSpec(bit_width=8, scheme="asymmetric", per_channel=False)
    weight: QuantSpec = QuantSpec(bit_width=8, scheme="symmetric", per_channel=True)
    observer: ObserverSpec = ObserverSpec()


def quant_config(weight_bits: int, activation_bits: int | None = 8) -> QuantConfig:
    """Symmetric per-channel weights of ``weight_bits``, asymmetric per-tensor activations
    of ``activation_bits`` (None: weight-only).

    8-bit weights with 8-bit activations (ONNX Runtime's integer kernels) keep the range of
    7 bits, -63..63. On x86 CPUs without VNNI, ONNX Runtime multiplies uint8 activations by
    int8 weights with VPMADDUBSW, which adds each pair of products in int16 and saturates
    above 32,767 (2 x 255 x 127 = 64,770); with 63 the largest pair is 32,130. Measured on
    an AVX2-only EPYC: the 8-bit clip classifier was 0.26 off its fake-quantized model (46 %
    of the output range) with -127..127, 0.005 with -63..63. A file is exported once and
    run on whatever CPU serves it, so every 8-bit export does this."""
    integer_kernels = activation_bits == 8 and weight_bits == 8
    return QuantConfig(
        activation=None
        if activation_bits is None
        else QuantSpec(bit_width=activation_bits, scheme="asymmetric"),
        weight=QuantSpec(
            bit_width=weight_bits,
            scheme="symmetric",
            per_channel=True,
            reduce_range=integer_kernels,
        ),
    )


class FakeQuantize(nn.Module):
    """Observes what passes (while ``observing``) and fake-quantizes it (while
    ``enabled``) with the scale and zero point of the observed range."""

    def __init__(self, spec: QuantSpec, observer: Observer, axis: int | None = None) -> None:
        super().__init__()
        self.spec = spec
        self.observer = observer
        self.axis = axis if spec.per_channel else None
        self.observing = True
        self.enabled = True
        self.export = False  # trace as ONNX QuantizeLinear/DequantizeLinear (8 bits only)
        self.frozen: tuple[torch.Tensor, torch.Tensor] | None = None  # fixed qparams

    def freeze(self) -> None:
        """Fix the scale and zero point as they are now (constants when traced)."""
        self.frozen = tuple(t.detach().clone() for t in self.qparams())  # type: ignore[assignment]

    def qparams(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self.frozen is not None:
            return self.frozen
        lo, hi = self.observer.range()
        spec = self.spec
        scale, zero_point = qparams(lo, hi, spec.bit_width, spec.scheme, spec.reduce_range)
        if self.axis is None:
            return scale.reshape(()), zero_point.reshape(())
        return scale, zero_point

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.observing:
            self.observer.observe(x)
        if not self.enabled:
            return x
        scale, zero_point = self.qparams()
        if self.export:
            return self._qdq(x, scale, zero_point)
        return fake_quantize(
            x,
            scale.to(x.dtype),
            zero_point.to(x.dtype),
            self.spec.bit_width,
            self.spec.scheme,
            self.axis,
            self.spec.reduce_range,
        )

    def _qdq(self, x: torch.Tensor, scale: torch.Tensor, zero_point: torch.Tensor) -> torch.Tensor:
        """The same values through torch's fake-quantize ops, which the ONNX exporter
        writes as QuantizeLinear + DequantizeLinear (int8 or uint8 only)."""
        if self.spec.bit_width != 8:
            raise UsageError(f"QDQ export holds 8-bit values, not {self.spec.bit_width}-bit")
        # the ONNX integer ranges; our values stay inside ours (symmetric: -127..127)
        qmin, qmax = (-128, 127) if self.spec.scheme == "symmetric" else (0, 255)
        if self.axis is None:
            return torch.fake_quantize_per_tensor_affine(
                x, float(scale), int(zero_point), qmin, qmax
            )
        return torch.fake_quantize_per_channel_affine(
            x, scale.float(), zero_point.int(), self.axis, qmin, qmax
        )


class QuantWrapper(nn.Module):
    """A Linear or Conv layer whose input and weight are fake-quantized."""

    def __init__(self, layer: nn.Module, config: QuantConfig) -> None:
        super().__init__()
        self.layer = layer
        act = config.activation
        self.input_quant = (
            None if act is None else FakeQuantize(act, make_observer(config.observer.model_dump()))
        )
        # weights: the current weight's own range on every call (axis 0: output channels)
        axis = 0 if config.weight.per_channel else None
        self.weight_quant = FakeQuantize(config.weight, Observer("minmax", axis), 0)
        self.weight_quant.observing = False  # observed below, fresh, on every call
        # convolutions also quantize their output: ONNX Runtime fuses DQ -> Conv -> Q
        # into QLinearConv only when the output is quantized right away
        self.output_quant = (
            FakeQuantize(act, make_observer(config.observer.model_dump()))
            if act is not None and isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d)
            else None
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.input_quant is not None:
            x = self.input_quant(x)
        weight = self.layer.weight
        if self.weight_quant.frozen is None:
            self.weight_quant.observer.reset()  # the range of the weight as it is now
            self.weight_quant.observer.observe(weight)
        w = self.weight_quant(weight)
        if isinstance(self.layer, nn.Linear):
            return F.linear(x, w, self.layer.bias)
        y = self.layer._conv_forward(x, w, self.layer.bias)
        return y if self.output_quant is None else self.output_quant(y)


_WRAPPED = (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)


def prepare_qat(model: nn.Module, config: QuantConfig) -> list[str]:
    """Wrap, in place, every Linear and Conv layer of ``model`` (outside attention);
    returns the wrapped layers' names."""
    wrapped: list[str] = []

    def visit(module: nn.Module, prefix: str) -> None:
        for name, child in list(module.named_children()):
            path = f"{prefix}{name}"
            if isinstance(child, nn.MultiheadAttention) and config.activation is None:
                for owner, weight in ((child, "in_proj_weight"), (child.out_proj, "weight")):
                    if getattr(owner, weight, None) is not None:
                        parametrize.register_parametrization(
                            owner, weight, _WeightQuant(config.weight)
                        )
                        wrapped.append(f"{path}.{weight}")
                continue
            if isinstance(child, nn.MultiheadAttention | QuantWrapper):
                continue
            if isinstance(child, _WRAPPED):
                setattr(module, name, QuantWrapper(child, config))
                wrapped.append(path)
            else:
                if isinstance(child, nn.TransformerEncoderLayer):
                    # its inference fast path reads linear1/linear2's weights directly,
                    # around our wrappers; this flag only decides that path
                    child.activation_relu_or_gelu = 0
                visit(child, path + ".")

    visit(model, "")
    return wrapped


class _WeightQuant(nn.Module):
    """A weight's own per-channel range, fake-quantized: as a parametrization."""

    def __init__(self, spec: QuantSpec) -> None:
        super().__init__()
        self.quant = FakeQuantize(spec, Observer("minmax", 0 if spec.per_channel else None), 0)
        self.quant.observing = False

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        self.quant.observer.reset()
        self.quant.observer.observe(weight)
        return self.quant(weight)


def bake(model: nn.Module) -> nn.Module:
    """Undo ``prepare_qat`` in place, keeping the fake-quantized weights: every wrapped
    layer becomes its plain layer again, holding the dequantized weight it computed with
    (weight-only models: the float export then has weights exactly on the grid)."""
    for module in list(model.modules()):
        if parametrize.is_parametrized(module):
            for name in list(module.parametrizations.keys()):
                parametrize.remove_parametrizations(module, name, leave_parametrized=True)
        for name, child in list(module.named_children()):
            if isinstance(child, QuantWrapper):
                layer = child.layer
                with torch.no_grad():
                    child.weight_quant.observer.reset()
                    child.weight_quant.observer.observe(layer.weight)
                    layer.weight.copy_(child.weight_quant(layer.weight))
                setattr(module, name, layer)
    return model
