"""Training the hybrid: LightGBM, the NN (on one process or data-parallel on the training
engine), and their stack fitted on the last part of the training period (or, as
``TabularConfig.hybrid = "residual"``, an NN correction on out-of-fold GBDT logits, then
Platt calibration)."""

from __future__ import annotations

import copy
from dataclasses import dataclass
from pathlib import Path

import lightgbm as lgb
import numpy as np
import torch
from torch import nn

from vigil.errors import DataError, UsageError
from vigil.models.engine.trainer import Task, bce_loss
from vigil.models.metrics import (
    average_precision,
)
from vigil.models.risk.data import History, NetData, Progress
from vigil.models.risk.net import HybridLogit, TabularNet, net_logits, normaliser
from vigil.models.serving import ModelError
from vigil.models.threads import torch_threads
from vigil.streams.features.library import FEATURE_SPEC, recent_layout

# How long the pipeline has seen an account, not how it behaves: on a history (or in a
# deployment) that starts at one point, every account's value grows with the clock, so the
# later days a model is evaluated (or served) on lie wholly outside the range it trained on
# (21-day history: 0-14 days of age in training, 15-21 held out). Trees split on them as
# time stamps: one seed's LightGBM put 19 benign transactions above most frauds (AUC-PR
# 0.91; 0.97 without them). The features stay in the spec (rules and reasons use them).
HISTORY_LENGTH_FEATURES = ("account_age_days", "hist_count")


HYBRIDS = ("stack", "residual")


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
    # How the hybrid joins the two: "stack" (the default): z = a * gbdt_logit + b *
    # nn_logit + c, the NN-only model's logit beside the GBDT's, a, b, c fitted on the
    # calibration block (a logistic regression, so calibrated as it is fitted); "residual":
    # z = w * gbdt_logit + mlp(features), an NN of its own learning a correction to
    # out-of-fold GBDT logits, then Platt-scaled. On the Fraud Detection Handbook (ch5) the
    # residual's correction never beat the GBDT on the calibration block (every fold kept
    # epoch 0: the hybrid was LightGBM), while the stacked one led LightGBM in AP by 0.0114
    # (95 % interval 0.0086..0.0152), its NN reading what the trees do not (the sequence)
    hybrid: str = "stack"
    folds: int = 4  # time blocks for the out-of-fold GBDT logits (residual hybrid)
    # last part of the training period: fits the stack (and the Platt scalings), picks epochs
    calibration_share: float = 0.2
    hidden: int = 64
    # The NNs read the account's last events (the Recent features) as a sequence, through
    # a step network of this width (TabularNet); 0: as plain columns
    sequence_hidden: int = 16
    # Whether LightGBM learns from the Recent features too (by default they are the NN's
    # own view: the trees split on every other feature)
    trees_see_recent: bool = False
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


def gbdt_keep_mask(cfg: TabularConfig) -> np.ndarray:
    """``keep_mask`` less the ``Recent`` features unless ``cfg.trees_see_recent``."""
    keep = keep_mask(cfg)
    if not cfg.trees_see_recent:
        keep[np.asarray(recent_layout(FEATURE_SPEC.names), dtype=np.int64).reshape(-1)] = 0.0
    return keep


def sequence_layout(cfg: TabularConfig) -> tuple[tuple[int, ...], ...]:
    """What ``TabularNet`` reads as a sequence under ``cfg`` (nothing when
    ``cfg.sequence_hidden`` is 0)."""
    return recent_layout(FEATURE_SPEC.names) if cfg.sequence_hidden else ()


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
    """Fit ``sigmoid(a z + b)`` to the labels (``_logistic`` on one score)."""
    a, b = _logistic(np.asarray(z, dtype=float).reshape(-1, 1), y, steps)
    return float(a), float(b)


def _logistic(z: np.ndarray, y: np.ndarray, steps: int = 500) -> np.ndarray:
    """Fit ``sigmoid(z @ w[:-1] + w[-1])`` to the labels (``z``: rows x scores) by Newton's
    method on the log-loss, with Platt's own targets ((n+ + 1) / (n+ + 2) for positives,
    1 / (n- + 2) for negatives): on a block the scores separate perfectly, plain 0/1
    targets have no finite optimum (one fit went to a = 2.6e5, b = -3.5e8, which reversed
    the ranking on new data). Starts from the first score as it is (weight 1)."""
    x = np.c_[np.asarray(z, dtype=float), np.ones(len(z))]
    y = np.asarray(y, dtype=float)
    positives = y.sum()
    y = np.where(y > 0, (positives + 1) / (positives + 2), 1 / (len(y) - positives + 2))
    w = np.zeros(x.shape[1])
    w[0] = 1.0

    def loss(w: np.ndarray) -> float:
        t = x @ w  # log(1 + e^-t) for y, log(1 + e^t) for 1 - y, without overflow
        return float(np.sum(y * np.logaddexp(0, -t) + (1 - y) * np.logaddexp(0, t)))

    current = loss(w)
    for _ in range(steps):
        p = 1 / (1 + np.exp(-np.clip(x @ w, -50, 50)))
        g = x.T @ (p - y)
        h = (x * (p * (1 - p) + 1e-9)[:, None]).T @ x
        step = np.linalg.solve(h + 1e-6 * np.eye(len(w)), g)
        scale = 1.0  # a Newton step may overshoot where the scores separate: halve it
        while scale > 1e-6 and loss(w - scale * step) > current:
            scale /= 2
        w = w - scale * step
        before, current = current, loss(w)
        if np.abs(scale * step).max() < 1e-10 or before - current < 1e-12:
            break
    return w


