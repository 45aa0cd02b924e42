"""The GBDT+NN hybrid risk model on the feature vector (``FEATURE_SPEC``).

- LightGBM learns the feature interactions trees are good at.
- A small torch NN takes the normalised features (signed log, standardised, with missing
  flags) plus the GBDT's logit, and adds what the trees miss: ``z = w * gbdt_logit +
  mlp(features)``. Its last layer starts at zero and ``w`` at one, so training starts from
  the GBDT and learns a correction. The logit it sees while training is out-of-fold (each
  time block scored by trees fitted on the other blocks), so it learns how far to trust
  the GBDT on unseen data rather than on the GBDT's own training rows.
- Platt scaling on the last part of the training period turns the logit into a calibrated
  probability.

Training data: the labelled synthetic history (or a JSONL history with labels) run through
the same pipeline as the worker, so the features are exactly what serving sees. Split in
time: train on the earlier days, evaluate on the later ones."""

from vigil.models.risk.data import (
    WARMUP_DAYS,
    History,
    NetData,
    Progress,
    featurise,
    history_from_files,
    history_from_generator,
    temporal_split,
)
from vigil.models.risk.evaluation import evaluate, fit_and_evaluate
from vigil.models.risk.exporting import (
    PARITY_TOLERANCE,
    export,
    fit_and_export,
    gbdt_to_onnx,
    net_to_onnx,
)
from vigil.models.risk.net import HybridLogit, TabularNet, net_logits, normaliser
from vigil.models.risk.training import (
    HISTORY_LENGTH_FEATURES,
    HybridModel,
    TabularConfig,
    finetune_net,
    float32_thresholds,
    keep_mask,
    risk_net_task,
    train,
)

__all__ = [
    "HISTORY_LENGTH_FEATURES",
    "WARMUP_DAYS",
    "History",
    "HybridLogit",
    "HybridModel",
    "NetData",
    "PARITY_TOLERANCE",
    "Progress",
    "TabularConfig",
    "TabularNet",
    "evaluate",
    "export",
    "featurise",
    "finetune_net",
    "fit_and_evaluate",
    "fit_and_export",
    "float32_thresholds",
    "gbdt_to_onnx",
    "history_from_files",
    "history_from_generator",
    "keep_mask",
    "net_logits",
    "net_to_onnx",
    "normaliser",
    "risk_net_task",
    "temporal_split",
    "train",
]
