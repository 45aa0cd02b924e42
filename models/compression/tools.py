"""What every quantized export shares (``vigil export``): a trained model quantized,
verified against its float original on held-out data its caller provides, and written only
when it passes. The models' own exports: ``models/risk/quantize.py``,
``models/inspection/quantize.py``.

Per bit width:

- 16: float16 weights, cast to float32 on load (CPU kernels compute in float32).
- 8: ONNX QDQ on integer kernels (QLinearConv, QGemm, MatMulInteger): weights per channel
  and activations per tensor, calibrated on training data (post-training quantization).
- 4 and 2: weight-only. Quantization-aware fine-tuning first (weights fake-quantized per
  channel, a few epochs at a quarter of the training rate), then MatMulNBits for every
  matrix product and packed convolution weights dequantized on load (weight_only.py).

Every export's graph has its tensor names compacted (``compact_names``); its size is
compared with the fp32 graph compacted the same way, and with the fp32 file as trained.
"""

from __future__ import annotations

from pathlib import Path

from vigil.errors import UsageError
from vigil.models.compression.export import compact_names, optimized_ops
from vigil.models.serving import ModelError

__all__ = [
    "EXPORT_BITS",
    "MAX_LOSS_POINTS",
    "QAT_LR_SHARE",
    "check_bits",
    "export_report",
    "write_if_within",
]

EXPORT_BITS = (16, 8, 4, 2)
# the most an export may lose against fp32 (metric points) and still be written by default;
# 2 bits is supported with its loss measured, and refused beyond this
MAX_LOSS_POINTS = {16: 0.1, 8: 0.5, 4: 1.0, 2: 10.0}
INTEGER_KERNELS = (
    "QLinearConv",
    "QGemm",
    "QLinearMatMul",
    "MatMulInteger",
    "MatMulIntegerToFloat",
    "MatMulNBits",
)
QAT_LR_SHARE = 0.25  # fine-tuning rate, as a share of the training rate


def check_bits(bits: int) -> None:
    if bits not in EXPORT_BITS:
        raise UsageError(f"--bits must be one of {', '.join(map(str, EXPORT_BITS))}, not {bits}")


def integer_kernels(graph: bytes) -> dict[str, int]:
    """The integer kernels ORT runs on ``graph``; none is a failed export."""
    ops = optimized_ops(graph)
    kernels = {k: ops[k] for k in INTEGER_KERNELS if ops[k]}
    if not kernels:
        raise ModelError("ONNX Runtime runs no integer kernel on the export: not written")
    return kernels


def export_report(
    bits: int, manifest: dict, metric: str, base: float, quantized: float, fp32: bytes, graph: bytes
) -> dict:
    compact_fp32 = len(compact_names(fp32))
    return {
        "bits": bits,
        "parent_version": manifest["version"],
        f"{metric}_fp32": round(base, 4),
        f"{metric}_quantized": round(quantized, 4),
        "loss_points": round((base - quantized) * 100, 3),
        "size_fp32_file": len(fp32),
        "size_fp32": compact_fp32,
        "size_quantized": len(graph),
        "smaller": round(compact_fp32 / len(graph), 2),
        # float16 weights are cast back on load: float kernels, by design
        "integer_kernels": {} if bits == 16 else integer_kernels(graph),
    }


def write_if_within(
    out_dir: Path, files: dict[str, bytes], manifest: dict, report: dict, max_loss: float | None
) -> tuple[Path, dict]:
    """Write the quantized model (its parent's manifest, plus bits, parent and the
    verification) unless it lost more than allowed."""
    from vigil.models.serving import write_model

    bits, loss = report["bits"], report["loss_points"]
    allowed = MAX_LOSS_POINTS[bits] if max_loss is None else max_loss
    if loss > allowed:
        raise ModelError(
            f"{bits}-bit export loses {loss:.2f} points against fp32 (at most {allowed} "
            "allowed; --max-loss to change): not written"
        )
    keep = {k: v for k, v in manifest.items() if k not in ("version", "created_ms", "files")}
    new = {**keep, "bits": bits, "parent_version": manifest["version"], "quantization": report}
    return write_model(out_dir, files, new), report
