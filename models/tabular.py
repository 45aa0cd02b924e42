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
time: train on the earlier days, evaluate on the later ones.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import orjson
import torch
from torch import nn

from vigil.errors import DataError, UsageError
from vigil.models.engine.trainer import Task, bce_loss
from vigil.models.metrics import (
    ap_difference,
    average_precision,
    calibration,
    flagged_share,
    recall_at_rate,
)
from vigil.models.serving import HybridScorer, ModelError
from vigil.models.threads import torch_threads
from vigil.streams.features.library import DAY_MS, FEATURE_SPEC, HOUR_MS

__all__ = [
    "fit_and_export",
    "History",
    "HybridModel",
    "TabularConfig",
    "TabularNet",
    "evaluate",
    "export",
    "featurise",
    "finetune_net",
    "fit_and_evaluate",
    "float32_thresholds",
    "gbdt_to_onnx",
    "history_from_files",
    "history_from_generator",
    "net_to_onnx",
    "temporal_split",
    "train",
]

Progress = Callable[[str], None]
NetData = tuple[np.ndarray, np.ndarray, np.ndarray | None]  # features, labels, GBDT logit


@dataclass
class History:
    """Featurised, labelled transactions in arrival order."""

    features: np.ndarray  # float32, rows x FEATURE_SPEC.names, NaN = no value
    labels: np.ndarray  # 0/1
    ts_ms: np.ndarray
    rule_scores: np.ndarray  # the rules-only score the worker gave each transaction
    typologies: list[str | None]
    tx_ids: list[str]

    def __len__(self) -> int:
        return len(self.labels)

    def take(self, mask: np.ndarray) -> History:
        idx = np.flatnonzero(mask)
        return History(
            self.features[idx],
            self.labels[idx],
            self.ts_ms[idx],
            self.rule_scores[idx],
            [self.typologies[i] for i in idx],
            [self.tx_ids[i] for i in idx],
        )


def featurise(
    lines: Iterable[bytes], truth: dict[str, tuple[int, str | None]], batch: int = 100
) -> History:
    """Run raw transaction JSON through the risk pipeline (rules-only) and keep the feature
    vector, the rules' score and the label of every labelled, valid transaction."""
    from vigil.streams.pipeline import RiskPipeline
    from vigil.streams.schemas import record_batches

    pipeline = RiskPipeline()
    store: dict = {}
    rows, labels, ts, rule, typ, ids = [], [], [], [], [], []
    for records in record_batches(lines, "history", batch):
        result = pipeline.process_local(records, store)
        for _key, value in result.scores:
            s = orjson.loads(value)
            known = truth.get(s["tx_id"])
            if known is None:
                continue
            rows.append([math.nan if v is None else v for v in s["features"]])
            labels.append(known[0])
            typ.append(known[1])
            ts.append(s["ts_ms"])
            rule.append(s["score"])
            ids.append(s["tx_id"])
    return History(
        np.array(rows, dtype=np.float32).reshape(-1, len(FEATURE_SPEC.names)),
        np.array(labels, dtype=np.int8),
        np.array(ts, dtype=np.int64),
        np.array(rule, dtype=float),
        typ,
        ids,
    )


def history_from_generator(
    days: int,
    seed: int = 7,
    accounts: int = 1000,
    typology_rate: float = 0.004,
    flow_typology_rate: float = 0.002,
) -> History:
    """``days`` of the seeded synthetic population with its injected, labelled cases."""
    from vigil.streams.sources import GeneratorConfig, TransactionGenerator

    cfg = GeneratorConfig(
        seed=seed,
        accounts=accounts,
        typology_rate=typology_rate,
        flow_typology_rate=flow_typology_rate,
    )
    end_ms = cfg.start_ms + days * DAY_MS
    truth: dict[str, tuple[int, str | None]] = {}
    lines = []
    for g in TransactionGenerator(cfg):
        if g.tx is None:
            continue
        if g.tx["ts_ms"] >= end_ms:
            break
        truth[g.tx["tx_id"]] = (g.label, g.typology)
        lines.append(g.value)
    return featurise(lines, truth)


