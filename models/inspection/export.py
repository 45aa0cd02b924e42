"""The clip classifier as ONNX (checked against torch), written as a model directory."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch

from vigil.models.inspection.net import GRID, VideoConfig, VideoNet
from vigil.models.serving import ClipScorer, ModelError


def export_video(net: VideoNet, cfg: VideoConfig) -> bytes:
    """ONNX with a dynamic batch (exported with a batch of 2)."""
    from vigil.models.onnx_export import torch_to_onnx

    example = (torch.zeros(2, 1, cfg.frames, cfg.size, cfg.size),)
    return torch_to_onnx(net, example, ["clip"], ["defect_logit", "location_logits"])


# absolute for outputs within [-1, 1], relative beyond: the logits reach tens, and float32
# rounding between two runtimes (other conv and attention kernels) grows with them through
# the per-clip and per-cell normalisations: trained 128x128 models measured 1.3e-4..1.6e-4
PARITY_TOLERANCE = 1e-3


def save_video_model(
    net: VideoNet,
    cfg: VideoConfig,
    out_dir: Path,
    check: np.ndarray,
    metrics: dict,
    threshold: float = 0.5,
    extra: dict | None = None,
) -> Path:
    """Export to ONNX, check ONNX Runtime against torch on ``check`` clips (both outputs
    within ``PARITY_TOLERANCE``), and write ``out_dir/<version>`` with a manifest that
    carries the alert ``threshold`` on the defect probability."""
    from vigil.models.serving import onnx_session, write_model

    graph = export_video(net, cfg)
    session = onnx_session(graph)
    got = session.run(None, {"clip": check.astype(np.float32)})
    with torch.no_grad():
        want = [t.numpy() for t in net(torch.from_numpy(check.astype(np.float32)))]
    worst = max(
        float(np.max(np.abs(g - w) / np.maximum(1.0, np.abs(w))))
        for g, w in zip(got, want, strict=True)
    )
    if not worst <= PARITY_TOLERANCE:
        raise ModelError(f"ONNX export differs from torch by {worst:.2e} on the check clips")
    manifest = {
        "name": "inspection",
        "format": ClipScorer.FORMAT,
        "input": {"clip": [None, 1, cfg.frames, cfg.size, cfg.size], "range": [0, 1]},
        "grid": GRID,
        "threshold": threshold,
        "parity_max_diff": worst,  # absolute within [-1, 1], relative beyond
        "parity_clips": len(check),
        "config": asdict(cfg),
        "metrics": metrics,
        "bits": 32,
        **(extra or {}),
    }
    # the torch weights too: quantized exports (vigil export) start from them
    state = io.BytesIO()
    torch.save(net.state_dict(), state)
    return write_model(out_dir, {"clip.onnx": graph, "state.pt": state.getvalue()}, manifest)


def load_video_net(directory: Path) -> tuple[VideoNet, VideoConfig, dict]:
    """The torch classifier of a model directory written by ``save_video_model``."""
    from vigil.models.serving import ModelError, read_files, read_manifest

    manifest = read_manifest(directory)
    files = read_files(directory, manifest)
    if "state.pt" not in files:
        raise ModelError(
            f"{directory}: model {manifest['version']} has no torch weights (state.pt)"
        )
    # models written before ``views`` existed ran one view
    cfg = VideoConfig(**{"views": 1, **manifest["config"]})
    net = VideoNet(cfg)
    try:
        net.load_state_dict(torch.load(io.BytesIO(files["state.pt"]), weights_only=True))
    except RuntimeError as exc:  # the layers differ: the stem changed since it was trained
        raise ModelError(
            f"{directory}: model {manifest['version']}'s torch weights do not fit this "
            f"Vigil's {cfg.stem} stem (an earlier version trained it; its ONNX graph still "
            f"serves, but to quantize or fine-tune it, retrain it): {str(exc)[:200]}"
        ) from None
    return net.eval(), cfg, manifest
