"""``vigil export``: a trained model quantized, verified against its float original on a
held-out set, and written only when it passes."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from models.compression.conv import slice_time
from models.compression.export import calibrate, export_qdq, optimized_ops
from models.compression.fake_quant import quant_config

__all__ = ["MAX_LOSS_POINTS", "export_inspection", "export_risk"]

# the most a quantized model may lose against fp32 (AUROC points) and still be written
MAX_LOSS_POINTS = {8: 0.5}
INTEGER_KERNELS = ("QLinearConv", "QGemm", "QLinearMatMul", "MatMulInteger", "MatMulIntegerToFloat")


def _integer_kernels(graph: bytes) -> dict[str, int]:
    """The integer kernels ORT runs on ``graph``; none is a failed export."""
    ops = optimized_ops(graph)
    kernels = {k: ops[k] for k in INTEGER_KERNELS if ops[k]}
    if not kernels:
        raise ValueError("ONNX Runtime runs no integer kernel on the export: not written")
    return kernels


def _write_if_within(
    out_dir: Path, files: dict[str, bytes], manifest: dict, report: dict, loss: float, metric: str
) -> tuple[Path, dict]:
    """Write the quantized model (its parent's manifest, plus bits, parent and the
    verification) unless it lost more than its bit width allows."""
    from models.serving import write_model

    bits = report["bits"]
    if loss > MAX_LOSS_POINTS[bits]:
        raise ValueError(
            f"{bits}-bit export loses {loss:.2f} {metric} points against fp32 (at most "
            f"{MAX_LOSS_POINTS[bits]} allowed): not written"
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
    say: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """Quantize the inspection classifier in ``model_dir`` to ``bits``: calibrate on
    simulated clips of the training textures, export, compare AUROC with the fp32 model on
    clips of the held-out textures, and write ``out_dir/<version>`` if it passes."""
    from models.serving import onnx_session, read_files
    from models.video import auroc, load_video_net, make_clips
    from streams.sources.camera import HELDOUT_TEXTURES, TRAIN_TEXTURES

    if bits not in MAX_LOSS_POINTS:
        raise NotImplementedError(
            f"{bits}-bit export of the inspection model is not built yet (8 is)"
        )
    net, cfg, manifest = load_video_net(model_dir)
    fp32_graph = read_files(model_dir, manifest)["clip.onnx"]
    slice_time(net)  # Conv3d as Conv2d: ORT's int8 Conv3d is slower than its fp32 one
    say(f"calibrating on {calibration_clips} clips of the training textures")
    cal = make_clips(calibration_clips, cfg, TRAIN_TEXTURES, seed=7000, belt=True)
    batches = [(torch.from_numpy(cal.clips[i : i + 32]),) for i in range(0, len(cal.clips), 32)]
    calibrate(net, quant_config(bits), batches)
    example = (torch.from_numpy(cal.clips[:2]),)
    graph = export_qdq(net, example, ["clip"], ["defect_logit", "location_logits"])
    kernels = _integer_kernels(graph)
    say(f"verifying on {evaluation_clips} clips of the held-out textures")
    held = make_clips(evaluation_clips, cfg, HELDOUT_TEXTURES, seed=8000)

    def score(g: bytes) -> np.ndarray:
        session = onnx_session(g)
        return np.concatenate(
            [
                session.run(["defect_logit"], {"clip": held.clips[i : i + 64]})[0]
                for i in range(0, len(held.clips), 64)
            ]
        )

    base, quantized = auroc(held.labels, score(fp32_graph)), auroc(held.labels, score(graph))
    loss = (base - quantized) * 100
    report = {
        "bits": bits,
        "parent_version": manifest["version"],
        "auroc_fp32": round(base, 4),
        "auroc_quantized": round(quantized, 4),
        "loss_points": round(loss, 3),
        "size_fp32": len(fp32_graph),
        "size_quantized": len(graph),
        "smaller": round(len(fp32_graph) / len(graph), 2),
        "integer_kernels": kernels,
    }
    return _write_if_within(out_dir, {"clip.onnx": graph}, manifest, report, loss, "AUROC")


def export_risk(
    model_dir: Path,
    bits: int,
    out_dir: Path,
    days: int = 6,
    say: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """Quantize the risk model's NN (the LightGBM graph stays as it is): calibrate on the
    first half of ``days`` of generated history, compare AUC-PR with the fp32 model on the
    second half, and write ``out_dir/<version>`` (a complete risk model) if it passes."""
    import io

    from models.metrics import average_precision
    from models.serving import ModelError, onnx_session, read_files, read_manifest
    from models.tabular import TabularNet, history_from_generator, temporal_split

    if bits not in MAX_LOSS_POINTS:
        raise NotImplementedError(f"{bits}-bit export of the risk model is not built yet (8 is)")
    manifest = read_manifest(model_dir)
    files = read_files(model_dir, manifest)
    if "hybrid.pt" not in files:
        raise ModelError(
            f"{model_dir}: model {manifest['version']} has no torch weights (hybrid.pt)"
        )
    state = torch.load(io.BytesIO(files["hybrid.pt"]), weights_only=True)
    net = TabularNet(
        state["mean"].numpy(), state["std"].numpy(), manifest["config"]["hidden"], use_gbdt=True
    )
    net.load_state_dict(state)
    gbdt = onnx_session(files["gbdt.onnx"])
    say(f"generating {days} days of labelled history for calibration and verification")
    fit, held = temporal_split(history_from_generator(days=days, seed=4242), days / 2)

    def gbdt_prob(x: np.ndarray) -> np.ndarray:
        return np.ascontiguousarray(gbdt.run(["probabilities"], {"features": x})[0][:, 1])

    xc = fit.features.astype(np.float32)
    pc = gbdt_prob(xc)
    batches = [
        (torch.from_numpy(xc[i : i + 1024]), torch.from_numpy(pc[i : i + 1024]))
        for i in range(0, len(xc), 1024)
    ]
    calibrate(net, quant_config(bits), batches)
    n = xc.shape[1]
    graph = export_qdq(
        net, (torch.zeros(2, n), torch.full((2,), 0.5)), ["features", "gbdt_prob"], ["probability"]
    )
    kernels = _integer_kernels(graph)
    xh = held.features.astype(np.float32)
    ph = gbdt_prob(xh)

    def score(g: bytes) -> float:
        out = onnx_session(g).run(None, {"features": xh, "gbdt_prob": ph})[0]
        return average_precision(held.labels, out)

    base, quantized = score(files["hybrid.onnx"]), score(graph)
    loss = (base - quantized) * 100
    report = {
        "bits": bits,
        "parent_version": manifest["version"],
        "auc_pr_fp32": round(base, 4),
        "auc_pr_quantized": round(quantized, 4),
        "loss_points": round(loss, 3),
        "size_fp32": len(files["hybrid.onnx"]),
        "size_quantized": len(graph),
        "smaller": round(len(files["hybrid.onnx"]) / len(graph), 2),
        "integer_kernels": kernels,
        "verified_rows": len(xh),
    }
    out_files = {k: v for k, v in files.items() if k != "hybrid.pt"} | {"hybrid.onnx": graph}
    return _write_if_within(out_dir, out_files, manifest, report, loss, "AUC-PR")