def history_from_files(tx_path: str, labels_path: str) -> History:
    """A JSONL history (contract transactions) and its labels (``vigil.labels`` records)."""
    from vigil.streams.sources import read_jsonl, read_labels

    truth = read_labels(labels_path)
    return featurise((line for _k, line in read_jsonl(tx_path)), truth)


def temporal_split(history: History, holdout_days: float) -> tuple[History, History]:
    """Train on everything before the last ``holdout_days`` (by event time), test on those."""
    cut = history.ts_ms.max() - holdout_days * DAY_MS
    return history.take(history.ts_ms <= cut), history.take(history.ts_ms > cut)


# How long the pipeline has seen an account, not how it behaves: on a history (or in a
# deployment) that starts at one point, every account's value grows with the clock, so the
# later days a model is evaluated (or served) on lie wholly outside the range it trained on
# (21-day history: 0-14 days of age in training, 15-21 held out). Trees split on them as
# time stamps: one seed's LightGBM put 19 benign transactions above most frauds (AUC-PR
# 0.91; 0.97 without them). The features stay in the spec (rules and reasons use them).
HISTORY_LENGTH_FEATURES = ("account_age_days", "hist_count")


@dataclass(frozen=True)
class TabularConfig:
    seed: int = 7
    # Features the models do not learn from (see HISTORY_LENGTH_FEATURES)
    ignored: tuple[str, ...] = HISTORY_LENGTH_FEATURES
    # 100 x 15 ranks as well as 200 x 31 on the synthetic history (AUC-PR 0.9767 vs 0.9768)
    # and explains an alert (TreeSHAP, pred_contrib) 3.7x faster: 0.22 ms per alert row
    trees: int = 100
    leaves: int = 15
    learning_rate: float = 0.05
    # LightGBM's min_sum_hessian_in_leaf. At its default (1e-3) a leaf of a few near-certain
    # rows (hessian p(1-p) ~ 0) is allowed; one history's booster put benign transactions
    # above most frauds through such leaves (seed 12: AUC-PR 0.9659; 0.9802 at 1.0). Over
    # 10 histories (`vigil bench hybrid`) LightGBM's mean went from 0.9805 to 0.9820, none
    # worse by more than 0.0003.
    min_leaf_hessian: float = 1.0
    folds: int = 4  # time blocks for the out-of-fold GBDT logits
    calibration_share: float = 0.2  # last part of the training period, for Platt scaling
    hidden: int = 64
    epochs: int = 20
    batch: int = 256
    lr: float = 1e-3
    # Adam's L2 on the NNs. At 1e-5 the hybrid's correction overfit within a few epochs
    # (held-out AUC-PR 0.007 below the GBDT's over epochs 5-20, averaged over 10 histories;
    # the epoch choice hid it); at 1e-3 it stays level, and the NN-only baseline gains
    # (mean 0.9696 -> 0.9737). At 3e-3 the correction stays at zero.
    weight_decay: float = 1e-3
    # > 1: fit the NNs data-parallel on the training engine (models.engine), this many ranks
    # over `nodes` emulated nodes; the global batch stays `batch`
    nproc: int = 1
    nodes: int = 1


