"""Weight-only exports: 4- and 2-bit integer weights, or float16 weights, in a float graph.

``weight_only(graph, bits)`` rewrites an fp32 ONNX graph (exported from a model whose
weights QAT already put on the grid) so that the file stores packed weights:

- **MatMul / Gemm with a constant weight** become ``MatMulNBits`` (com.microsoft): ONNX
  Runtime multiplies float activations by the packed 4- or 2-bit weights directly.
  Quantization is per output channel and symmetric (``quantize.qrange``: -7..7 at 4 bits,
  -1..1 at 2), stored with MatMulNBits's implicit zero point ``2^(bits-1)``; the channel's
  scale is repeated in each block of ``block_size`` inputs, so the blocks change nothing.
  Scales are stored as float16 (as GPTQ-style formats do) and cast back on load.
- **Conv weights** are stored packed too and **dequantized on load, inside the graph**:
  ``BitShift -> Mod -> Cast -> Sub -> Mul`` on constants (ops of our graphs' opset 17),
  which ONNX Runtime's constant folding evaluates once when the session is created; the
  convolution then runs in float32. (ONNX's int4 ``DequantizeLinear`` would do for 4 bits,
  but ORT has no 2-bit type for it: one path for both.)
- Every other float32 tensor of at least ``MIN_ELEMENTS`` (all weights at 16 bits;
  embeddings, norms and biases at 4 and 2) is stored as float16 and cast back on load
  (CPU kernels compute in float32 either way).
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from vigil.errors import UsageError
from vigil.models.compression.grid import qparams, quantize

__all__ = ["WEIGHT_ONLY_BITS", "pack", "unpack", "weight_only"]

WEIGHT_ONLY_BITS = (2, 4)
MIN_ELEMENTS = 64  # smaller tensors (biases, norms, scales) stay float32


def pack(q: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned ``bits``-bit values (last axis) packed into bytes, the first value in the
    lowest bits; the last axis is padded with zeros to whole bytes."""
    per = 8 // bits
    pad = (-q.shape[-1]) % per
    q = np.pad(q.astype(np.uint8), [(0, 0)] * (q.ndim - 1) + [(0, pad)])
    q = q.reshape(*q.shape[:-1], -1, per)
    out = np.zeros(q.shape[:-1], np.uint8)
    for i in range(per):
        out |= q[..., i] << (bits * i)
    return out


