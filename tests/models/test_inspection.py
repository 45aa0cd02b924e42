"""The inspection clip classifier: its data, its metric against scikit-learn, that it
learns, and ONNX Runtime against torch at other batch sizes than the export's."""

from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import onnxruntime as ort
import pytest
import torch
from sklearn.metrics import roc_auc_score
from typer.testing import CliRunner

from vigil.apps.cli import app
from vigil.models.inspection import (
    GRID,
    ClipDataset,
    VideoConfig,
    VideoNet,
    auroc,
    load_video_net,
    make_clips,
    predict,
    save_video_model,
    train_video,
)
from vigil.models.kinds import RISK
from vigil.models.serving import read_manifest
from vigil.streams.sources.camera import TRAIN_TEXTURES

CFG = VideoConfig(size=64, epochs=6, seed=1)


@pytest.fixture(scope="module")
def clips():
    return make_clips(240, CFG, TRAIN_TEXTURES, seed=3)


def test_the_auroc_interval_matches_the_spread_of_repeated_evaluations():
    from vigil.models.inspection import auroc_ci95

    # the reference: the spread of AUROC over 1,000 simulated evaluations of 50 + 50
    # clips (binormal scores, true AUROC 0.80)
    rng = np.random.default_rng(0)
    d = 2**0.5 * 0.8416  # Phi(d / sqrt 2) = 0.80
    sims = [
        auroc(np.r_[np.ones(50), np.zeros(50)], np.r_[rng.normal(d, 1, 50), rng.normal(0, 1, 50)])
        for _ in range(1000)
    ]
    lo, hi = auroc_ci95(0.8, 50, 50)
    assert (hi - lo) / (2 * 1.96) == pytest.approx(float(np.std(sims)), rel=0.15)
    wide, narrow = auroc_ci95(0.9, 100, 100), auroc_ci95(0.9, 1000, 1000)
    assert narrow[1] - narrow[0] < (wide[1] - wide[0]) / 3 and narrow[0] < 0.9 < narrow[1]
    assert auroc_ci95(1.0, 10, 10) == (1.0, 1.0)


def test_auroc_equals_scikit_learn_with_ties():
    rng = np.random.default_rng(0)
    for _ in range(20):
        y = rng.integers(0, 2, 50)
        s = rng.integers(0, 6, 50).astype(float)  # many ties
        if 0 < y.sum() < 50:
            assert auroc(y, s) == pytest.approx(roc_auc_score(y, s), abs=1e-12)


def test_clips_are_balanced_aligned_and_located(clips):
    assert clips.clips.shape == (240, 1, 8, 64, 64) and clips.clips.dtype == np.float32
    assert clips.clips.min() >= 0 and clips.clips.max() <= 1
    assert clips.labels.sum() == 120
    for label, cell, box in zip(clips.labels, clips.cells, clips.boxes, strict=True):
        if not label:
            assert cell == -1 and box is None
            continue
        x, y, w, h = box  # the box's centre is in the labelled cell
        cam = CFG.camera_size  # boxes are in the camera frame's pixels
        assert cell == int((y + h / 2) * GRID // cam) * GRID + int((x + w / 2) * GRID // cam)


def test_the_classifier_learns_defects(clips):
    net = train_video(clips, CFG, say=lambda _m: None)
    probs, cells = predict(net, clips.clips)
    assert auroc(clips.labels, probs) > 0.8
    located = clips.cells >= 0
    assert (cells[located] == clips.cells[located]).mean() > 1 / GRID**2 * 3  # not chance


def test_onnx_matches_torch_at_any_batch_size(tmp_path, clips):
    torch.manual_seed(0)
    net = VideoNet(CFG).eval()
    path = save_video_model(net, CFG, tmp_path, clips.clips[:4], {"auroc": None})
    manifest = read_manifest(path)
    assert manifest["name"] == "inspection" and manifest["parity_max_diff"] <= 1e-4
    session = ort.InferenceSession(str(path / "clip.onnx"), providers=["CPUExecutionProvider"])
    for batch in (1, 5):
        x = clips.clips[:batch]
        got = session.run(None, {"clip": x})
        with torch.no_grad():
            want = [t.numpy() for t in net(torch.from_numpy(x))]
        for g, w in zip(got, want, strict=True):
            np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4)
    # the torch weights travel with it (quantized exports start from them)
    again, again_cfg, _ = load_video_net(path)
    assert again_cfg == CFG
    with torch.no_grad():
        x = torch.from_numpy(clips.clips[:3])
        assert torch.equal(again(x)[0], net(x)[0])
    # a risk worker reading the same directory does not take it for a risk model
    assert RISK.load_latest(tmp_path) is None


def test_train_inspection_refuses_a_size_the_grid_cannot_cut():
    result = CliRunner().invoke(app, ["train", "inspection", "--size", "72"])
    assert result.exit_code == 2 and "multiple of 16" in result.output


def test_training_is_reproducible_whatever_thread_count_it_finds(clips):
    # an earlier trainer in the same process (the tabular one runs on one thread) must
    # not change this one's result: float sums are split by thread
    small = ClipDataset(clips.clips[:40], clips.labels[:40], clips.cells[:40], [], [], [])
    cfg = VideoConfig(size=64, epochs=1, seed=4)
    before = torch.get_num_threads()
    first = predict(train_video(small, cfg, say=lambda _m: None), small.clips)[0]
    torch.set_num_threads(1)
    try:
        second = predict(train_video(small, cfg, say=lambda _m: None), small.clips)[0]
        assert torch.get_num_threads() == 1  # restored to what it found
    finally:
        torch.set_num_threads(before)
    np.testing.assert_array_equal(first, second)