class TabularNet(nn.Module):
    """``logit = w * gbdt_logit + mlp(normalised features, missing flags)`` (no GBDT input
    when ``use_gbdt`` is False: the NN-only baseline). Calibrated probability:
    ``sigmoid(a * logit + b)``."""

    def __init__(
        self,
        mean: np.ndarray,
        std: np.ndarray,
        hidden: int,
        use_gbdt: bool,
        keep: np.ndarray | None = None,
    ) -> None:
        super().__init__()
        n = len(mean)
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32))
        # 1 per feature the net learns from, 0 per ignored one (TabularConfig.ignored)
        keep = np.ones(n) if keep is None else keep
        self.register_buffer("keep", torch.tensor(keep, dtype=torch.float32))
        self.mlp = nn.Sequential(
            nn.Linear(2 * n, hidden), nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU()
        )
        self.out = nn.Linear(hidden, 1)
        self.use_gbdt = use_gbdt
        if use_gbdt:
            nn.init.zeros_(self.out.weight)
            nn.init.zeros_(self.out.bias)
            self.gbdt_weight = nn.Parameter(torch.ones(()))
        self.register_buffer("calibration", torch.tensor([1.0, 0.0]))  # a, b

    def logit(self, x: torch.Tensor, gbdt_logit: torch.Tensor | None = None) -> torch.Tensor:
        missing = torch.isnan(x)
        v = torch.where(missing, torch.zeros_like(x), x)
        v = torch.sign(v) * torch.log1p(torch.abs(v))
        # a missing value sits at the mean (0) and its flag says it is missing: as a raw 0
        # it was (0 - mean) / std, many spreads out for the time features (log ms), where
        # the net extrapolated from the pipeline's warm-up rows
        v = torch.where(missing, torch.zeros_like(v), (v - self.mean) / self.std) * self.keep
        flags = missing.to(x.dtype) * self.keep
        z = self.out(self.mlp(torch.cat([v, flags], dim=1))).squeeze(1)
        if self.use_gbdt:
            z = z + self.gbdt_weight * gbdt_logit
        return z

    def forward(self, x: torch.Tensor, gbdt_logit: torch.Tensor | None = None) -> torch.Tensor:
        """Calibrated probability; the GBDT enters as its raw margin (what the exported
        LightGBM graph outputs)."""
        a, b = self.calibration[0], self.calibration[1]
        return torch.sigmoid(a * self.logit(x, gbdt_logit if self.use_gbdt else None) + b)


@dataclass
class HybridModel:
    """The served model (booster + hybrid NN) and the baselines it is compared with."""

    booster: lgb.Booster
    hybrid: TabularNet
    nn_only: TabularNet
    gbdt_calibration: tuple[float, float]
    config: TabularConfig

    def predict(self, x: np.ndarray) -> np.ndarray:
        """Hybrid probability per row (float32 features, NaN = missing)."""
        with torch.no_grad():
            xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
            return self.hybrid(xt, torch.from_numpy(_gbdt_logit(self.booster, x))).numpy()


def _calibrated(z: np.ndarray, a: float, b: float) -> np.ndarray:
    """``sigmoid(a z + b)`` in float64 (no saturation at the confident end)."""
    return 1 / (1 + np.exp(-np.clip(a * z + b, -500, 500)))


def _net_prob(net: TabularNet, z: np.ndarray) -> np.ndarray:
    a, b = (float(v) for v in net.calibration)
    return _calibrated(z, a, b)


def _lgb_params(cfg: TabularConfig) -> dict:
    return {
        "objective": "binary",
        "num_leaves": cfg.leaves,
        "learning_rate": cfg.learning_rate,
        "min_data_in_leaf": 20,
        "min_sum_hessian_in_leaf": cfg.min_leaf_hessian,
        "feature_fraction": 0.8,
        "bagging_fraction": 0.8,
        "bagging_freq": 1,
        "seed": cfg.seed,
        "deterministic": True,
        "force_row_wise": True,
        "num_threads": 1,
        "verbosity": -1,
    }


def keep_mask(cfg: TabularConfig) -> np.ndarray:
    """1 per feature of the spec the models learn from, 0 per ``cfg.ignored`` one."""
    unknown = set(cfg.ignored) - set(FEATURE_SPEC.names)
    if unknown:
        raise UsageError(f"ignored features not in the feature spec: {sorted(unknown)}")
    return np.array([0.0 if n in cfg.ignored else 1.0 for n in FEATURE_SPEC.names])


def _fit_gbdt(x: np.ndarray, y: np.ndarray, cfg: TabularConfig, keep: np.ndarray) -> lgb.Booster:
    # an ignored feature is constant in training, so no tree splits on it: the booster
    # takes the full feature vector and never looks at those columns
    x = np.where(keep == 0, np.float32(0), x)
    booster = lgb.train(_lgb_params(cfg), lgb.Dataset(x, y, free_raw_data=False), cfg.trees)
    return float32_thresholds(booster)


