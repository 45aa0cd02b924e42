"""The clip classifier quantized to 16, 8, 4 or 2 bits (``vigil export inspection``),
verified against the float model on held-out clips its caller provides."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch

from vigil.errors import UsageError
from vigil.models.compression.conv import fold_batchnorm, slice_time
from vigil.models.compression.export import calibrate, compact_names, export_qdq
from vigil.models.compression.fake_quant import bake, prepare_qat, quant_config
from vigil.models.compression.tools import (
    QAT_LR_SHARE,
    check_bits,
    export_report,
    write_if_within,
)
from vigil.models.compression.weight_only import weight_only
from vigil.models.inspection.data import ClipDataset
from vigil.models.inspection.evaluate import auroc
from vigil.models.inspection.export import export_video, load_video_net
from vigil.models.inspection.train import finetune_video
from vigil.models.serving import onnx_session, read_files

__all__ = ["quantize_inspection"]


def quantize_inspection(
    model_dir: Path,
    bits: int,
    out_dir: Path,
    tune: ClipDataset | None,
    held: ClipDataset,
    qat_epochs: int = 2,
    max_loss: float | None = None,
    say: Callable[[str], None] = print,
) -> tuple[Path, dict]:
    """Quantize the inspection classifier in ``model_dir`` to ``bits``, compare AUROC with
    the fp32 model on ``held`` (clips of textures it never trained on), and write
    ``out_dir/<version>`` if it passes. ``tune``: clips of the training textures that
    calibrate (8 bits) or fine-tune (4, 2) it; unused at 16 bits."""
    check_bits(bits)
    if tune is None and bits != 16:
        raise UsageError(f"a {bits}-bit export needs clips to calibrate or fine-tune on")
    net, cfg, manifest = load_video_net(model_dir)
    fold_batchnorm(net)  # the deep stem's: each quantized conv then as the float one
    fp32 = read_files(model_dir, manifest)["clip.onnx"]
    if bits == 16:
        graph = weight_only(fp32, 16)
    elif bits == 8:
        slice_time(net)  # Conv3d as Conv2d: ORT's int8 Conv3d is slower than its fp32 one
        say(f"calibrating on {len(tune.clips)} clips of the training textures")
        cal = tune
        batches = [(torch.from_numpy(cal.clips[i : i + 32]),) for i in range(0, len(cal.clips), 32)]
        calibrate(net, quant_config(bits), batches)
        example = (torch.from_numpy(cal.clips[:2]),)
        graph = export_qdq(net, example, ["clip"], ["defect_logit", "location_logits"])
    else:
        say(f"quantization-aware fine-tuning: {qat_epochs} epochs on {len(tune.clips)} clips")
        data = tune
        prepare_qat(net, quant_config(bits, activation_bits=None))
        finetune_video(net, data, cfg, qat_epochs, cfg.lr * QAT_LR_SHARE, say)
        graph = weight_only(export_video(bake(net), cfg), bits)
    graph = compact_names(graph)
    say(f"verifying on {len(held.clips)} clips of the held-out textures")

    def score(g: bytes) -> float:
        session = onnx_session(g)
        logits = [
            session.run(["defect_logit"], {"clip": held.clips[i : i + 64]})[0]
            for i in range(0, len(held.clips), 64)
        ]
        return auroc(held.labels, np.concatenate(logits))

    report = export_report(bits, manifest, "auroc", score(fp32), score(graph), fp32, graph)
    return write_if_within(out_dir, {"clip.onnx": graph}, manifest, report, max_loss)
