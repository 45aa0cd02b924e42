"""Dynamic mixed precision: each layer's forward compute in fp16, bf16 or fp32, chosen
from measured gradient sensitivity.

Every ``every_steps`` steps the scheduler runs a probe batch in fp32 (the reference) and
with every layer in each candidate low precision; when that overflows anywhere (an inf in
one layer reaches every gradient), it runs each layer alone in that precision. Per layer (a module
with its own parameters) it compares the low-precision gradients with the fp32 ones:
relative error ``||g_low - g_32|| / ||g_32||``, overflow (non-finite values) and
underflow (values fp32 has and the low precision flushed to zero). A layer gets the first
candidate within the limits, else fp32.

- Weights stay fp32 (master weights); autocast casts them per op for the chosen dtype, and
  each layer hands its output on in fp32.
- Numerically sensitive ops (softmax, normalisation, losses, attention) run in fp32
  whatever the layer's precision: CPU autocast leaves them in the input's dtype.
- fp16 needs loss scaling: ``DynamicLossScaler`` multiplies the loss, unscales the
  gradients, skips the step on inf/nan and backs off, and grows the scale again after a
  run of good steps. bf16 has fp32's range and needs none.
- The candidates default to what the hardware runs fast: fp16 then bf16 on CUDA; bf16 on
  CPU (CPU fp16 matmuls are emulated, about 50x slower than fp32 here).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.overrides import TorchFunctionMode

from vigil.errors import DataError, UsageError

__all__ = [
    "DTYPES",
    "DynamicLossScaler",
    "PrecisionConfig",
    "PrecisionScheduler",
    "Sensitivity",
    "fp32_sensitive_ops",
]

log = logging.getLogger("vigil.engine.precision")

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}

# ops whose low-precision results go wrong first: exponentials and sums over many values
_SENSITIVE = {
    F.softmax,
    F.log_softmax,
    F.layer_norm,
    F.group_norm,
    F.batch_norm,
    F.instance_norm,
    F.cross_entropy,
    F.nll_loss,
    F.binary_cross_entropy,
    F.binary_cross_entropy_with_logits,
    F.mse_loss,
    F.l1_loss,
    F.scaled_dot_product_attention,
    torch.softmax,
    torch.log_softmax,
    torch.logsumexp,
    torch.layer_norm,
    torch.Tensor.softmax,
    torch.Tensor.log_softmax,
    torch.Tensor.logsumexp,
}


def _to_fp32(x: Any) -> Any:
    if isinstance(x, torch.Tensor) and x.is_floating_point() and x.dtype != torch.float32:
        return x.float()
    if isinstance(x, (list, tuple)):
        return type(x)(_to_fp32(v) for v in x)
    return x


class _Fp32Sensitive(TorchFunctionMode):
    def __init__(self, device_type: str) -> None:
        super().__init__()
        self.device_type = device_type

    def __torch_function__(self, func, types, args=(), kwargs=None):  # type: ignore[override]
        kwargs = kwargs or {}
        if func in _SENSITIVE:
            with torch.autocast(self.device_type, enabled=False):
                return func(*_to_fp32(args), **{k: _to_fp32(v) for k, v in kwargs.items()})
        return func(*args, **kwargs)


@contextlib.contextmanager
def fp32_sensitive_ops(device_type: str = "cpu") -> Iterator[None]:
    """Inside: softmax, normalisation, losses and attention compute in fp32."""
    with _Fp32Sensitive(device_type):
        yield


@dataclass(frozen=True)
class PrecisionConfig:
    every_steps: int = 50  # how often to re-measure sensitivity
    candidates: tuple[str, ...] | None = None  # preference order; None: by device
    max_rel_error: float = 0.05  # of a layer's gradient against fp32
    max_underflow: float = 0.01  # share of non-zero fp32 gradient values flushed to zero
    init_scale: float = 2.0**16
    growth_interval: int = 200  # good steps before the loss scale doubles
    backoff: float = 0.5
    growth: float = 2.0

    def candidates_for(self, device_type: str) -> tuple[str, ...]:
        if self.candidates is not None:
            bad = [c for c in self.candidates if c not in ("fp16", "bf16")]
            if bad:
                raise UsageError(f"precision candidates are fp16 and bf16, not {bad}")
            return self.candidates
        return ("fp16", "bf16") if device_type == "cuda" else ("bf16",)


class DynamicLossScaler:
    """Loss scaling for fp16 gradients: scale up so small gradients survive; on inf/nan,
    skip the step and halve; after ``growth_interval`` good steps, double."""

    def __init__(self, cfg: PrecisionConfig) -> None:
        self.cfg = cfg
        self.scale = cfg.init_scale
        self.good_steps = 0
        self.skipped = 0

    def step(self, optimizer: torch.optim.Optimizer, scale: float) -> bool:
        """Unscale the gradients (they were computed from ``loss * scale``), then step the
        optimizer unless any is non-finite. Returns whether it stepped."""
        grads = [p.grad for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        finite = all(bool(torch.isfinite(gr).all()) for gr in grads)
        if finite:
            if scale != 1.0:
                for gr in grads:
                    gr.div_(scale)
            optimizer.step()
        self.update(finite, scaled=scale != 1.0)
        return finite

    def update(self, finite: bool, scaled: bool = True) -> None:
        if not finite:
            self.skipped += 1
            self.good_steps = 0
            if scaled:
                self.scale = max(self.scale * self.cfg.backoff, 1.0)
            return
        self.good_steps += 1
        if scaled and self.good_steps >= self.cfg.growth_interval:
            self.scale = min(self.scale * self.cfg.growth, 2.0**24)
            self.good_steps = 0

    def state_dict(self) -> dict[str, float]:
        return {"scale": self.scale, "good_steps": self.good_steps, "skipped": self.skipped}

    def load_state_dict(self, state: dict[str, float]) -> None:
        self.scale = float(state["scale"])
        self.good_steps = int(state["good_steps"])
        self.skipped = int(state["skipped"])


@dataclass(frozen=True)
class Sensitivity:
    """One layer's gradients in one precision against fp32."""

    rel_error: float
    overflow: int  # non-finite values
    underflow: float  # share of non-zero fp32 values that became zero

    def acceptable(self, cfg: PrecisionConfig) -> bool:
        return (
            self.overflow == 0
            and math.isfinite(self.rel_error)
            and self.rel_error <= cfg.max_rel_error
            and self.underflow <= cfg.max_underflow
        )