def float32_thresholds(booster: lgb.Booster) -> lgb.Booster:
    """The booster with every split threshold lowered to the largest float32 at or below it.

    LightGBM splits ``x <= t`` on a double ``t`` (often a midpoint between two float32
    values); ONNX's tree ensemble holds ``t`` as the nearest float32, which can round up onto
    the next value: that value then takes the other branch in the exported graph (one
    trained booster put a row 2.8e-5 apart). For a float32 ``x`` (every feature vector is
    one), ``x <= t`` holds exactly when ``x <= floor32(t)``, so the booster predicts the
    same on all of them, and the export holds its thresholds exactly. Numerical splits only
    (a categorical split's threshold is an index): the feature vector has no categories.
    """
    text = booster.model_to_string()
    if "cat_boundaries=" in text:
        raise ModelError("float32_thresholds: the booster has categorical splits")
    # without the header's tree byte sizes, which the new numbers' lengths would break,
    # LightGBM reads the trees one after the other
    lines = [line for line in text.split("\n") if not line.startswith("tree_sizes=")]
    for i, line in enumerate(lines):
        if line.startswith("threshold="):
            t = np.array(line[len("threshold=") :].split(), dtype=np.float64)
            down = t.astype(np.float32)
            up = down.astype(np.float64) > t
            down[up] = np.nextafter(down[up], np.float32(-np.inf))
            lines[i] = "threshold=" + " ".join(repr(float(v)) for v in down)
    return lgb.Booster(model_str="\n".join(lines))


def _platt(z: np.ndarray, y: np.ndarray, steps: int = 500) -> tuple[float, float]:
    """Fit ``sigmoid(a z + b)`` to the labels by Newton's method on the log-loss."""
    a, b = 1.0, 0.0
    z = np.asarray(z, dtype=float)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(a * z + b, -50, 50)))
        w = p * (1 - p) + 1e-9
        g = np.array([np.sum((p - y) * z), np.sum(p - y)])
        h = np.array([[np.sum(w * z * z), np.sum(w * z)], [np.sum(w * z), np.sum(w)]])
        step = np.linalg.solve(h + 1e-6 * np.eye(2), g)
        a, b = a - step[0], b - step[1]
        if np.abs(step).max() < 1e-10:
            break
    return float(a), float(b)


