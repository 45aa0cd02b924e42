"""Weight-only 4- and 2-bit (and float16) exports: packing, MatMulNBits, convolution
weights dequantized on load, and the export computing what quantization-aware training
computed. References are plain numpy: per-channel scale = max|w| / qmax, round half to
even, clamp to the signed restricted range, the scale stored as float16."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from vigil.models.compression import prepare_qat, quant_config
from vigil.models.compression.export import compact_names, optimized_ops
from vigil.models.compression.fake_quant import bake
from vigil.models.compression.weight_only import pack, unpack, weight_only
from vigil.models.inspection import VideoConfig, VideoNet, export_video
from vigil.models.onnx_export import torch_to_onnx
from vigil.models.serving import onnx_session


def _reference_weights(w: np.ndarray, bits: int, axis: int) -> np.ndarray:
    """Per-channel symmetric quantize-dequantize along ``axis`` (output channels); the
    file stores the scales as float16."""
    qmax = 2 ** (bits - 1) - 1
    other = tuple(i for i in range(w.ndim) if i != axis)
    scale = np.maximum(np.abs(w).max(axis=other, keepdims=True) / qmax, 1e-12)
    stored = scale.astype(np.float16).astype(np.float32)
    return np.clip(np.round(w / scale), -qmax, qmax) * stored


@pytest.mark.parametrize("bits", [2, 4])
def test_packing_puts_the_first_value_in_the_lowest_bits_and_round_trips(bits):
    rng = np.random.default_rng(bits)
    values = rng.integers(0, 2**bits, size=(3, 37))
    packed = pack(values, bits)
    per = 8 // bits
    assert packed.shape == (3, -(-37 // per)) and packed.dtype == np.uint8
    want = sum(int(values[1, i]) << (bits * i) for i in range(per))  # byte 0 of row 1
    assert packed[1, 0] == want
    np.testing.assert_array_equal(unpack(packed, bits, 37), values)


class _MLP(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a, self.b = nn.Linear(80, 48), nn.Linear(48, 3)  # 80: not a power of two

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.relu(self.a(x)))


def _mlp_graph(net: nn.Module) -> bytes:
    return torch_to_onnx(net, (torch.zeros(2, 80),), ["x"], ["y"])


@pytest.mark.parametrize("bits", [2, 4])
def test_linear_layers_run_as_matmul_nbits_on_per_channel_weights(bits):
    torch.manual_seed(0)
    net = _MLP().eval()
    graph = weight_only(_mlp_graph(net), bits)
    assert optimized_ops(graph)["MatMulNBits"] == 2
    x = np.random.default_rng(1).normal(size=(5, 80)).astype(np.float32)
    a_w, b_w = (_reference_weights(m.weight.detach().numpy(), bits, 0) for m in (net.a, net.b))
    h = np.maximum(x @ a_w.T + net.a.bias.detach().numpy(), 0)
    want = h @ b_w.T + net.b.bias.detach().numpy()
    got = onnx_session(graph).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    # the weights are stored packed: bits/8 bytes each (plus padding to whole blocks)
    stored = {
        t.name: numpy_helper.to_array(t) for t in onnx.load_from_string(graph).graph.initializer
    }
    packed = [a for a in stored.values() if a.dtype == np.uint8]
    assert sum(a.size for a in packed) <= (80 * 48 + 48 * 3) * bits / 8 * 1.25
    assert not [a for a in stored.values() if a.dtype == np.float32 and a.size >= 80 * 48]


@pytest.mark.parametrize("bits", [2, 4])
def test_convolution_weights_are_dequantized_once_when_the_session_loads(bits):
    torch.manual_seed(2)
    conv = nn.Conv3d(2, 6, 3, padding=1).eval()
    graph = weight_only(torch_to_onnx(conv, (torch.zeros(2, 2, 4, 8, 8),), ["x"], ["y"]), bits)
    ops = optimized_ops(graph)
    assert ops["BitShift"] == 0 and ops["Mod"] == 0  # folded away by ORT at load
    x = torch.randn(3, 2, 4, 8, 8)
    w = torch.from_numpy(
        _reference_weights(conv.weight.detach().numpy(), bits, 0).astype(np.float32)
    )
    want = nn.functional.conv3d(x, w, conv.bias, padding=1).detach().numpy()
    got = onnx_session(graph).run(None, {"x": x.numpy()})[0]
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_float16_stores_half_the_weight_bytes_and_rounds_only_the_weights():
    torch.manual_seed(3)
    net = _MLP().eval()
    fp32 = _mlp_graph(net)
    graph = weight_only(fp32, 16)
    assert len(graph) < 0.6 * len(fp32)
    x = np.random.default_rng(4).normal(size=(5, 80)).astype(np.float32)
    with torch.no_grad():
        for m in (net.a, net.b):
            m.weight.copy_(m.weight.half().float())
        want = net(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(
        onnx_session(graph).run(None, {"x": x})[0], want, rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize("bits", [2, 4])
def test_the_export_computes_what_quantization_aware_training_computed(bits):
    """Convolutions, linear layers and attention projections: the fake-quantized torch
    model (as QAT trains it) and ONNX Runtime on the weight-only export agree."""
    cfg = VideoConfig(size=32, camera_size=32, frames=4, d=16)
    torch.manual_seed(4)
    net = VideoNet(cfg).eval()
    wrapped = prepare_qat(net, quant_config(bits, activation_bits=None))
    assert any(name.endswith("in_proj_weight") for name in wrapped)
    clips = torch.rand(6, 1, 4, 32, 32, generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        want = [t.numpy() for t in net(clips)]
    graph = compact_names(weight_only(export_video(bake(net), cfg), bits))
    assert not [m for m in net.modules() if type(m).__name__ == "QuantWrapper"]
    got = onnx_session(graph).run(None, {"clip": clips.numpy()})
    for g, w in zip(got, want, strict=True):
        np.testing.assert_allclose(g, w, rtol=1e-3, atol=1e-3)


def test_only_two_four_and_sixteen_bits_are_weight_only():
    with pytest.raises(ValueError, match="2, 4 or 16"):
        weight_only(_mlp_graph(_MLP()), 8)
