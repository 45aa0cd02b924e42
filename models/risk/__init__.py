"""The GBDT+NN hybrid risk model on the feature vector (``FEATURE_SPEC``).

- LightGBM learns the feature interactions trees are good at.
- A small torch NN reads the normalised features (signed log, standardised, with missing
  flags) and, through a step network of its own, the account's last 8 events as a
  sequence (the ``Recent`` features, which the trees do not see).
- The hybrid stacks them: ``z = a * gbdt_logit + b * nn_logit + c``, with ``a, b, c`` fitted
  by logistic regression on the last part of the training period (so the probability is
  calibrated as it is fitted), exported as one graph over the features and the GBDT's
  logit. (``TabularConfig.hybrid = "residual"``: an NN learning a correction to out-of-fold
  GBDT logits, then Platt scaling.) LightGBM and the NN alone are Platt-scaled on the same
  block for the comparison.

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