def test_evaluation_averages_the_clip_and_its_flips(tmp_path, clips):
    # the reference: a one-view net with the same weights, run on clips flipped with numpy,
    # its location logits flipped back the same way
    x = clips.clips[:5]
    torch.manual_seed(3)
    one = VideoNet(VideoConfig(size=64, views=1)).eval()
    with torch.no_grad():
        single = [
            [t.numpy() for t in one(torch.from_numpy(np.ascontiguousarray(np.flip(x, axes))))]
            for axes in ((), (3,), (4,), (3, 4))
        ]
    for views in (2, 4):
        net = VideoNet(VideoConfig(size=64, views=views)).eval()
        net.load_state_dict(one.state_dict())
        with torch.no_grad():
            logit, where = (t.numpy() for t in net(torch.from_numpy(x)))
        back = [
            np.flip(w.reshape(-1, GRID, GRID), [a - 2 for a in axes]).reshape(-1, GRID * GRID)
            for (_l, w), axes in zip(single[:views], ((), (3,), (4,), (3, 4)), strict=False)
        ]
        np.testing.assert_allclose(logit, np.mean([s[0] for s in single[:views]], 0), atol=1e-5)
        np.testing.assert_allclose(where, np.mean(back, 0), atol=1e-5)
        net.train()  # training runs one view
        assert torch.equal(net(torch.from_numpy(x))[0], one(torch.from_numpy(x))[0])
    # the views are in the exported graph, and a model written before views existed
    # loads as one view
    path = save_video_model(net.eval(), VideoConfig(size=64, views=4), tmp_path, x[:2], {})
    session = ort.InferenceSession(str(path / "clip.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_allclose(session.run(None, {"clip": x})[0], logit, rtol=1e-4, atol=1e-4)
    manifest = read_manifest(path)
    del manifest["config"]["views"]
    (path / "manifest.json").write_text(json.dumps(manifest))
    assert load_video_net(path)[1].views == 1


def test_train_inspection_refuses_views_it_cannot_flip():
    result = CliRunner().invoke(app, ["train", "inspection", "--views", "3"])
    assert result.exit_code == 2 and "views must be one of 1, 2, 4" in result.output


def _trained_norms(net: VideoNet, x: np.ndarray) -> VideoNet:
    """``net`` with batch-norm statistics of its own (a few training-mode passes over
    ``x``, shifted and scaled) and scales and shifts of its own: folding and export must
    use them all, not the initial 0 / 1."""
    net.train()
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm3d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
        for k in range(3):
            net(torch.from_numpy(x) * (1.5 + k) + 0.2)
    return net.eval()


def test_the_deep_stem_exports_and_folds_its_batch_norms_exactly(tmp_path, clips):
    from vigil.models.compression.conv import fold_batchnorm
    from vigil.models.inspection.net import stem_config

    cfg = VideoConfig(size=64, camera_size=64, views=2, **stem_config("deep"))
    torch.manual_seed(5)
    x = clips.clips[:6]
    net = _trained_norms(VideoNet(cfg), x)
    with torch.no_grad():
        logit, where = (t.numpy() for t in net(torch.from_numpy(x)))
    # one token per 4 frames and 16 pixels: 2 x 4 x 4 of them for 8 frames of 64
    assert net.position.shape[1] == 2 * GRID * GRID and where.shape == (6, GRID * GRID)
    # ONNX Runtime against torch (the export's own check, then independently here)
    path = save_video_model(net, cfg, tmp_path, x[:2], {})
    session = ort.InferenceSession(str(path / "clip.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"clip": x})
    np.testing.assert_allclose(got[0], logit, rtol=1e-4, atol=1e-4)
    loaded, loaded_cfg, _ = load_video_net(path)
    assert loaded_cfg.stem == "deep" and loaded_cfg.d == 64
    # folded: no batch norm left, the same outputs
    norms = sum(isinstance(m, torch.nn.BatchNorm3d) for m in loaded.modules())
    assert fold_batchnorm(loaded) == norms == 8
    assert not any(isinstance(m, torch.nn.BatchNorm3d) for m in loaded.modules())
    with torch.no_grad():
        folded = [t.numpy() for t in loaded(torch.from_numpy(x))]
    np.testing.assert_allclose(folded[0], logit, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(folded[1], where, rtol=1e-4, atol=1e-4)


def test_torch_weights_that_do_not_fit_the_stem_are_a_clear_error(tmp_path, clips):
    """A deep-stem model trained before the stem gained its last layers: its weights lack
    them, and loading them says so instead of torch's key listing."""
    from vigil.models.inspection.net import stem_config
    from vigil.models.serving import ModelError

    cfg = VideoConfig(size=64, camera_size=64, views=1, **stem_config("deep"))
    path = save_video_model(VideoNet(cfg).eval(), cfg, tmp_path, clips.clips[:2], {})
    state = torch.load(path / "state.pt", weights_only=True)
    last = max(int(k.split(".")[1]) for k in state if k.startswith("stem."))
    buf = io.BytesIO()
    torch.save({k: v for k, v in state.items() if not k.startswith(f"stem.{last}.")}, buf)
    (path / "state.pt").write_bytes(buf.getvalue())
    manifest = json.loads((path / "manifest.json").read_text())
    manifest["files"]["state.pt"] = hashlib.sha256(buf.getvalue()).hexdigest()
    (path / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ModelError, match="do not fit this Vigil's deep stem.*retrain"):
        load_video_net(path)


def test_train_inspection_refuses_a_stem_or_size_it_cannot_build():
    runner = CliRunner()
    result = runner.invoke(app, ["train", "inspection", "--stem", "huge"])
    assert result.exit_code == 2 and "stem is one of small, deep" in result.output
    result = runner.invoke(app, ["train", "inspection", "--stem", "deep", "--size", "96"])
    assert result.exit_code == 2 and "size must be a multiple of 64" in result.output