def unpack(packed: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The inverse of ``pack`` along the last axis (``count`` values)."""
    per, mask = 8 // bits, (1 << bits) - 1
    parts = [(packed >> (bits * i)) & mask for i in range(per)]
    return np.stack(parts, axis=-1).reshape(*packed.shape[:-1], -1)[..., :count]


def _per_channel(w: np.ndarray, bits: int, axis: int) -> tuple[np.ndarray, np.ndarray]:
    """Signed integers and per-channel scales of ``w`` along ``axis`` (as the weight
    fake-quantizer computes them: the channel's own max |w|)."""
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other)
    scale, zero = qparams(-amax, amax, bits, "symmetric")
    q = quantize(w, scale, zero, bits, "symmetric", axis)
    return q.astype(np.int32), scale.astype(np.float32)


def _block_size(k: int) -> int:
    """The MatMulNBits block (a power of two, at least 16) that pads ``k`` inputs least;
    of those, the largest (scales are stored per channel, not per block)."""
    sizes = [2**p for p in range(4, max(5, int(np.ceil(np.log2(k))) + 1))]
    return min(sizes, key=lambda b: (-(-k // b) * b, -b))


def _matmul_nbits(
    name: str, x: str, out: str, w: np.ndarray, bits: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """``x @ w`` (``w``: K x N) as MatMulNBits on per-output-channel ``bits``-bit weights.
    MatMulNBits takes a scale per block: the file stores one per channel, and a constant
    Expand repeats it over the blocks when the session loads."""
    k, n = w.shape
    q, scale = _per_channel(w, bits, axis=1)
    block = _block_size(k)
    blocks = -(-k // block)
    zero = 2 ** (bits - 1)  # MatMulNBits's default zero point
    u = np.full((n, blocks * block), zero, np.int32)
    u[:, :k] = q.T + zero
    p = f"{name}_q{bits}"
    # scales travel as float16 (as in GPTQ-style formats) and are cast back on load
    half = scale.astype(np.float16).reshape(n, 1) if blocks > 1 else scale.astype(np.float16)
    inits = [
        numpy_helper.from_array(pack(u.reshape(n, blocks, block), bits), p),
        numpy_helper.from_array(half, f"{p}_scale16"),
    ]
    nodes = [helper.make_node("Cast", [f"{p}_scale16"], [f"{p}_scale"], to=TensorProto.FLOAT)]
    scales = f"{p}_scale"
    if blocks > 1:  # [n, 1] -> [n, blocks] -> [n * blocks], n-major
        inits.append(numpy_helper.from_array(np.array([n, blocks], np.int64), f"{p}_blocks"))
        inits.append(numpy_helper.from_array(np.array([-1], np.int64), f"{p}_flat"))
        nodes += [
            helper.make_node("Expand", [scales, f"{p}_blocks"], [f"{p}_s"]),
            helper.make_node("Reshape", [f"{p}_s", f"{p}_flat"], [f"{p}_scales"]),
        ]
        scales = f"{p}_scales"
    nodes.append(
        helper.make_node(
            "MatMulNBits",
            [x, p, scales],
            [out],
            domain="com.microsoft",
            K=k,
            N=n,
            bits=bits,
            block_size=block,
        )
    )
    return nodes, inits


def _dequantize_on_load(
    name: str, w: np.ndarray, bits: int
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """Packed per-channel (axis 0) ``bits``-bit weights and the constant subgraph that
    restores ``name`` as float32 when ORT folds constants at load."""
    q, scale = _per_channel(w, bits, axis=0)
    zero = 2 ** (bits - 1)
    packed = pack((q + zero).reshape(-1), bits)
    per, count = 8 // bits, w.size
    p = f"{name}_q{bits}"
    inits = [
        numpy_helper.from_array(packed, p),
        numpy_helper.from_array(
            np.array([bits * i for i in range(per)], np.uint8).reshape(1, per), f"{p}_shifts"
        ),
        numpy_helper.from_array(np.array(1 << bits, np.uint8), f"{p}_mod"),
        numpy_helper.from_array(np.array([-1, 1], np.int64), f"{p}_col"),
        numpy_helper.from_array(np.array([-1], np.int64), f"{p}_flat"),
        numpy_helper.from_array(np.array([0], np.int64), f"{p}_start"),
        numpy_helper.from_array(np.array([count], np.int64), f"{p}_count"),
        numpy_helper.from_array(np.array(zero, np.float32), f"{p}_zero"),
        numpy_helper.from_array(np.array(w.shape, np.int64), f"{p}_shape"),
        numpy_helper.from_array(
            scale.astype(np.float16).reshape([-1] + [1] * (w.ndim - 1)), f"{p}_scale16"
        ),
    ]
    nodes = [
        helper.make_node("Reshape", [p, f"{p}_col"], [f"{p}_c"]),  # one byte per row
        helper.make_node("BitShift", [f"{p}_c", f"{p}_shifts"], [f"{p}_s"], direction="RIGHT"),
        helper.make_node("Mod", [f"{p}_s", f"{p}_mod"], [f"{p}_m"]),
        helper.make_node("Reshape", [f"{p}_m", f"{p}_flat"], [f"{p}_f"]),
        helper.make_node("Slice", [f"{p}_f", f"{p}_start", f"{p}_count"], [f"{p}_v"]),
        helper.make_node("Cast", [f"{p}_v"], [f"{p}_float"], to=TensorProto.FLOAT),
        helper.make_node("Sub", [f"{p}_float", f"{p}_zero"], [f"{p}_signed"]),
        helper.make_node("Reshape", [f"{p}_signed", f"{p}_shape"], [f"{p}_int"]),
        helper.make_node("Cast", [f"{p}_scale16"], [f"{p}_scale"], to=TensorProto.FLOAT),
        helper.make_node("Mul", [f"{p}_int", f"{p}_scale"], [name]),
    ]
    return nodes, inits


def _float16_on_load(
    name: str, w: np.ndarray
) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    half = numpy_helper.from_array(w.astype(np.float16), f"{name}_fp16")
    return [helper.make_node("Cast", [half.name], [name], to=TensorProto.FLOAT)], [half]


def weight_only(graph: bytes, bits: int) -> bytes:
    """The graph with its float32 weights stored as ``bits``-bit integers (2, 4) or
    float16 (16); see the module notes for which op serves which layer."""
    if bits not in (*WEIGHT_ONLY_BITS, 16):
        raise UsageError(f"weight-only export takes 2, 4 or 16 bits, not {bits}")
    model = onnx.load_from_string(graph)
    g = model.graph
    weights = {
        t.name: numpy_helper.to_array(t)
        for t in g.initializer
        if t.data_type == TensorProto.FLOAT and np.prod(t.dims) >= MIN_ELEMENTS
    }
    nodes: list[onnx.NodeProto] = []
    new_inits: list[onnx.TensorProto] = []
    for node in g.node:
        w_name = node.input[1] if len(node.input) > 1 else None
        w = weights.get(w_name) if w_name else None
        if bits != 16 and w is not None and w.ndim == 2 and _plain_matmul(node):
            transposed = node.op_type == "Gemm" and _attr(node, "transB", 0) == 1
            mm_out = node.output[0] if len(node.input) < 3 else f"{node.output[0]}_nobias"
            mm, inits = _matmul_nbits(
                node.name or w_name, node.input[0], mm_out, w.T if transposed else w, bits
            )
            nodes += mm
            new_inits += inits
            if len(node.input) >= 3:  # Gemm's bias
                nodes.append(helper.make_node("Add", [mm_out, node.input[2]], [node.output[0]]))
            continue
        nodes.append(node)
    used = {i for n in nodes for i in n.input}
    # integer widths: convolution weights; the other float tensors (embeddings, norms,
    # biases) as float16, as at 16 bits
    convs = set() if bits == 16 else {n.input[1] for n in nodes if n.op_type == "Conv"}
    restore: list[onnx.NodeProto] = []
    for name, w in weights.items():
        if name not in used:
            continue
        if name in convs:
            sub, inits = _dequantize_on_load(name, w, bits)
        else:
            sub, inits = _float16_on_load(name, w)
        restore += sub
        new_inits += inits
    # every used weight is now restored by a subgraph; unused ones (rewritten into
    # MatMulNBits) go
    keep = [t for t in g.initializer if t.name in used and t.name not in weights]
    del g.initializer[:]
    g.initializer.extend(keep + new_inits)
    del g.node[:]
    g.node.extend(restore + nodes)
    if bits != 16 and not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    onnx.checker.check_model(model)
    return model.SerializeToString()


def _attr(node: onnx.NodeProto, name: str, default: float) -> float:
    return next((helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _plain_matmul(node: onnx.NodeProto) -> bool:
    """MatMul, or a Gemm that is one (no transposed input A, unit alpha and beta)."""
    if node.op_type == "MatMul":
        return True
    return (
        node.op_type == "Gemm"
        and _attr(node, "transA", 0) == 0
        and _attr(node, "alpha", 1.0) == 1.0
        and _attr(node, "beta", 1.0) == 1.0
    )
