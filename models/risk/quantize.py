"""The risk model's NN quantized to 16, 8, 4 or 2 bits (``vigil export risk``), verified
against the float model on held-out history its caller provides."""

from __future__ import annotations

import io
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from vigil.models.compression.export import calibrate, compact_names, export_qdq
from vigil.models.compression.fake_quant import bake, prepare_qat, quant_config
from vigil.models.compression.tools import (
    QAT_LR_SHARE,
    check_bits,
    export_report,
    write_if_within,
)
from vigil.models.compression.weight_only import weight_only
from vigil.models.metrics import average_precision
from vigil.models.risk.data import History, temporal_split
from vigil.models.risk.exporting import net_to_onnx
from vigil.models.risk.net import TabularNet
from vigil.models.risk.training import TabularConfig, finetune_net
from vigil.models.serving import (
    ModelError,
    check_feature_spec,
    gbdt_margin,
    onnx_session,
    read_files,
    read_manifest,
)
from vigil.streams.features.library import FEATURE_SPEC

__all__ = ["quantize_risk"]


def quantize_risk(
    model_dir: Path,
    bits: int,
    out_dir: Path,
    fit: History,
    held: History,
    pick_days: float,
    qat_epochs: int = 3,
    max_loss: float | None = None,
    say: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """Quantize the risk model's NN (the LightGBM graph stays as it is). ``fit`` calibrates
    (8 bits) or fine-tunes it (4, 2: its last ``pick_days`` pick the epoch); ``held``, later
    in time, compares AUC-PR with the fp32 model. Writes ``out_dir/<version>`` (a complete
    risk model) if it passes."""
    check_bits(bits)
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
    seq = state.get("seq_index")
    net = TabularNet(
        state["mean"].numpy(),
        state["std"].numpy(),
        cfg.hidden,
        True,
        None,
        None if seq is None else seq.numpy(),
        cfg.sequence_hidden,
    )
    net.load_state_dict(state)
    gbdt = onnx_session(files["gbdt.onnx"])

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
        train_part, pick_part = temporal_split(fit, pick_days)
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

    report = export_report(bits, manifest, "auc_pr", score(fp32), score(graph), fp32, graph)
    report["verified_rows"] = len(xh)
    out_files = {k: v for k, v in files.items() if k != "hybrid.pt"} | {"hybrid.onnx": graph}
    return write_if_within(out_dir, out_files, manifest, report, max_loss)