def _stack(
    hybrid: TabularNet, nn_only: TabularNet, xc: np.ndarray, gc: np.ndarray, yc: np.ndarray
) -> None:
    """Make ``hybrid`` ``a * gbdt_logit + b * nn_logit + c``: the NN-only model's layers,
    its output layer scaled by ``b`` and shifted by ``c``, the GBDT's weight ``a``, with
    ``a, b, c`` fitted on the calibration block (calibrated by construction). On that block
    it fits at least as well as the GBDT alone (Platt's a and b = 0 is one choice)."""
    a, b, c = _logistic(np.c_[gc, net_logits(nn_only, xc, None)], yc)
    state = {k: v for k, v in nn_only.state_dict().items() if k != "calibration"}
    hybrid.load_state_dict({**hybrid.state_dict(), **state})
    with torch.no_grad():
        hybrid.out.weight.copy_(nn_only.out.weight * b)
        hybrid.out.bias.copy_(nn_only.out.bias * b + c)
        hybrid.gbdt_weight.fill_(a)
    hybrid.eval()


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
        return average_precision(held[1], net_logits(net, held[0], held[2]))

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
                "sequence": sequence_layout(cfg),
                "sequence_hidden": cfg.sequence_hidden,
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


def _gbdt_logit(booster: lgb.Booster, x: np.ndarray) -> np.ndarray:
    """The GBDT's raw margin in float32, as the exported graph hands it on."""
    return np.asarray(booster.predict(x, raw_score=True), dtype=np.float32)


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
    if cfg.hybrid not in HYBRIDS:
        raise UsageError(f"hybrid {cfg.hybrid!r}: one of {', '.join(HYBRIDS)}")
    tree_keep = gbdt_keep_mask(cfg)
    say(f"GBDT: {cfg.trees} trees x {cfg.leaves} leaves on {n_fit} rows")
    booster = _fit_gbdt(xf, yf, cfg, tree_keep)
    mean, std = normaliser(xf)
    net_args = (keep, sequence_layout(cfg), cfg.sequence_hidden)

    gc = _gbdt_logit(booster, xc)
    fit = _fit_net if cfg.nproc == 1 else _fit_net_engine
    say(f"NN: up to {cfg.epochs} epochs")
    nn_only = TabularNet(mean, std, cfg.hidden, False, *net_args)
    fit(nn_only, (xf, yf, None), (xc, yc, None), cfg, say)
    nn_only.calibration.copy_(torch.tensor(_platt(net_logits(nn_only, xc, None), yc)))
    hybrid = TabularNet(mean, std, cfg.hidden, True, *net_args)
    if cfg.hybrid == "stack":
        say(f"hybrid: the GBDT and the NN stacked on the last {len(yc)} training rows")
        _stack(hybrid, nn_only, xc, gc, yc)
    else:
        oof = _oof_gbdt_logits(xf, yf, cfg, tree_keep, say)
        say(f"residual hybrid NN: up to {cfg.epochs} epochs")
        fit(hybrid, (xf, yf, oof), (xc, yc, gc), cfg, say)
        say(f"Platt calibration on the last {len(yc)} training rows")
        hybrid.calibration.copy_(torch.tensor(_platt(net_logits(hybrid, xc, gc), yc)))
    gbdt_cal = _platt(booster.predict(xc, raw_score=True), yc)
    return HybridModel(booster, hybrid, nn_only, gbdt_cal, cfg)


def _oof_gbdt_logits(
    xf: np.ndarray, yf: np.ndarray, cfg: TabularConfig, tree_keep: np.ndarray, say: Progress
) -> np.ndarray:
    """Each time block's GBDT logits from trees fitted on the other blocks."""
    say(f"out-of-fold GBDT logits over {cfg.folds} time blocks of {len(yf)} rows")
    oof = np.zeros(len(yf))
    for k, block in enumerate(np.array_split(np.arange(len(yf)), cfg.folds)):
        rest = np.setdiff1d(np.arange(len(yf)), block)
        booster = _fit_gbdt(xf[rest], yf[rest], cfg, tree_keep)
        oof[block] = booster.predict(xf[block], raw_score=True)
        say(f"  block {k + 1}/{cfg.folds} done")
    return oof


def finetune_net(
    net: TabularNet, data: NetData, held: NetData, cfg: TabularConfig, say: Progress = print
) -> None:
    """``cfg.epochs`` more epochs on ``net`` as it is (the quantization-aware fine-tuning
    of a fake-quantized NN), keeping the best on ``held``."""
    with torch_threads():
        _fit_net(net, data, held, cfg, say)


def _net_average_precision(logits: torch.Tensor, y: torch.Tensor) -> float:
    return average_precision(y.numpy(), logits.squeeze(-1).double().numpy())


def risk_net_task(path: str) -> Task:
    """The hybrid's NN (or the NN-only baseline) as ``train`` fits it, from
    the tensors it saved: features (+ out-of-fold GBDT logit), labels, the selection block."""
    d = torch.load(path, weights_only=False)
    return Task(
        "risk-hybrid-nn" if d["use_gbdt"] else "risk-nn",
        lambda: HybridLogit(
            d["mean"],
            d["std"],
            d["hidden"],
            d["use_gbdt"],
            d["keep"],
            d["sequence"],
            d["sequence_hidden"],
        ),
        d["x"],
        d["y"],
        d["x_val"],
        d["y_val"],
        bce_loss,
        _net_average_precision,
        "auc_pr",
    )
