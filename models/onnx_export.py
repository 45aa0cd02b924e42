"""torch -> ONNX for our serving graphs: opset 17, the TorchScript exporter, the first
axis of every input and output dynamic (export with a batch of at least 2: a batch of 1
lets the exporter specialise shapes)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["torch_to_onnx"]


def torch_to_onnx(
    module: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
    batch_axis: str = "batch",
) -> bytes:
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            module,
            example,
            buf,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes={name: {0: batch_axis} for name in (*input_names, *output_names)},
            opset_version=17,
            dynamo=False,
        )
    return buf.getvalue()