def _fit_net(
    net: TabularNet,
    data: NetData,
    held: NetData,
    cfg: TabularConfig,
    say: Progress,
) -> None:
    """Adam on the log-loss; keeps the epoch with the best AUC-PR on the held-out later
    block (``held``), which for the hybrid includes the start: the GBDT alone."""
    gen = torch.Generator().manual_seed(cfg.seed)
    x, y, g = (None if a is None else torch.from_numpy(np.asarray(a, np.float32)) for a in data)
    opt = torch.optim.Adam(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
    loss_fn = nn.BCEWithLogitsLoss()

    def held_ap() -> float:
        net.eval()
        return average_precision(held[1], _logits(net, held[0], held[2]))

    best, best_state, best_epoch = held_ap(), copy.deepcopy(net.state_dict()), 0
    for epoch in range(1, cfg.epochs + 1):
        net.train()
        order = torch.randperm(len(y), generator=gen)
        for i in range(0, len(order), cfg.batch):
            idx = order[i : i + cfg.batch]
            loss = loss_fn(net.logit(x[idx], None if g is None else g[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        score = held_ap()
        if score > best:
            best, best_state, best_epoch = score, copy.deepcopy(net.state_dict()), epoch
    net.load_state_dict(best_state)
    net.eval()
    say(f"  kept epoch {best_epoch} of {cfg.epochs} (held-out AUC-PR {best:.4f})")


def _fit_net_engine(
    net: TabularNet,
    data: NetData,
    held: NetData,
    cfg: TabularConfig,
    say: Progress,
) -> None:
    """``_fit_net`` on the training engine: ``cfg.nproc`` ranks under DDP with the
    hierarchical AllReduce, restarted if one dies; Adam on the same global batch size, and
    the parameters with the best held-out AUC-PR (checked every epoch and before training)
    kept."""
    import functools
    import tempfile

    from vigil.models.engine import supervise
    from vigil.models.engine.run import job
    from vigil.models.engine.trainer import TrainConfig

    def stack(x: np.ndarray, g: np.ndarray | None) -> torch.Tensor:
        return torch.from_numpy(np.asarray(x if g is None else np.c_[x, g], dtype=np.float32))

    per_epoch = max(1, len(data[1]) // cfg.batch)
    train_cfg = TrainConfig(
        steps=cfg.epochs * per_epoch,
        batch_per_rank=max(1, cfg.batch // cfg.nproc),
        optimizer="adam",
        lr=cfg.lr,
        weight_decay=cfg.weight_decay,
        seed=cfg.seed,
        checkpoint_every=0,
        precision="fp32",
        select_every=per_epoch,
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.pt"
        torch.save(
            {
                "x": stack(data[0], data[2]),
                "y": torch.from_numpy(np.asarray(data[1], dtype=np.float32)),
                "x_val": stack(held[0], held[2]),
                "y_val": torch.from_numpy(np.asarray(held[1], dtype=np.float32)),
                "mean": net.mean.numpy(),
                "std": net.std.numpy(),
                "keep": net.keep.numpy(),
                "hidden": cfg.hidden,
                "use_gbdt": net.use_gbdt,
            },
            path,
        )
        say(f"  on the engine: {cfg.nproc} ranks, {cfg.nodes} node(s), {train_cfg.steps} steps")
        result = supervise(
            job,
            cfg.nproc,
            cfg.nodes,
            (functools.partial(risk_net_task, str(path)), train_cfg, None),
            max_restarts=2,
        )[0]
    net.load_state_dict({k.removeprefix("net."): v for k, v in result["state"].items()})
    net.eval()
    say(
        f"  kept step {result['selected_step']} of {train_cfg.steps} "
        f"(held-out AUC-PR {result['selected_auc_pr']:.4f})"
    )


def _logits(net: TabularNet, x: np.ndarray, g: np.ndarray | None) -> np.ndarray:
    with torch.no_grad():
        gt = None if g is None else torch.from_numpy(np.asarray(g, np.float32))
        return net.logit(torch.from_numpy(np.asarray(x, np.float32)), gt).numpy().astype(float)


def _gbdt_logit(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    """The GBDT's raw margin in float32, as the exported graph hands it on."""
    return np.asarray(booster.predict(x, raw_score=True), dtype=np.float32)


def _normaliser(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and spread of the signed-log features over the values present (a column with
    none: 0 and 1). Counting missing values as zeros would put a mostly-missing feature's
    present values (the inflow features: present for a few accounts) many spreads out."""
    v = np.asarray(x, dtype=np.float64)
    v = np.sign(v) * np.log1p(np.abs(v))
    present = ~np.isnan(v)
    count = present.sum(axis=0)
    filled = np.where(present, v, 0.0)
    mean = np.divide(filled.sum(axis=0), count, out=np.zeros(v.shape[1]), where=count > 0)
    var = np.divide(
        (np.where(present, v - mean, 0.0) ** 2).sum(axis=0),
        count,
        out=np.ones(v.shape[1]),
        where=count > 0,
    )
    return mean, np.maximum(np.sqrt(var), 1e-6)


def train(history: History, cfg: TabularConfig | None = None, say: Progress = print) -> HybridModel:
    """Fit the hybrid (and the baselines) on a training period. Deterministic for a seed
    (one torch thread while it runs)."""
    with torch_threads(1):
        return _train(history, cfg or TabularConfig(), say)


def _train(history: History, cfg: TabularConfig, say: Progress) -> HybridModel:
    torch.manual_seed(cfg.seed)
    order = np.argsort(history.ts_ms, kind="stable")
    x, y = history.features[order], history.labels[order].astype(np.float64)
    n_fit = int(len(y) * (1 - cfg.calibration_share))
    xf, yf, xc, yc = x[:n_fit], y[:n_fit], x[n_fit:], y[n_fit:]
    if yf.sum() < 10 or yc.sum() < 3:
        raise DataError(
            f"too few positive labels to train on ({int(yf.sum())} fit, {int(yc.sum())} "
            "calibration): use more days or a higher typology rate"
        )

    keep = keep_mask(cfg)  # refuses an ignored name the spec does not have, before any fit
    say(f"out-of-fold GBDT logits over {cfg.folds} time blocks of {n_fit} rows")
    oof = np.zeros(n_fit)
    blocks = np.array_split(np.arange(n_fit), cfg.folds)
    for k, block in enumerate(blocks):
        rest = np.setdiff1d(np.arange(n_fit), block)
        oof[block] = _fit_gbdt(xf[rest], yf[rest], cfg, keep).predict(xf[block], raw_score=True)
        say(f"  block {k + 1}/{cfg.folds} done")
    say(f"GBDT: {cfg.trees} trees x {cfg.leaves} leaves on {n_fit} rows")
    booster = _fit_gbdt(xf, yf, cfg, keep)
    mean, std = _normaliser(xf)

    say(f"hybrid NN: up to {cfg.epochs} epochs")
    gc = _gbdt_logit(booster, xc)
    fit = _fit_net if cfg.nproc == 1 else _fit_net_engine
    hybrid = TabularNet(mean, std, cfg.hidden, use_gbdt=True, keep=keep)
    fit(hybrid, (xf, yf, oof), (xc, yc, gc), cfg, say)
    say(f"NN-only baseline: up to {cfg.epochs} epochs")
    nn_only = TabularNet(mean, std, cfg.hidden, use_gbdt=False, keep=keep)
    fit(nn_only, (xf, yf, None), (xc, yc, None), cfg, say)

    say(f"Platt calibration on the last {len(yc)} training rows")
    hybrid.calibration.copy_(torch.tensor(_platt(_logits(hybrid, xc, gc), yc)))
    nn_only.calibration.copy_(torch.tensor(_platt(_logits(nn_only, xc, None), yc)))
    gbdt_cal = _platt(booster.predict(xc, raw_score=True), yc)
    return HybridModel(booster, hybrid, nn_only, gbdt_cal, cfg)


def evaluate(model: HybridModel, test: History, rate: float = 0.01, rounds: int = 1000) -> dict:
    """AUC-PR and recall at an alert rate for rules-only, LightGBM-only, NN-only and the
    hybrid on a held-out period; each one's recall per typology at that rate and AUC-PR per
    typology (its positives against all negatives); the calibration of the three
    probability models (``models.metrics.calibration``); and how far the hybrid's AUC-PR is
    ahead of each of the others (paired bootstrap over hours of the held-out period,
    ``rounds`` resamples: ``hybrid_vs``)."""
    # Ranked by float64 probabilities: in float32 the confident end saturates at 1.0, and
    # the ties would blur the ranking AUC-PR measures (decisions are unaffected).
    x = test.features
    scores = {
        "rules_only": test.rule_scores,
        "lightgbm": _calibrated(model.booster.predict(x, raw_score=True), *model.gbdt_calibration),
        "nn": _net_prob(model.nn_only, _logits(model.nn_only, x, None)),
        "hybrid": _net_prob(model.hybrid, _logits(model.hybrid, x, _gbdt_logit(model.booster, x))),
    }
    y = test.labels
    typologies = sorted({t for t, label in zip(test.typologies, y, strict=True) if label and t})
    out: dict = {
        "rows": len(y),
        "positives": int(y.sum()),
        "alert_rate": rate,
        "models": {},
    }
    of_typology = {t: np.array([tt == t for tt in test.typologies]) & (y == 1) for t in typologies}
    for name, s in scores.items():
        share = flagged_share(s, rate)
        per_typology, ap_typology = {}, {}
        for t, mask in of_typology.items():
            per_typology[t] = round(float(share[mask].sum() / mask.sum()), 4)
            # this typology's positives ranked against every negative: what the model can
            # tell of it, whatever the alert budget (at 1 % of rows the top holds only
            # part of the positives, and recall_by_typology shows which ones fill it)
            rows = mask | (y == 0)
            ap_typology[t] = round(average_precision(y[rows], s[rows]), 4)
        out["models"][name] = {
            "auc_pr": round(average_precision(y, s), 4),
            "recall_at_rate": round(recall_at_rate(y, s, rate), 4),
            "recall_by_typology": per_typology,
            "auc_pr_by_typology": ap_typology,
            # the rules' score ranks but is no probability
            "calibration": None if name == "rules_only" else calibration(y, s),
        }
    hours = test.ts_ms // HOUR_MS
    out["hybrid_vs"] = {
        name: ap_difference(y, scores["hybrid"], s, hours, rounds, seed=model.config.seed)
        for name, s in scores.items()
        if name != "hybrid"
    }
    return out


def fit_and_evaluate(
    history: History, holdout_days: float, cfg: TabularConfig, say: Progress = print
) -> tuple[HybridModel, dict, History]:
    """Split ``history`` in time, train on the earlier part and evaluate on the last
    ``holdout_days``: the model, the evaluation and the held-out set. ValueError when the
    held-out days cannot be evaluated on."""
    train_set, test_set = temporal_split(history, holdout_days)
    say(
        f"{len(history)} labelled transactions: train {len(train_set)} "
        f"({int(train_set.labels.sum())} positive), hold-out {len(test_set)} "
        f"({int(test_set.labels.sum())} positive)"
    )
    if not len(test_set) or not test_set.labels.sum():
        raise DataError("the held-out days have no positive label to evaluate on")
    model = train(train_set, cfg, say=say)
    return model, evaluate(model, test_set), test_set


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


def finetune_net(
    net: TabularNet, data: NetData, held: NetData, cfg: TabularConfig, say: Progress = print
) -> None:
    """``cfg.epochs`` more epochs on ``net`` as it is (the quantization-aware fine-tuning
    of a fake-quantized NN), keeping the best on ``held``."""
    with torch_threads():
        _fit_net(net, data, held, cfg, say)


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
    history: History, holdout_days: float, cfg: TabularConfig, target: Path, say: Progress = print
) -> tuple[Path, dict, History]:
    """What ``vigil train risk`` does: split in time, train, evaluate and export under
    ``target``. Returns the model directory, the evaluation (plain data) and the held-out
    set; a :class:`DataError` when the held-out days cannot be evaluated on."""
    model, report, test_set = fit_and_evaluate(history, holdout_days, cfg, say)
    path = export(
        model,
        target,
        test_set.features[:2048],
        {
            "metrics": report,
            "train_rows": len(history) - len(test_set),
            "holdout_days": holdout_days,
        },
    )
    report["model"] = str(path)
    report["version"] = path.name
    return path, report, test_set


class _HybridLogit(nn.Module):
    """``TabularNet`` taking its input as one tensor: the features, then (hybrid) the
    GBDT logit as the last column."""

    def __init__(self, *net_args: object) -> None:  # TabularNet's
        super().__init__()
        self.net = TabularNet(*net_args)  # type: ignore[arg-type]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.net.use_gbdt:
            return self.net.logit(x[:, :-1], x[:, -1]).unsqueeze(-1)
        return self.net.logit(x).unsqueeze(-1)


def _net_average_precision(logits: torch.Tensor, y: torch.Tensor) -> float:
    return average_precision(y.numpy(), logits.squeeze(-1).double().numpy())


def risk_net_task(path: str) -> Task:
    """The hybrid's NN (or the NN-only baseline) as ``train`` fits it, from
    the tensors it saved: features (+ out-of-fold GBDT logit), labels, the selection block."""
    d = torch.load(path, weights_only=False)
    return Task(
        "risk-hybrid-nn" if d["use_gbdt"] else "risk-nn",
        lambda: _HybridLogit(d["mean"], d["std"], d["hidden"], d["use_gbdt"], d.get("keep")),
        d["x"],
        d["y"],
        d["x_val"],
        d["y_val"],
        bce_loss,
        _net_average_precision,
        "auc_pr",
    )
