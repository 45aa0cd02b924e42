"""Quantization math against plain-Python/numpy references: ranges per bit width,
per-channel scales, half-to-even rounding, clamping, observers, the straight-through
gradient, and layers wrapped for quantization-aware training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pydantic import ValidationError
from torch import nn

from vigil.models.compression import (
    FakeQuantize,
    Observer,
    QuantConfig,
    dequantize,
    fake_quantize,
    prepare_qat,
    qparams,
    qrange,
    quant_config,
    quantize,
)


def test_integer_ranges_per_bit_width():
    assert [qrange(b, "symmetric") for b in (8, 4, 3, 2)] == [
        (-127, 127),
        (-7, 7),
        (-3, 3),
        (-1, 1),
    ]
    assert [qrange(b, "asymmetric") for b in (8, 4, 3, 2)] == [(0, 255), (0, 15), (0, 7), (0, 3)]
    with pytest.raises(ValueError, match="bit width must be one of"):
        qrange(5, "symmetric")


def test_per_channel_symmetric_weights_match_a_python_reference():
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(6, 5)) * rng.uniform(0.01, 10, size=(6, 1))).astype(np.float32)
    for bits in (8, 4, 3, 2):
        qmax = 2 ** (bits - 1) - 1
        scale, zp = qparams(w.min(axis=1), w.max(axis=1), bits, "symmetric")
        q = quantize(w, scale, zp, bits, "symmetric", axis=0)
        for c in range(6):  # plain Python, one channel and one value at a time
            s = max(abs(float(v)) for v in w[c]) / qmax
            assert scale[c] == pytest.approx(s, rel=1e-6) and zp[c] == 0
            for j in range(5):
                want = min(qmax, max(-qmax, round(float(w[c, j]) / s)))  # round: half to even
                assert q[c, j] == want, (bits, c, j)
        err = np.abs(dequantize(q, scale, zp, axis=0) - w)
        assert (err <= scale[:, None] / 2 + 1e-6).all()  # within half a step


def test_rounding_is_half_to_even_and_out_of_range_values_clamp():
    x = np.array([0.5, 1.5, 2.5, -0.5, -1.5, 300.0, -300.0], dtype=np.float32)
    q = quantize(x, np.float32(1.0), np.float32(0.0), 8, "symmetric")
    assert q.tolist() == [0, 2, 2, -0, -2, 127, -127]
    qt = quantize(torch.from_numpy(x), torch.tensor(1.0), torch.tensor(0.0), 8, "symmetric")
    assert qt.tolist() == q.tolist()  # numpy and torch agree


def test_asymmetric_ranges_hold_zero_exactly():
    for lo, hi in ((0.3, 5.0), (-2.0, -0.5), (-1.0, 3.0)):
        scale, zp = qparams(np.float32(lo), np.float32(hi), 8, "asymmetric")
        assert 0 <= zp <= 255 and float(zp).is_integer()
        zero = quantize(np.float32(0.0), scale, zp, 8, "asymmetric")
        assert dequantize(zero, scale, zp) == 0.0
        top = quantize(np.float32(max(hi, 0)), scale, zp, 8, "asymmetric")
        assert dequantize(top, scale, zp) == pytest.approx(max(hi, 0), abs=float(scale))


def test_moving_average_observer_follows_the_recurrence():
    rng = np.random.default_rng(1)
    batches = [rng.normal(size=(4, 10)) * (i + 1) for i in range(5)]
    obs = Observer("moving_average", momentum=0.9)
    lo = hi = None
    for b in batches:
        obs.observe(torch.from_numpy(b))
        blo, bhi = b.min(), b.max()
        lo = blo if lo is None else 0.9 * lo + 0.1 * blo
        hi = bhi if hi is None else 0.9 * hi + 0.1 * bhi
    got_lo, got_hi = obs.range()
    assert float(got_lo) == pytest.approx(lo, rel=1e-5) and float(got_hi) == pytest.approx(
        hi, rel=1e-5
    )
    per_channel = Observer("minmax", axis=1)
    for b in batches:
        per_channel.observe(torch.from_numpy(b))
    every = np.concatenate(batches)
    np.testing.assert_allclose(per_channel.range()[0].numpy(), every.min(axis=0), rtol=1e-6)
    np.testing.assert_allclose(per_channel.range()[1].numpy(), every.max(axis=0), rtol=1e-6)


def test_percentile_observer_ignores_rare_outliers():
    rng = np.random.default_rng(2)
    data = rng.normal(size=(20, 5000)).astype(np.float32)
    data[3, 7] = 1e4  # one outlier would stretch a min-max range 2500-fold
    exact = Observer("percentile", percentile=99.9, sample=10**6)
    sampled = Observer("percentile", percentile=99.9, sample=20_000)
    for b in data:
        exact.observe(torch.from_numpy(b))
        sampled.observe(torch.from_numpy(b))
    want_lo, want_hi = np.percentile(data, [0.1, 99.9])
    assert float(exact.range()[1]) == pytest.approx(want_hi, rel=1e-4)
    assert float(exact.range()[0]) == pytest.approx(want_lo, rel=1e-4)
    assert float(sampled.range()[1]) == pytest.approx(want_hi, rel=0.1)  # a 20 % sample
    with pytest.raises(RuntimeError, match="seen nothing"):
        Observer("minmax").range()


def test_fake_quantize_passes_gradients_straight_through_inside_the_range():
    x = torch.tensor([-3.0, -0.26, 0.0, 0.24, 0.9, 3.0], requires_grad=True)
    scale, zp = torch.tensor(0.25), torch.tensor(0.0)
    y = fake_quantize(x, scale, zp, 3, "symmetric")  # levels -0.75 .. 0.75
    want = dequantize(quantize(x.detach(), scale, zp, 3, "symmetric"), scale, zp)
    assert torch.equal(y.detach(), want)
    assert y.detach().tolist() == [-0.75, -0.25, 0.0, 0.25, 0.75, 0.75]
    y.sum().backward()
    assert x.grad.tolist() == [0.0, 1.0, 1.0, 1.0, 0.0, 0.0]  # clamped values get none


def test_config_reads_the_seed_quant_config_and_refuses_bad_widths():
    cfg = QuantConfig.model_validate(
        {
            "activation": {"bit_width": 8, "scheme": "asymmetric", "per_channel": False},
            "weight": {"bit_width": 4, "scheme": "symmetric", "per_channel": True},
            "observer": {"type": "moving_average", "momentum": 0.9},
        }
    )
    assert cfg.weight.bit_width == 4 and cfg.observer.momentum == 0.9
    with pytest.raises(ValidationError, match="bit_width must be one of"):
        QuantConfig.model_validate({"weight": {"bit_width": 5, "scheme": "symmetric"}})
    with pytest.raises(ValidationError):
        QuantConfig.model_validate({"observer": {"type": "ema"}})


class _Small(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv3d(1, 4, 3, padding=1)
        self.attn = nn.TransformerEncoderLayer(4, 2, 8, batch_first=True, dropout=0.0)
        self.head = nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv(x).flatten(2).transpose(1, 2)
        return self.head(self.attn(h).mean(1)).squeeze(-1)


def test_prepared_layers_compute_on_quantized_inputs_and_weights():
    torch.manual_seed(0)
    model = _Small().eval()
    x = torch.randn(3, 1, 2, 4, 4)
    with torch.no_grad():
        ref = model(x)
    wrapped = prepare_qat(model, quant_config(8))
    assert wrapped == ["conv", "attn.linear1", "attn.linear2", "head"]  # not attention's own
    with torch.no_grad():
        got8 = model(x)
        # the head by hand: its input and weight quantized with the numpy reference
        head = model.head
        inp = model.attn(model.conv(x).flatten(2).transpose(1, 2)).mean(1)
        a_lo, a_hi = head.input_quant.observer.range()
        s, z = qparams(a_lo.numpy(), a_hi.numpy(), 8, "asymmetric")
        qi = dequantize(quantize(inp.numpy(), s[0], z[0], 8, "asymmetric"), s[0], z[0])
        w = head.layer.weight.detach().numpy()
        # 8-bit weights beside 8-bit activations keep the 7-bit range (quant_config)
        assert head.weight_quant.spec.reduce_range
        ws, wz = qparams(w.min(axis=1), w.max(axis=1), 8, "symmetric", reduce_range=True)
        qw = dequantize(quantize(w, ws, wz, 8, "symmetric", 0, True), ws, wz, axis=0)
        assert np.abs(np.round(w / ws[:, None])).max() == 63
        want = qi @ qw.T + head.layer.bias.detach().numpy()
        head.input_quant.observing = False  # the range the forward pass above observed
        got = head(inp).numpy()
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    # fewer bits, larger error: 8 bits is close to float, 2 bits is not
    torch.manual_seed(0)
    model2 = _Small().eval()
    prepare_qat(model2, quant_config(2))
    with torch.no_grad():
        got2 = model2(x)
    err8, err2 = (got8 - ref).abs().max(), (got2 - ref).abs().max()
    assert err8 < 0.05 * ref.abs().max() and err2 > 3 * err8
    # frozen: no more observing, and disabled quantizers pass values through
    for fq in (m for m in model.modules() if isinstance(m, FakeQuantize)):
        fq.observing, fq.enabled = False, False
    with torch.no_grad():
        assert torch.allclose(model(x), ref, atol=1e-6)
