"""The hybrid risk model: metrics against scikit-learn, deterministic training, ONNX export
parity, and model files that must be refused."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sklearn.metrics import average_precision_score, brier_score_loss
from sklearn.metrics import log_loss as sklearn_log_loss

from vigil.models.kinds import RISK
from vigil.models.metrics import (
    ap_difference,
    average_precision,
    calibration,
    log_loss,
    paired_summary,
    recall_at_rate,
)
from vigil.models.risk import (
    PARITY_TOLERANCE,
    TabularConfig,
    evaluate,
    export,
    float32_thresholds,
    gbdt_to_onnx,
    net_logits,
    train,
)
from vigil.models.serving import (
    HybridScorer,
    ModelError,
    gbdt_margin,
    onnx_session,
    read_manifest,
)
from vigil.streams.features.library import FEATURE_SPEC, recent_layout

SMALL = TabularConfig(seed=3, trees=40, epochs=4, folds=3)


@given(
    st.lists(
        st.tuples(st.integers(0, 1), st.sampled_from([0.0, 0.1, 0.5, 0.5, 0.9, 1.0])), min_size=2
    )
)
@settings(max_examples=200, deadline=None)
def test_average_precision_equals_scikit_learn_with_ties(pairs):
    y = np.array([p[0] for p in pairs])
    s = np.array([p[1] for p in pairs])
    if y.sum() == 0:
        return
    assert average_precision(y, s) == pytest.approx(average_precision_score(y, s), abs=1e-12)


def test_calibration_metrics_equal_scikit_learn():
    rng = np.random.default_rng(4)
    p = rng.beta(0.3, 8, 5000)  # skewed low, like fraud scores
    y = (rng.random(5000) < p).astype(int)  # drawn from p itself: calibrated
    got = calibration(y, p)
    assert got["log_loss"] == pytest.approx(sklearn_log_loss(y, p), abs=1e-5)
    assert got["brier"] == pytest.approx(brier_score_loss(y, p), abs=1e-6)
    assert got["expected_over_actual"] == pytest.approx(p.sum() / y.sum(), abs=1e-4)
    assert 0.9 < got["expected_over_actual"] < 1.1
    # twice the odds: over-alerts, and costs log-loss
    doubled = calibration(y, 2 * p / (1 + p))
    assert doubled["expected_over_actual"] > 1.5 and doubled["log_loss"] > got["log_loss"]
    # a certain, wrong score costs -log(1e-15), not infinity
    assert log_loss(np.array([1]), np.array([0.0])) == pytest.approx(-np.log(1e-15))
    with pytest.raises(ValueError, match="probabilities"):
        calibration(y, p * 20)


def test_recall_at_rate_shares_ties_fairly():
    y = np.array([1, 0, 1, 0, 0, 0, 0, 0, 0, 0])
    s = np.array([0.9, 0.5, 0.5, 0.5, 0.5, 0, 0, 0, 0, 0])
    # top 20 % = 2 rows: the 0.9 (a positive) plus one of four rows tied at 0.5 (one positive)
    assert recall_at_rate(y, s, 0.2) == pytest.approx((1 + 0.25) / 2)


def test_ap_difference_resamples_whole_blocks_of_paired_rows():
    rng = np.random.default_rng(5)
    y = (rng.random(4000) < 0.1).astype(int)
    blocks = np.arange(4000) // 40  # 100 blocks
    noisy = y + rng.normal(0, 0.8, 4000)  # a fair model
    worse = y + rng.normal(0, 1.6, 4000)  # a clearly worse one
    got = ap_difference(y, noisy, worse, blocks, rounds=300)
    assert got["difference"] == pytest.approx(
        average_precision_score(y, noisy) - average_precision_score(y, worse), abs=1e-4
    )
    assert 0 < got["low"] < got["difference"] < got["high"]
    assert got["ahead_share"] == 1.0
    same = ap_difference(y, noisy, noisy, blocks, rounds=50)
    assert same == {"difference": 0.0, "low": 0.0, "high": 0.0, "ahead_share": 0.0}
    # one block holding everything: every resample is the data itself, no spread
    one = ap_difference(y, noisy, worse, np.zeros(4000), rounds=20)
    assert one["low"] == one["high"] == one["difference"]


def test_paired_summary_counts_runs_and_bootstraps_the_mean():
    rng = np.random.default_rng(11)
    d = rng.normal(0.002, 0.01, 400)
    got = paired_summary(list(d), rounds=4000, seed=1)
    assert got["mean"] == pytest.approx(d.mean(), abs=1e-5)
    # the bootstrap interval of a mean of 400 runs is close to the normal one
    half = 1.96 * d.std() / np.sqrt(len(d))
    assert got["low"] == pytest.approx(d.mean() - half, abs=2.5e-4)
    assert got["high"] == pytest.approx(d.mean() + half, abs=2.5e-4)
    counts = paired_summary([0.001, 0.0, -0.0002, 0.0, 0.013])
    assert (counts["wins"], counts["ties"], counts["losses"]) == (2, 2, 1)
    assert counts["mean"] == pytest.approx(0.00276)
    assert counts["low"] <= counts["mean"] <= counts["high"]
    # every run the same: no spread; no run: refused
    assert paired_summary([0.0005] * 3) == {
        "mean": 0.0005,
        "low": 0.0005,
        "high": 0.0005,
        "wins": 3,
        "ties": 0,
        "losses": 0,
    }
    with pytest.raises(ValueError):
        paired_summary([])


@pytest.fixture
def data(small_risk):
    return small_risk.train_set, small_risk.test_set


@pytest.fixture
def model(small_risk):
    return small_risk.model


def test_the_nn_standardises_present_values_and_puts_missing_ones_at_the_mean():
    import torch

    from vigil.models.risk import TabularNet, normaliser

    rng = np.random.default_rng(2)
    x = rng.lognormal(8, 2, (500, 3))
    x[:490, 1] = np.nan  # mostly missing, like the inflow features
    x[:, 2] = np.nan  # never present
    mean, std = normaliser(x)
    signed_log = np.sign(x) * np.log1p(np.abs(x))
    assert mean[:2] == pytest.approx(np.nanmean(signed_log[:, :2], axis=0))
    assert std[:2] == pytest.approx(np.nanstd(signed_log[:, :2], axis=0))
    assert (mean[2], std[2]) == (0.0, 1.0)
    net = TabularNet(mean, std, 4, use_gbdt=False)
    seen = []
    net.mlp.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0]))
    row = np.array([[np.exp(mean[0]) - 1, np.nan, np.nan]], dtype=np.float32)
    net.logit(torch.from_numpy(row))
    # the first feature at its mean standardises to 0; missing ones sit at 0, flagged
    assert seen[0].numpy() == pytest.approx(np.array([[0, 0, 0, 0, 1, 1]]), abs=1e-4)


def test_training_is_deterministic_under_a_seed(data, model):
    again = train(data[0], SMALL, say=lambda _m: None)
    x = data[1].features
    assert np.array_equal(model.predict(x), again.predict(x))
    assert model.booster.model_to_string() == again.booster.model_to_string()


def test_the_evaluation_compares_four_scorers_on_the_held_out_days(data, model):
    report = evaluate(model, data[1])
    assert set(report["models"]) == {"rules_only", "lightgbm", "nn", "hybrid"}
    assert report["positives"] == int(data[1].labels.sum()) > 0
    for m in report["models"].values():
        assert 0 < m["auc_pr"] <= 1 and 0 <= m["recall_at_rate"] <= 1
    # the models learn something the rules' coarse score does not rank
    assert report["models"]["lightgbm"]["auc_pr"] > report["models"]["rules_only"]["auc_pr"]
    models = report["models"]
    assert set(report["hybrid_vs"]) == {"rules_only", "lightgbm", "nn"}
    # the three probability models are calibrated on the last training rows: they expect
    # about as many positives on the held-out days as there are (the rules' score is no
    # probability)
    assert models["rules_only"]["calibration"] is None
    y = data[1].labels
    hybrid_cal = models["hybrid"]["calibration"]
    served = model.predict(data[1].features).astype(np.float64)  # float32, as served
    want = calibration(y, served)
    # float32 served vs float64 ranked: the same but where float32 saturates at 0 or 1,
    # whose log-loss (a wrong 1.0 costs 34.5) float64 does not pay
    assert hybrid_cal["brier"] == pytest.approx(want["brier"], abs=2e-5)
    assert hybrid_cal["expected_over_actual"] == pytest.approx(
        want["expected_over_actual"], abs=2e-4
    )
    if ((served == 0) | (served == 1)).any():
        assert hybrid_cal["log_loss"] <= want["log_loss"] + 1e-4
    else:
        assert hybrid_cal["log_loss"] == pytest.approx(want["log_loss"], abs=2e-5)
    for name in ("lightgbm", "nn", "hybrid"):
        assert 0.7 < models[name]["calibration"]["expected_over_actual"] < 1.3, name
    # AUC-PR per typology: that typology's positives against every negative
    typologies = np.array([t or "" for t in data[1].typologies])
    rules = data[1].rule_scores
    by_typology = models["rules_only"]["auc_pr_by_typology"]
    assert set(by_typology) == set(typologies[y == 1]) and len(by_typology) > 3
    for t, got in by_typology.items():
        rows = (y == 0) | (typologies == t)
        assert got == pytest.approx(average_precision_score(y[rows], rules[rows]), abs=1e-4), t
    for name, vs in report["hybrid_vs"].items():
        gap = models["hybrid"]["auc_pr"] - models[name]["auc_pr"]
        assert vs["difference"] == pytest.approx(gap, abs=2e-4)  # both rounded to 4 places
        assert vs["low"] <= vs["high"] and 0 <= vs["ahead_share"] <= 1


@pytest.fixture
def exported(small_risk):
    return small_risk.path


def test_onnx_export_matches_the_python_model_on_held_out_rows(data, model, exported):
    scorer = HybridScorer.load(exported, FEATURE_SPEC.label)
    x = data[1].features[500:1500]  # rows the export check did not see
    got, want = scorer.score_batch(x), model.predict(x)
    assert got.shape == want.shape == (len(x),)
    assert np.max(np.abs(got - want)) <= PARITY_TOLERANCE
    assert np.isnan(x).any()  # missing values took the same path in both
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["version"] == exported.name == scorer.version
    # the tree graph hands on LightGBM's raw margin, also where a float32 probability
    # would have lost its digits (1 - 0.9999...)
    margin = gbdt_margin(onnx_session((exported / "gbdt.onnx").read_bytes()), x)
    want_margin = model.booster.predict(x, raw_score=True)
    assert (want_margin < -4).mean() > 0.5  # most rows: p < 0.018
    np.testing.assert_allclose(margin, want_margin, rtol=1e-6, atol=1e-5)
    assert manifest["feature_spec"] == FEATURE_SPEC.label


def test_the_history_length_features_move_no_score(data, model, exported):
    # HISTORY_LENGTH_FEATURES: values served later lie outside the training range, so the
    # models must not depend on them at all (the reference: the same rows unchanged)
    x = data[1].features[:1000]
    shifted = x.copy()
    for name in TabularConfig().ignored:
        shifted[:, FEATURE_SPEC.names.index(name)] *= 50  # far past anything in training
    scorer = HybridScorer.load(exported, FEATURE_SPEC.label)
    assert np.array_equal(scorer.score_batch(shifted), scorer.score_batch(x))
    assert np.array_equal(model.booster.predict(shifted), model.booster.predict(x))
    assert np.array_equal(model.predict(shifted), model.predict(x))
    assert set(TabularConfig().ignored) == {"account_age_days", "hist_count"}
    # and a feature the models do use does move scores (the check above can fail)
    moved = x.copy()
    moved[:, FEATURE_SPEC.names.index("sum_1h")] *= 50
    assert not np.array_equal(scorer.score_batch(moved), scorer.score_batch(x))


def test_the_hybrid_stacks_the_two_logits_fitted_on_the_calibration_block(data, model):
    # reference: the same objective (log-loss against Platt's targets) minimised by scipy
    from scipy.optimize import minimize

    history = data[0]
    order = np.argsort(history.ts_ms, kind="stable")
    x, y = history.features[order], history.labels[order].astype(float)
    n_fit = int(len(y) * (1 - SMALL.calibration_share))
    xc, yc = x[n_fit:], y[n_fit:]
    g = model.booster.predict(xc, raw_score=True).astype(np.float32).astype(float)
    z = np.c_[g, net_logits(model.nn_only, xc, None), np.ones(len(g))]
    pos = yc.sum()
    t = np.where(yc > 0, (pos + 1) / (pos + 2), 1 / (len(yc) - pos + 2))

    def loss(w):
        v = z @ w
        return np.sum(t * np.logaddexp(0, -v) + (1 - t) * np.logaddexp(0, v))

    want = minimize(loss, np.zeros(3), method="BFGS", options={"gtol": 1e-8}).x
    got = net_logits(model.hybrid, xc, g.astype(np.float32))
    assert got == pytest.approx(z @ want, abs=2e-3)
    # on that block it fits at least as well as the GBDT alone (Platt-scaled)
    gbdt_only = minimize(lambda w: loss(np.array([w[0], 0.0, w[1]])), np.zeros(2)).fun
    assert loss(want) <= gbdt_only + 1e-6


def test_the_trees_do_not_see_the_recent_events_and_the_nn_does(data, model):
    # the Recent features are the NN's own view (TabularConfig.trees_see_recent is False)
    x = data[1].features[:1000]
    layout = np.array(recent_layout(FEATURE_SPEC.names))
    assert layout.shape == (8, 3)
    assert FEATURE_SPEC.names[layout[0, 0]] == "prev1_hours_ago"
    shuffled = x.copy()
    shuffled[:, layout.reshape(-1)] = x[::-1][:, layout.reshape(-1)]  # another row's events
    assert np.array_equal(model.booster.predict(shuffled), model.booster.predict(x))
    assert not np.array_equal(
        net_logits(model.nn_only, shuffled, None), net_logits(model.nn_only, x, None)
    )


def test_the_nn_reads_the_recent_events_as_a_sequence_of_the_steps_present():
    import torch

    from vigil.models.risk import TabularNet

    rng = np.random.default_rng(5)
    n, layout = 8, np.array([[2, 3], [4, 5], [6, 7]])  # 3 steps of 2 values, latest first
    net = TabularNet(np.zeros(n), np.ones(n), 8, use_gbdt=False, sequence=layout, sequence_hidden=4)
    for p in net.parameters():
        torch.nn.init.normal_(p)
    x = rng.normal(size=(50, n)).astype(np.float32)
    x[:, 6] = np.nan  # the oldest step absent: no time

    def logit(v):
        return net_logits(net, v, None)

    base = logit(x)
    absent = x.copy()
    absent[:, 7] = 1e6  # an absent step's other values do not count
    assert np.array_equal(logit(absent), base)
    present = x.copy()
    present[:, 4] = 9.0  # a present step's do
    assert not np.allclose(logit(present), base)
    # sequence values reach the MLP only through the step network: zeroed, they move nothing
    for p in (*net.step.parameters(), *net.step_out.parameters(), net.position):
        torch.nn.init.zeros_(p)
    assert np.array_equal(logit(present), logit(x))
    # while the other features do
    other = x.copy()
    other[:, 0] += 3.0
    assert not np.allclose(logit(other), logit(x))


def test_ignoring_a_feature_the_spec_does_not_have_is_refused(data):
    with pytest.raises(ValueError, match="not in the feature spec: \\['no_such'\\]"):
        train(data[0], TabularConfig(seed=3, ignored=("no_such",)), say=lambda _m: None)


def test_the_newest_model_is_loaded_and_alerts_can_be_explained(data, exported):
    scorer = RISK.load_latest(exported.parent)
    assert scorer is not None and scorer.version == exported.name
    tops = scorer.explain(data[1].features[:3], FEATURE_SPEC.names)
    assert len(tops) == 3
    for top in tops:
        assert all(name in FEATURE_SPEC.names and w > 0 for name, w in top)
        assert [w for _, w in top] == sorted((w for _, w in top), reverse=True)


def test_a_model_for_another_feature_spec_is_refused(exported, tmp_path):
    copy = tmp_path / exported.name
    shutil.copytree(exported, copy)
    with pytest.raises(ModelError, match=r"trained on feature spec .*this worker computes"):
        HybridScorer.load(copy, "lib-0:0000000000000000")


def test_a_changed_model_file_is_refused(exported, tmp_path):
    copy = tmp_path / exported.name
    shutil.copytree(exported, copy)
    data = bytearray((copy / "hybrid.onnx").read_bytes())
    data[-10] ^= 0xFF
    (copy / "hybrid.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelError, match="sha256 does not match"):
        HybridScorer.load(copy, FEATURE_SPEC.label)
    (copy / "manifest.json").unlink()
    with pytest.raises(ModelError, match="no manifest.json"):
        HybridScorer.load(copy, FEATURE_SPEC.label)


def test_no_model_directory_means_rules_only(tmp_path):
    assert RISK.load_latest(tmp_path / "nothing-here") is None


def test_the_same_training_exports_the_same_files_and_version(data, model, exported, tmp_path):
    # the version is a content hash: a retrained identical model keeps its version
    again = export(model, tmp_path, data[1].features[:500])
    assert again.name == exported.name
    for name in ("gbdt.onnx", "hybrid.onnx", "booster.txt"):
        assert (again / name).read_bytes() == (exported / name).read_bytes(), name


def test_tree_thresholds_between_two_float32_values_export_exactly():
    """LightGBM splits two adjacent float32 values at their midpoint in double, which ONNX's
    float thresholds round onto the upper value: the graph sends it down the other branch.
    ``float32_thresholds`` lowers the threshold so both agree, and LightGBM's predictions on
    float32 inputs do not change."""
    import lightgbm as lgb

    lo = np.float32(13.39)  # the value one trained booster split on
    while True:  # the next value up at which the midpoint rounds onto the upper value
        hi = np.nextafter(lo, np.float32(np.inf))
        if np.float32((np.float64(lo) + np.float64(hi)) / 2) == hi:
            break
        lo = hi
    x = np.repeat(np.array([lo, hi], dtype=np.float32), 50).reshape(-1, 1)
    y = np.repeat([0.0, 1.0], 50)
    params = {"objective": "binary", "num_leaves": 2, "min_data_in_leaf": 1, "verbosity": -1}
    raw = lgb.train({**params, "min_data_in_bin": 1}, lgb.Dataset(x, y), 1)
    fixed = float32_thresholds(raw)
    probe = np.concatenate(
        [np.array([lo, hi]), np.random.default_rng(0).normal(13.39, 1e-5, 500)]
    ).astype(np.float32)[:, None]

    def graph(booster):  # noqa: ANN001, ANN202
        return gbdt_margin(onnx_session(gbdt_to_onnx(booster, 1)), probe)

    want = raw.predict(probe, raw_score=True)
    assert want[1] > 0 > want[0]  # lightgbm told the two apart
    assert graph(raw)[1] < 0  # the plain export did not (the defect this guards)
    np.testing.assert_array_equal(fixed.predict(probe, raw_score=True), want)
    np.testing.assert_allclose(graph(fixed), want, atol=1e-6)


@pytest.mark.slow
def test_the_tree_graph_is_the_same_bytes_in_every_process(model):
    """The converter lists its opsets in set order, which follows the process's string
    hashing: two processes with different hash seeds must write the same graph."""
    script = (
        "import sys, hashlib, lightgbm as lgb; from vigil.models.risk import gbdt_to_onnx; "
        "b = lgb.Booster(model_str=sys.stdin.read()); "
        f"print(hashlib.sha256(gbdt_to_onnx(b, {len(FEATURE_SPEC.names)})).hexdigest())"
    )
    text = model.booster.model_to_string()
    digests = {
        subprocess.run(
            [sys.executable, "-c", script],
            input=text,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "PYTHONHASHSEED": seed},
        ).stdout
        for seed in ("0", "20", "22", "37")  # 20, 22, 37 put the ML opset first
    }
    assert len(digests) == 1


@pytest.mark.slow
def test_the_nns_train_data_parallel_on_the_engine(data, model, tmp_path):
    """2 ranks (DDP over the hierarchical AllReduce) fit the hybrid as well as the
    single-process loop does (same global batch, epochs and held-out selection), it exports
    with ONNX parity, and the manifest records how it was trained."""
    import dataclasses

    cfg = dataclasses.replace(SMALL, nproc=2)
    engine = train(data[0], cfg, say=lambda _m: None)
    got, want = (evaluate(m, data[1])["models"] for m in (engine, model))
    assert got["hybrid"]["auc_pr"] == pytest.approx(want["hybrid"]["auc_pr"], abs=0.01)
    assert got["nn"]["auc_pr"] == pytest.approx(want["nn"]["auc_pr"], abs=0.05)
    path = export(engine, tmp_path, data[1].features[:256])
    manifest = read_manifest(path)
    assert manifest["config"]["nproc"] == 2 and manifest["parity_max_abs_diff"] <= 1e-5
