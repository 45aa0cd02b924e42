"""Conv3d as Conv2d: the same convolution computed as one 2D convolution over stacked time
windows, with the same weights. ONNX Runtime's int8 Conv2d (QLinearConv over MLAS's integer
GEMM) is fast on CPU, its int8 Conv3d is not (measured 2.3x slower than fp32 Conv3d), so
quantized exports convert first. And batch norm folded into the convolution before it, so
a quantized convolution is followed by what follows it in the float model."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["TimeSlicedConv3d", "fold_batchnorm", "slice_time"]


class TimeSlicedConv3d(nn.Module):
    """``conv`` (a Conv3d: no dilation or groups in time) as a Conv2d whose input channels
    are the ``kt`` time steps of each window, stacked: channel ``k * C + c``."""

    def __init__(self, conv: nn.Conv3d) -> None:
        super().__init__()
        if conv.groups != 1 or conv.dilation[0] != 1 or conv.padding_mode != "zeros":
            raise ValueError("only plain Conv3d layers (groups 1, no time dilation) convert")
        self.kt, self.st, self.pt = conv.kernel_size[0], conv.stride[0], int(conv.padding[0])
        c_in, c_out = conv.in_channels, conv.out_channels
        self.conv = nn.Conv2d(
            c_in * self.kt,
            c_out,
            tuple(conv.kernel_size[1:]),
            stride=tuple(conv.stride[1:]),
            padding=tuple(conv.padding[1:]),
            dilation=tuple(conv.dilation[1:]),
            bias=conv.bias is not None,
        )
        with torch.no_grad():
            w = conv.weight  # (out, in, kt, kh, kw) -> (out, kt * in, kh, kw)
            self.conv.weight.copy_(w.permute(0, 2, 1, 3, 4).reshape(c_out, -1, *w.shape[3:]))
            if conv.bias is not None:
                self.conv.bias.copy_(conv.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, t, h, w = x.shape
        if self.pt:
            x = F.pad(x, (0, 0, 0, 0, self.pt, self.pt))
        steps = (t + 2 * self.pt - self.kt) // self.st + 1
        windows = torch.stack(
            [x[:, :, s * self.st : s * self.st + self.kt] for s in range(steps)], 1
        )
        # (B, steps, C, kt, H, W) -> (B * steps, kt * C, H, W)
        y = self.conv(windows.transpose(2, 3).reshape(-1, self.kt * c, h, w))
        return y.reshape(b, steps, *y.shape[1:]).transpose(1, 2)


def slice_time(model: nn.Module) -> int:
    """Replace, in place, every Conv3d of ``model`` by its ``TimeSlicedConv3d``; returns
    how many."""
    count = 0
    for name, child in list(model.named_children()):
        if isinstance(child, nn.Conv3d):
            setattr(model, name, TimeSlicedConv3d(child))
            count += 1
        else:
            count += slice_time(child)
    return count


_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module) -> int:
    """Fold, in place, every batch norm that directly follows a convolution in an
    ``nn.Sequential`` into that convolution (the norm's running statistics: the model as
    it evaluates), leaving an ``nn.Identity`` where the norm was; returns how many."""
    count = 0
    for child in model.children():
        count += fold_batchnorm(child)
    if not isinstance(model, nn.Sequential):
        return count
    names = list(model._modules)
    for before, name in zip(names, names[1:], strict=False):
        conv, norm = model._modules[before], model._modules[name]
        if not (isinstance(conv, _CONVS) and isinstance(norm, _NORMS)):
            continue
        with torch.no_grad():
            assert norm.running_var is not None and norm.running_mean is not None
            gamma, beta = (
                (norm.weight, norm.bias)
                if norm.affine
                else (torch.ones_like(norm.running_var), torch.zeros_like(norm.running_var))
            )
            scale = gamma / torch.sqrt(norm.running_var + norm.eps)
            shape = (-1,) + (1,) * (conv.weight.dim() - 1)
            conv.weight.mul_(scale.view(shape))
            bias = conv.bias if conv.bias is not None else torch.zeros_like(norm.running_mean)
            folded = (bias - norm.running_mean) * scale + beta
            conv.bias = nn.Parameter(folded)
        model._modules[name] = nn.Identity()
        count += 1
    return count
