"""The hybrid as ONNX: LightGBM through onnxmltools, the NN through torch.onnx, checked
against the Python model before anything is written."""

from __future__ import annotations

import io
from dataclasses import asdict
from pathlib import Path

import lightgbm as lgb
import numpy as np
import torch

from vigil.models.risk.data import History, Progress
from vigil.models.risk.evaluation import fit_and_evaluate
from vigil.models.risk.net import TabularNet
from vigil.models.risk.training import HybridModel, TabularConfig
from vigil.models.serving import HybridScorer, ModelError
from vigil.streams.features.library import FEATURE_SPEC

PARITY_TOLERANCE = 1e-5


def export(model: HybridModel, out_dir: Path, check: np.ndarray, extra: dict | None = None) -> Path:
    """Write the model as two ONNX graphs (LightGBM through onnxmltools, the hybrid NN
    through torch.onnx), the LightGBM text model (for per-alert feature contributions) and
    a manifest. Before anything is written, ONNX Runtime must reproduce the Python model on
    the ``check`` rows within ``PARITY_TOLERANCE``. Returns the model's directory
    (``out_dir/<version>``)."""
    from vigil.models.serving import write_model

    n = len(FEATURE_SPEC.names)
    gbdt = gbdt_to_onnx(model.booster, n)
    hybrid = net_to_onnx(model.hybrid, n)
    state = io.BytesIO()
    torch.save(model.hybrid.state_dict(), state)  # quantized exports (vigil export) start here
    files = {
        "gbdt.onnx": gbdt,
        "hybrid.onnx": hybrid,
        "booster.txt": model.booster.model_to_string().encode(),
        "hybrid.pt": state.getvalue(),
    }
    scorer = HybridScorer.from_bytes(files, "parity-check")
    want = model.predict(check)
    got = scorer.score_batch(check)
    worst = float(np.max(np.abs(got - want))) if len(check) else 0.0
    if not worst <= PARITY_TOLERANCE:
        raise ModelError(
            f"ONNX export differs from the Python model by {worst:.2e} on the check rows"
        )
    manifest = {
        "name": "risk",
        "format": HybridScorer.FORMAT,
        "feature_spec": FEATURE_SPEC.label,
        "parity_max_abs_diff": worst,
        "parity_rows": len(check),
        "config": asdict(model.config),
        **(extra or {}),
    }
    return write_model(out_dir, files, manifest)


def gbdt_to_onnx(booster: lgb.Booster, n: int) -> bytes:
    """The LightGBM graph: input ``features`` (n), output ``margins`` (rows x 2, column 1
    the raw margin, column 0 its negative). The same booster gives the same bytes in every
    process.

    Raw margins, not probabilities: ONNX Runtime's float sigmoid takes ``1 - v`` for a
    negative margin, which leaves a probability of 1e-3 only four significant digits (and
    one of 1e-8 none), and the hybrid needs the margin back. Summed in float32 the margin
    is within a few 1e-6 of LightGBM's double one."""
    import onnxmltools
    from onnxmltools.convert.common.data_types import FloatTensorType

    from vigil.models.serving import GBDT_OUTPUT

    graph = onnxmltools.convert_lightgbm(
        booster, initial_types=[("features", FloatTensorType([None, n]))], zipmap=False
    )
    graph.graph.name = "risk_gbdt"  # the converter names it with a random uuid
    (trees,) = (node for node in graph.graph.node if node.op_type == "TreeEnsembleClassifier")
    (post,) = (a for a in trees.attribute if a.name == "post_transform")
    post.s = b"NONE"
    for node in graph.graph.node:
        node.output[:] = [GBDT_OUTPUT if o == "probabilities" else o for o in node.output]
    for value in graph.graph.output:
        if value.name == "probabilities":
            value.name = GBDT_OUTPUT
    # and lists the opsets in set order, which changes with the process's string hashing
    opsets = sorted(graph.opset_import, key=lambda o: o.domain)
    del graph.opset_import[:]
    graph.opset_import.extend(opsets)
    return graph.SerializeToString()


def net_to_onnx(net: TabularNet, n: int) -> bytes:
    """The hybrid NN graph: inputs ``features`` (n) and ``gbdt_logit``, output
    ``probability``."""
    from vigil.models.onnx_export import torch_to_onnx

    example = (torch.zeros(2, n), torch.zeros(2))
    return torch_to_onnx(net, example, ["features", "gbdt_logit"], ["probability"], "rows")


def fit_and_export(
    history: History,
    holdout_days: float,
    cfg: TabularConfig,
    target: Path,
    say: Progress = print,
    extra: dict | None = None,
) -> tuple[Path, dict, History]:
    """What ``vigil train risk`` does: split in time, train, evaluate and export under
    ``target`` (``extra``: more manifest entries). Returns the model directory, the
    evaluation (plain data) and the held-out set; a :class:`DataError` when the held-out
    days cannot be evaluated on."""
    model, report, test_set = fit_and_evaluate(history, holdout_days, cfg, say)
    path = export(
        model,
        target,
        test_set.features[:2048],
        {
            "metrics": report,
            "train_rows": len(history) - len(test_set),
            "holdout_days": holdout_days,
            **(extra or {}),
        },
    )
    report["model"] = str(path)
    report["version"] = path.name
    return path, report, test_set
