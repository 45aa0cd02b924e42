"""``vigil export``: a trained model quantized, verified against its float original on a
held-out set, and written only when it passes.

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

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vigil.errors import UsageError
from vigil.models.compression.conv import slice_time
from vigil.models.compression.export import calibrate, compact_names, export_qdq, optimized_ops
from vigil.models.compression.fake_quant import bake, prepare_qat, quant_config
from vigil.models.compression.weight_only import weight_only
from vigil.models.serving import ModelError

__all__ = ["EXPORT_BITS", "MAX_LOSS_POINTS", "export_inspection", "export_risk"]

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


def _check_bits(bits: int) -> None:
    if bits not in EXPORT_BITS:
        raise UsageError(f"--bits must be one of {', '.join(map(str, EXPORT_BITS))}, not {bits}")


def _integer_kernels(graph: bytes) -> dict[str, int]:
    """The integer kernels ORT runs on ``graph``; none is a failed export."""
    ops = optimized_ops(graph)
    kernels = {k: ops[k] for k in INTEGER_KERNELS if ops[k]}
    if not kernels:
        raise ModelError("ONNX Runtime runs no integer kernel on the export: not written")
    return kernels


def _report(
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
        "integer_kernels": {} if bits == 16 else _integer_kernels(graph),
    }


def _write_if_within(
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


def export_inspection(
    model_dir: Path,
    bits: int,
    out_dir: Path,
    calibration_clips: int = 256,
    evaluation_clips: int = 400,
    qat_clips: int = 800,
    qat_epochs: int = 2,
    max_loss: float | None = None,
    say: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """Quantize the inspection classifier in ``model_dir`` to ``bits``, compare AUROC with
    the fp32 model on clips of the held-out textures, and write ``out_dir/<version>`` if
    it passes. Calibration (8 bits) and fine-tuning (4, 2) use ``training_clips``."""
    from vigil.models.serving import onnx_session, read_files
    from vigil.models.video import (
        auroc,
        export_video,
        finetune_video,
        load_video_net,
        make_clips,
        training_clips,
    )
    from vigil.streams.sources.camera import HELDOUT_TEXTURES

    _check_bits(bits)
    net, cfg, manifest = load_video_net(model_dir)
    fp32 = read_files(model_dir, manifest)["clip.onnx"]
    if bits == 16:
        graph = weight_only(fp32, 16)
    elif bits == 8:
        slice_time(net)  # Conv3d as Conv2d: ORT's int8 Conv3d is slower than its fp32 one
        say(f"calibrating on {calibration_clips} clips of the training textures")
        cal = training_clips(calibration_clips, cfg, seed=7000)
        batches = [(torch.from_numpy(cal.clips[i : i + 32]),) for i in range(0, len(cal.clips), 32)]
        calibrate(net, quant_config(bits), batches)
        example = (torch.from_numpy(cal.clips[:2]),)
        graph = export_qdq(net, example, ["clip"], ["defect_logit", "location_logits"])
    else:
        say(f"quantization-aware fine-tuning: {qat_epochs} epochs on {qat_clips} clips")
        data = training_clips(qat_clips, cfg, seed=7100)
        prepare_qat(net, quant_config(bits, activation_bits=None))
        finetune_video(net, data, cfg, qat_epochs, cfg.lr * QAT_LR_SHARE, say)
        graph = weight_only(export_video(bake(net), cfg), bits)
    graph = compact_names(graph)
    say(f"verifying on {evaluation_clips} clips of the held-out textures")
    held = make_clips(evaluation_clips, cfg, HELDOUT_TEXTURES, seed=8000)

    def score(g: bytes) -> float:
        session = onnx_session(g)
        logits = [
            session.run(["defect_logit"], {"clip": held.clips[i : i + 64]})[0]
            for i in range(0, len(held.clips), 64)
        ]
        return auroc(held.labels, np.concatenate(logits))

    report = _report(bits, manifest, "auroc", score(fp32), score(graph), fp32, graph)
    return _write_if_within(out_dir, {"clip.onnx": graph}, manifest, report, max_loss)


def export_risk(
    model_dir: Path,
    bits: int,
    out_dir: Path,
    days: int = 6,
    qat_epochs: int = 3,
    max_loss: float | None = None,
    say: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """Quantize the risk model's NN (the LightGBM graph stays as it is). ``days`` of
    generated history: the first half calibrates (8 bits) or fine-tunes (4, 2: the first
    quarter trains, the second picks the epoch), the second half compares AUC-PR with the
    fp32 model; writes ``out_dir/<version>`` (a complete risk model) if it passes."""
    from vigil.models.metrics import average_precision
    from vigil.models.serving import (
        ModelError,
        check_feature_spec,
        gbdt_margin,
        onnx_session,
        read_files,
        read_manifest,
    )
    from vigil.models.tabular import (
        TabularConfig,
        TabularNet,
        finetune_net,
        history_from_generator,
        net_to_onnx,
        temporal_split,
    )
    from vigil.streams.features.library import FEATURE_SPEC

    _check_bits(bits)
    manifest = read_manifest(model_dir)
    # one trained on another feature spec (and before lib-3, on the GBDT's probability)
    check_feature_spec(manifest.get("feature_spec"), FEATURE_SPEC.label, f"model {model_dir}")
    files = read_files(model_dir, manifest)
    if "hybrid.pt" not in files:
        raise ModelError(
            f"{model_dir}: model {manifest['version']} has no torch weights (hybrid.pt)"
        )
    state = torch.load(io.BytesIO(files["hybrid.pt"]), weights_only=True)
    cfg = TabularConfig(**manifest["config"])
    net = TabularNet(state["mean"].numpy(), state["std"].numpy(), cfg.hidden, use_gbdt=True)
    state.setdefault("keep", net.keep)  # models from before TabularConfig.ignored use all
    net.load_state_dict(state)
    gbdt = onnx_session(files["gbdt.onnx"])
    say(f"generating {days} days of labelled history for calibration and verification")
    fit, held = temporal_split(history_from_generator(days=days, seed=4242), days / 2)

    fp32 = files["hybrid.onnx"]
    n = fit.features.shape[1]
    if bits == 16:
        graph = weight_only(fp32, 16)
    elif bits == 8:
        xc = fit.features.astype(np.float32)
        pc = gbdt_margin(gbdt, xc)
        batches = [
            (torch.from_numpy(xc[i : i + 1024]), torch.from_numpy(pc[i : i + 1024]))
            for i in range(0, len(xc), 1024)
        ]
        calibrate(net, quant_config(bits), batches)
        example = (torch.zeros(2, n), torch.zeros(2))
        graph = export_qdq(net, example, ["features", "gbdt_logit"], ["probability"])
    else:
        train_part, pick_part = temporal_split(fit, days / 4)
        say(f"quantization-aware fine-tuning: {qat_epochs} epochs on {len(train_part.labels)} rows")
        prepare_qat(net, quant_config(bits, activation_bits=None))
        data, pick = (
            (h.features, h.labels, gbdt_margin(gbdt, h.features)) for h in (train_part, pick_part)
        )
        finetune_net(
            net, data, pick, replace(cfg, epochs=qat_epochs, lr=cfg.lr * QAT_LR_SHARE), say
        )
        graph = weight_only(net_to_onnx(bake(net), n), bits)
    graph = compact_names(graph)
    xh = held.features.astype(np.float32)
    ph = gbdt_margin(gbdt, xh)

    def score(g: bytes) -> float:
        out = onnx_session(g).run(None, {"features": xh, "gbdt_logit": ph})[0]
        return average_precision(held.labels, out)

    report = _report(bits, manifest, "auc_pr", score(fp32), score(graph), fp32, graph)
    report["verified_rows"] = len(xh)
    out_files = {k: v for k, v in files.items() if k != "hybrid.pt"} | {"hybrid.onnx": graph}
    return _write_if_within(out_dir, out_files, manifest, report, max_loss)