@dataclass
class PrecisionScheduler:
    """Per-layer precision for ``model``'s forward compute (see the module docstring).

    >>> model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 1))
    >>> sched = PrecisionScheduler(model, fixed="bf16")
    >>> sched.decisions
    {'0': 'bf16', '2': 'bf16'}
    >>> with sched.autocast():
    ...     model(torch.zeros(2, 4)).dtype  # computed in bf16, handed on in fp32
    torch.float32
    """

    model: nn.Module
    config: PrecisionConfig = field(default_factory=PrecisionConfig)
    device_type: str = "cpu"
    fixed: str | None = None  # one precision for every layer, never re-measured
    decisions: dict[str, str] = field(init=False)
    history: list[dict[str, Any]] = field(init=False, default_factory=list)
    scaler: DynamicLossScaler = field(init=False)

    def __post_init__(self) -> None:
        if self.fixed is not None and self.fixed not in DTYPES:
            raise UsageError(f"unknown precision {self.fixed!r}; one of {list(DTYPES)}")
        self.layers = {
            name: m
            for name, m in self.model.named_modules()
            if any(True for _ in m.parameters(recurse=False))
        }
        self.decisions = {name: self.fixed or "fp32" for name in self.layers}
        self.scaler = DynamicLossScaler(self.config)
        for name, module in self.layers.items():
            if "forward" not in vars(module):  # wrap once
                module.forward = functools.partial(self._forward, name, module.forward)

    # -- forward ---------------------------------------------------------------------------
    def _forward(self, name: str, forward: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        precision = self.decisions.get(name, "fp32")
        if precision == "fp32":
            with torch.autocast(self.device_type, enabled=False):
                return forward(*_to_fp32(args), **{k: _to_fp32(v) for k, v in kwargs.items()})
        with torch.autocast(self.device_type, dtype=DTYPES[precision]):
            out = forward(*args, **kwargs)
        # back to fp32: a layer's precision is its own compute; the ops between layers
        # (scaling, residual sums) must not inherit fp16's range
        return _to_fp32(out)

    @contextlib.contextmanager
    def autocast(self) -> Iterator[None]:
        """Run the forward pass (and the loss) inside this."""
        with fp32_sensitive_ops(self.device_type):
            yield

    @property
    def uses_fp16(self) -> bool:
        return "fp16" in self.decisions.values()

    # -- backward and step -----------------------------------------------------------------
    def backward(self, loss: torch.Tensor) -> float:
        """Backward of the loss, scaled when any layer computes in fp16. Returns the scale
        the gradients carry (for ``step``)."""
        scale = self.scaler.scale if self.uses_fp16 else 1.0
        (loss * scale).backward() if scale != 1.0 else loss.backward()
        return scale

    def step(self, optimizer: torch.optim.Optimizer, scale: float) -> bool:
        return self.scaler.step(optimizer, scale)

    # -- measuring -------------------------------------------------------------------------
    def due(self, step: int) -> bool:
        return self.fixed is None and step % self.config.every_steps == 0

    def measure(self, loss_of: Callable[[], torch.Tensor], step: int = 0) -> dict[str, str]:
        """Probe: gradients of ``loss_of()`` (a closure over one batch) in fp32 and in each
        candidate, then a new precision per layer. Leaves the parameters' ``.grad`` empty."""
        saved = dict(self.decisions)
        params = {n: [p for p in m.parameters(recurse=False)] for n, m in self.layers.items()}

        def grads(precision: str, scale: float, only: str | None = None) -> dict[str, torch.Tensor]:
            self.decisions = {n: precision if only in (None, n) else "fp32" for n in self.layers}
            self.model.zero_grad(set_to_none=True)
            with self.autocast():
                loss = loss_of()
            (loss.float() * scale).backward()
            out = {}
            for n, ps in params.items():
                flat = [
                    (p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).float()
                    for p in ps
                ]
                out[n] = torch.cat(flat) / scale
            return out

        try:
            reference = grads("fp32", 1.0)
            measured: dict[str, dict[str, Sensitivity]] = {}
            for precision in self.config.candidates_for(self.device_type):
                scale = self.scaler.scale if precision == "fp16" else 1.0
                low = grads(precision, scale)
                found = {n: _compare(low[n], reference[n]) for n in self.layers}
                if any(f.overflow for f in found.values()):
                    # one layer's inf reaches every gradient: find the layers that overflow
                    # by running each alone in this precision
                    found = {
                        n: _compare(grads(precision, scale, only=n)[n], reference[n])
                        for n in self.layers
                    }
                measured[precision] = found
        finally:
            self.decisions = saved
            self.model.zero_grad(set_to_none=True)
        order = self.config.candidates_for(self.device_type)
        self.decisions = {
            n: next((p for p in order if measured[p][n].acceptable(self.config)), "fp32")
            for n in self.layers
        }
        counts = {p: sum(1 for d in self.decisions.values() if d == p) for p in DTYPES}
        self.history.append(
            {
                "step": step,
                "decisions": dict(self.decisions),
                "sensitivity": {
                    p: {n: asdict(s) for n, s in m.items()} for p, m in measured.items()
                },
            }
        )
        del self.history[:-20]  # the recent measurements travel in checkpoints
        log.info(
            "step %d precision: %s (%s)",
            step,
            " ".join(f"{p}={c}" for p, c in counts.items()),
            ", ".join(f"{n}:{d}" for n, d in self.decisions.items()),
        )
        return dict(self.decisions)

    # -- checkpoints -----------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {
            "decisions": dict(self.decisions),
            "scaler": self.scaler.state_dict(),
            "history": list(self.history),
            "fixed": self.fixed,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        unknown = set(state["decisions"]) - set(self.layers)
        if unknown:
            raise DataError(
                f"checkpoint precision names layers this model lacks: {sorted(unknown)}"
            )
        self.decisions.update(state["decisions"])
        self.scaler.load_state_dict(state["scaler"])
        self.history = list(state.get("history", []))


def _compare(low: torch.Tensor, ref: torch.Tensor) -> Sensitivity:
    finite = torch.isfinite(low)
    overflow = int((~finite).sum())
    nonzero = ref != 0
    flushed = (low == 0) & nonzero
    norm = float(ref.norm())
    err = float((torch.where(finite, low, 0) - ref).norm())
    return Sensitivity(
        rel_error=err / norm if norm > 0 else (0.0 if err == 0 else math.inf),
        overflow=overflow,
        underflow=float(flushed.sum()) / max(1, int(nonzero.sum())),
    )
