"""8-bit export as ONNX QDQ that ONNX Runtime runs on integer kernels.

1. ``calibrate``: wrap the model's Linear and Conv layers (``prepare_qat``) and observe the
   ranges of their inputs over calibration batches (or keep the ranges QAT learned).
2. ``export_qdq``: trace with every quantizer as QuantizeLinear + DequantizeLinear, then
   fold each weight's QuantizeLinear into an int8 initializer, so the file stores int8
   weights (about 4x smaller) and ORT's QDQ fusion finds DQ(int8 weight) -> Conv/MatMul.
3. ``optimized_ops``: the op types of ORT's optimised graph, to check that integer kernels
   (QLinearConv, QGemm, MatMulInteger, ...) really run.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from vigil.errors import UsageError
from vigil.models.compression.fake_quant import FakeQuantize, QuantConfig, prepare_qat
from vigil.models.onnx_export import torch_to_onnx

__all__ = ["calibrate", "compact_names", "export_qdq", "optimized_ops", "quantizers"]


def quantizers(model: nn.Module) -> list[FakeQuantize]:
    return [m for m in model.modules() if isinstance(m, FakeQuantize)]


def calibrate(model: nn.Module, config: QuantConfig, batches: Iterable[tuple]) -> list[str]:
    """Wrap ``model`` in place and observe activation ranges over ``batches`` (argument
    tuples for its forward); the ranges are then frozen. Returns the wrapped layers."""
    wrapped = prepare_qat(model, config)
    model.eval()
    with torch.no_grad():
        for args in batches:
            model(*args)
    for q in quantizers(model):
        q.observing = False
    return wrapped


def export_qdq(
    model: nn.Module,
    example: tuple[torch.Tensor, ...],
    input_names: Sequence[str],
    output_names: Sequence[str],
) -> bytes:
    """ONNX with QuantizeLinear/DequantizeLinear around every wrapped layer and int8
    weights (``model`` calibrated or QAT-trained, 8-bit)."""
    qs = quantizers(model)
    if not qs:
        raise UsageError("the model has no quantizers: calibrate (or prepare_qat) it first")
    with torch.no_grad():
        model.eval()(*example)  # every weight quantizer sees its weight as it is now
    for q in qs:
        q.observing, q.export = False, True
        q.freeze()  # scales and zero points as constants, not traced arithmetic
    try:
        graph = torch_to_onnx(model, example, input_names, output_names)
    finally:
        for q in qs:
            q.export, q.frozen = False, None
    return fold_weight_quantization(graph)


def fold_weight_quantization(graph: bytes) -> bytes:
    """Replace every QuantizeLinear of a constant (a weight) by its integer result."""
    model = onnx.load_from_string(graph)
    g = model.graph
    known = {t.name: numpy_helper.to_array(t) for t in g.initializer}
    # constants the exporter writes as nodes: Constant, and Cast or Identity of one
    for node in g.node:
        if node.op_type == "Constant":
            known[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
        elif node.op_type == "Identity" and node.input[0] in known:
            known[node.output[0]] = known[node.input[0]]
        elif node.op_type == "Cast" and node.input[0] in known:
            to = onnx.helper.tensor_dtype_to_np_dtype(node.attribute[0].i)
            known[node.output[0]] = known[node.input[0]].astype(to)

    keep = []
    for node in g.node:
        if node.op_type == "QuantizeLinear" and node.input[0] in known:
            x, scale, zp = (known[n] for n in node.input[:3])
            axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
            if scale.ndim == 1 and x.ndim > 1:
                shape = [1] * x.ndim
                shape[axis] = -1
                scale, zp_b = scale.reshape(shape), zp.reshape(shape)
            else:
                zp_b = zp
            info = np.iinfo(zp.dtype)
            q = np.clip(np.rint(x / scale) + zp_b.astype(np.int32), info.min, info.max)
            g.initializer.append(numpy_helper.from_array(q.astype(zp.dtype), node.output[0]))
            continue
        keep.append(node)
    del g.node[:]
    g.node.extend(keep)
    used = {i for n in g.node for i in n.input}
    for t in [t for t in g.initializer if t.name not in used]:
        g.initializer.remove(t)
    return model.SerializeToString()


def optimized_ops(graph: bytes) -> Counter[str]:
    """Op types in the graph ONNX Runtime actually runs (all optimisations on, CPU)."""
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "optimized.onnx"
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        opts.optimized_model_filepath = str(out)
        opts.log_severity_level = 3
        ort.InferenceSession(graph, opts, providers=["CPUExecutionProvider"])
        return Counter(n.op_type for n in onnx.load(str(out)).graph.node)


def compact_names(graph: bytes) -> bytes:
    """The graph with short internal names: every tensor other than the graph's inputs and
    outputs renamed ``t<n>``, node names and doc strings dropped, ``Constant`` nodes made
    initializers. The exporter's names (``/encoder/layers.0/self_attn/Concat_6_output_0``)
    otherwise outweigh a small model's quantized weights."""
    model = onnx.load_from_string(graph)
    g = model.graph
    if any(
        a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS)
        for n in g.node
        for a in n.attribute
    ):
        return graph  # subgraphs (If, Loop) see outer names: left as they are
    keep = {v.name for v in (*g.input, *g.output)}
    names: dict[str, str] = {}
    constants = [n for n in g.node if n.op_type == "Constant" and n.attribute[0].name == "value"]
    for node in constants:
        tensor = onnx.TensorProto()
        tensor.CopyFrom(node.attribute[0].t)
        tensor.name = node.output[0]
        g.initializer.append(tensor)
        g.node.remove(node)

    def short(name: str) -> str:
        if not name or name in keep:
            return name
        return names.setdefault(name, f"t{len(names)}")

    for t in g.initializer:
        t.name = short(t.name)
    for node in g.node:
        node.name, node.doc_string = "", ""
        node.input[:] = [short(n) for n in node.input]
        node.output[:] = [short(n) for n in node.output]
    del g.value_info[:]
    model.doc_string = ""
    return model.SerializeToString()
