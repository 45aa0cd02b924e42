"""The precision scheduler against fp32 torch: forced-fp32 ops, per-layer compute dtypes,
loss scaling on injected inf, and decisions that follow measured sensitivity."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from vigil.models.engine.precision import (
    DynamicLossScaler,
    PrecisionConfig,
    PrecisionScheduler,
    fp32_sensitive_ops,
)


def test_sensitive_ops_compute_in_fp32_where_plain_cpu_autocast_does_not():
    x = torch.randn(4, 16).to(torch.bfloat16) * 8
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert torch.softmax(x, -1).dtype == torch.bfloat16  # what autocast alone gives
    with torch.autocast("cpu", dtype=torch.bfloat16), fp32_sensitive_ops():
        sm = torch.softmax(x, -1)
        ln = F.layer_norm(x, (16,))
        ce = F.cross_entropy(x, torch.tensor([0, 1, 2, 3]))
        method = x.log_softmax(-1)
    assert sm.dtype == ln.dtype == ce.dtype == method.dtype == torch.float32
    torch.testing.assert_close(sm, torch.softmax(x.float(), -1), rtol=0, atol=0)
    torch.testing.assert_close(ln, F.layer_norm(x.float(), (16,)), rtol=0, atol=0)
    torch.testing.assert_close(ce, F.cross_entropy(x.float(), torch.tensor([0, 1, 2, 3])))


def _mlp() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(8, 32), nn.ReLU(), nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 1)
    )


def test_each_layer_computes_in_its_own_precision_on_fp32_master_weights():
    model = _mlp()
    x = torch.randn(5, 8)
    want = model(x)  # before wrapping: plain fp32
    sched = PrecisionScheduler(model)
    with sched.autocast():
        assert torch.equal(model(x), want)  # every layer fp32: bit-identical
    sched.decisions.update({"0": "bf16", "2": "fp32", "4": "bf16"})
    seen = []  # the dtype each matmul computed in, in call order

    class Linears(TorchFunctionMode):
        def __torch_function__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func is F.linear:
                seen.append(out.dtype)
            return out

    with Linears(), sched.autocast():
        out = model(x)
    assert seen == [torch.bfloat16, torch.float32, torch.bfloat16]
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.float(), want, rtol=0.05, atol=0.02)
    assert all(p.dtype == torch.float32 for p in model.parameters())


def test_the_loss_scaler_skips_a_step_with_inf_and_recovers():
    model = _mlp()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    cfg = PrecisionConfig(init_scale=1024.0, growth_interval=3)
    sched = PrecisionScheduler(model, cfg, fixed="fp16")
    x, y = torch.randn(16, 8), torch.randn(16, 1)

    def train_step(inject_inf: bool) -> bool:
        opt.zero_grad()
        with sched.autocast():
            loss = F.mse_loss(model(x), y)
        scale = sched.backward(loss)
        assert scale == sched.scaler.scale  # fp16 layers: the loss is scaled
        if inject_inf:
            model[2].weight.grad[0, 0] = float("inf")
        return sched.step(opt, scale)

    before = [p.detach().clone() for p in model.parameters()]
    assert train_step(inject_inf=True) is False
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters(), strict=True))
    assert (sched.scaler.scale, sched.scaler.skipped) == (512.0, 1)
    assert all(train_step(inject_inf=False) for _ in range(3))
    assert not torch.equal(before[0], model[0].weight)  # it trains again
    assert sched.scaler.scale == 1024.0  # grew back after growth_interval good steps
    # the gradients were unscaled before the step: compare one step with plain fp32 SGD
    ref = _mlp()
    ref_opt = torch.optim.SGD(ref.parameters(), lr=0.1)
    for p, q in zip(ref.parameters(), model.parameters(), strict=True):
        p.data.copy_(q.data)
    sched.decisions = dict.fromkeys(sched.decisions, "fp16")
    train_step(inject_inf=False)
    ref_opt.zero_grad()
    F.mse_loss(ref(x), y).backward()
    ref_opt.step()
    for p, q in zip(ref.parameters(), model.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0.02, atol=2e-3)


def test_scaler_without_scaling_never_backs_off():
    s = DynamicLossScaler(PrecisionConfig(init_scale=8.0))
    s.update(False, scaled=False)
    assert (s.scale, s.skipped) == (8.0, 1)


class _Wide(nn.Module):
    """Three layers: ``big`` sees inputs that overflow fp16 (max 65504) but not bf16;
    ``fine`` is ordinary; ``head`` maps to the loss."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(1)
        self.fine = nn.Linear(8, 16)
        self.big = nn.Linear(16, 16)
        self.head = nn.Linear(16, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.fine(x))
        h = torch.tanh(self.big(h * 1e5) / 1e5)  # huge pre-activations inside `big`
        return self.head(h)


def test_decisions_follow_measured_sensitivity():
    model = _Wide()
    x, y = torch.randn(32, 8), torch.randn(32, 1)
    cfg = PrecisionConfig(candidates=("fp16", "bf16"), init_scale=1.0)
    sched = PrecisionScheduler(model, cfg)

    def loss_of() -> torch.Tensor:
        return F.mse_loss(model(x), y)

    decided = sched.measure(loss_of, step=0)
    sens = sched.history[-1]["sensitivity"]
    assert sens["fp16"]["big"]["overflow"] > 0 and sens["bf16"]["big"]["overflow"] == 0
    assert decided == {"fine": "fp16", "big": "bf16", "head": "fp16"}
    assert all(p.grad is None for p in model.parameters())  # the probe leaves no gradients
    # a tolerance no low precision meets: everything stays fp32
    strict = PrecisionScheduler(_Wide(), PrecisionConfig(candidates=("bf16",), max_rel_error=1e-7))
    assert set(strict.measure(lambda: F.mse_loss(strict.model(x), y)).values()) == {"fp32"}


def test_default_candidates_follow_the_hardware():
    cfg = PrecisionConfig()
    assert cfg.candidates_for("cpu") == ("bf16",)
    assert cfg.candidates_for("cuda") == ("fp16", "bf16")
    with pytest.raises(ValueError, match="not \\['fp8'\\]"):
        PrecisionConfig(candidates=("fp8",)).candidates_for("cpu")


def test_state_round_trips_and_rejects_another_models_layers():
    sched = PrecisionScheduler(_mlp())
    sched.decisions["2"] = "bf16"
    sched.scaler.scale = 64.0
    other = PrecisionScheduler(_mlp())
    other.load_state_dict(sched.state_dict())
    assert other.decisions == sched.decisions and other.scaler.scale == 64.0
    with pytest.raises(ValueError, match="lacks"):
        PrecisionScheduler(_Wide()).load_state_dict(sched.state_dict())
