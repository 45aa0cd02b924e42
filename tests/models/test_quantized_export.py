"""8-bit QDQ export of the clip classifier: ONNX Runtime runs it on integer kernels,
stores int8 weights, and computes what the fake-quantized torch model computes."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import numpy_helper
from torch import nn

from vigil.models.compression import quant_config
from vigil.models.compression.export import calibrate, export_qdq, optimized_ops
from vigil.models.inspection import VideoConfig, VideoNet, export_video
from vigil.models.serving import onnx_session

# one view: the bounds below are on a single pass (averaged views shrink the output
# range of this untrained net more than its rounding error)
CFG = VideoConfig(size=32, camera_size=32, frames=4, d=16, views=1)


@pytest.fixture(scope="module")
def exported():
    torch.manual_seed(0)
    net = VideoNet(CFG).eval()
    fp32 = export_video(net, CFG)
    gen = torch.Generator().manual_seed(1)
    clips = torch.rand(24, 1, 4, 32, 32, generator=gen)
    calibrate(net, quant_config(8), [(clips[i : i + 8],) for i in range(0, 16, 8)])
    graph = export_qdq(net, (clips[:2],), ["clip"], ["defect_logit", "location_logits"])
    return net, fp32, graph, clips[16:]


def test_onnx_runtime_runs_the_export_on_integer_kernels(exported):
    _net, _fp32, graph, _clips = exported
    ops = optimized_ops(graph)
    assert ops["QLinearConv"] == 2, ops  # both stem convolutions
    assert ops["MatMulIntegerToFloat"] + ops["MatMulInteger"] + ops["QGemm"] >= 4, ops


def test_weights_are_stored_as_int8(exported):
    _net, fp32, graph, _clips = exported
    model = onnx.load_from_string(graph)
    arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    weights = [n for n, a in arrays.items() if "weight_quant" in n and a.dtype == np.int8]
    assert len(weights) == 2 + 1 + 2 * CFG.layers + 2  # stem convs, mix, FFNs, two heads
    # in the 7-bit range, which ONNX Runtime's uint8 x int8 kernels add without saturating
    # on CPUs without VNNI (quant_config); every channel uses all of it
    for n in weights:
        w = arrays[n].reshape(arrays[n].shape[0], -1)
        assert np.array_equal(np.abs(w).max(axis=1), np.full(len(w), 63)), n
    assert "stem.0.layer.weight" not in arrays  # the float weight is gone from the file
    assert len(graph) < len(fp32)


def test_the_export_computes_what_the_fake_quantized_model_computes(exported):
    net, fp32, graph, clips = exported
    got = onnx_session(graph).run(None, {"clip": clips.numpy()})[0]
    with torch.no_grad():
        fake = net(clips)[0].numpy()  # torch, fake-quantized (our own math)
    base = onnx_session(fp32).run(None, {"clip": clips.numpy()})[0]
    spread = float(np.ptp(base)) or 1.0
    # integer kernels re-round biases and intermediate sums: within 2 % of the output range
    assert np.max(np.abs(got - fake)) <= 0.02 * spread
    # and 8 bits stay close to fp32 (weights in 7 bits' range: 5.2 % of it on this net)
    assert np.max(np.abs(got - base)) <= 0.06 * spread


def test_exporting_an_uncalibrated_model_is_refused():
    with pytest.raises(ValueError, match="calibrate"):
        export_qdq(VideoNet(CFG), (torch.zeros(2, 1, 4, 32, 32),), ["clip"], ["a", "b"])


def test_vigil_export_writes_a_verified_int8_model_or_nothing(tmp_path):
    from typer.testing import CliRunner

    from vigil.apps.cli import app
    from vigil.models.inspection import make_clips, save_video_model
    from vigil.models.serving import ClipScorer, read_manifest
    from vigil.streams.sources.camera import TRAIN_TEXTURES

    torch.manual_seed(0)
    cfg = VideoConfig(size=32, camera_size=32, frames=4, d=16)
    net = VideoNet(cfg).eval()
    src = save_video_model(
        net, cfg, tmp_path / "models", make_clips(4, cfg, TRAIN_TEXTURES, 1).clips, {}
    )
    runner = CliRunner()
    args = [
        "export",
        "inspection",
        "--model-dir",
        str(src),
        "--out",
        str(tmp_path / "out"),
        "--json",
    ]
    result = runner.invoke(app, [*args, "--max-loss", "-100"])  # nothing can pass
    assert result.exit_code == 1 and "not written" in result.output
    assert not (tmp_path / "out").exists()
    result = runner.invoke(app, [*args, "--max-loss", "100"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["bits"] == 8 and report["parent_version"] == src.name
    assert report["integer_kernels"].get("QLinearConv", 0) >= 1
    assert report["loss_points"] == pytest.approx(
        (report["auroc_fp32"] - report["auroc_quantized"]) * 100, abs=0.02
    )
    out = Path(report["model"])
    assert read_manifest(out)["bits"] == 8
    scorer = ClipScorer.load(out)  # the workers' loader takes it
    probs, cells = scorer.score(np.zeros((3, 1, 4, 32, 32), np.float32))
    assert probs.shape == (3,) and cells.shape == (3,)
    three = runner.invoke(app, [*args, "--bits", "3"])
    assert three.exit_code == 2 and "one of 16, 8, 4, 2" in three.output


@pytest.mark.parametrize("stride,padding,frames", [((1, 2, 2), 1, 8), (2, 1, 8), ((2, 1, 1), 0, 5)])
def test_a_time_sliced_conv3d_computes_the_same_convolution(stride, padding, frames):
    from vigil.models.compression.conv import TimeSlicedConv3d

    torch.manual_seed(1)
    conv = nn.Conv3d(3, 5, 3, stride=stride, padding=padding)
    x = torch.randn(2, 3, frames, 12, 12)
    with torch.no_grad():
        torch.testing.assert_close(TimeSlicedConv3d(conv)(x), conv(x), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="plain Conv3d"):
        TimeSlicedConv3d(nn.Conv3d(4, 4, 3, groups=2))


def test_vigil_export_risk_writes_a_complete_risk_model_the_workers_load(tmp_path, tiny_risk):
    from typer.testing import CliRunner

    from vigil.apps.cli import app
    from vigil.models.serving import HybridScorer, read_manifest
    from vigil.streams.features.library import FEATURE_SPEC

    model, src, test_set = tiny_risk.model, tiny_risk.path, tiny_risk.test_set
    args = ["export", "risk", "--model-dir", str(src), "--out", str(tmp_path / "out")]
    # the math, not the model, here: any loss is let through
    result = CliRunner().invoke(app, [*args, "--days", "4", "--json", "--max-loss", "100"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["integer_kernels"] and report["smaller"] > 2
    out = Path(report["model"])
    manifest = read_manifest(out)
    assert manifest["bits"] == 8 and manifest["parent_version"] == src.name
    assert "hybrid.pt" not in manifest["files"]
    scorer = HybridScorer.load(out, FEATURE_SPEC.label)  # what a risk worker loads
    x = test_set.features[:500]
    got, want = scorer.score_batch(x), model.predict(x)
    # 8 bits stay close to the float model; the calibrated sigmoid is steep, so a row on
    # the edge may flip: nearly every row, not every row
    assert np.mean(np.abs(got - want) < 0.05) > 0.99


@pytest.mark.slow  # a benchmark command over every width: make test-all
def test_bench_quantization_measures_every_width_of_both_models(tmp_path, monkeypatch, tiny_risk):
    import shutil

    from typer.testing import CliRunner

    from vigil.apps.cli import app
    from vigil.models.inspection import make_clips, save_video_model
    from vigil.streams.sources.camera import TRAIN_TEXTURES

    src = tiny_risk.path
    root = tmp_path / "models"
    shutil.copytree(src, root / src.name)
    torch.manual_seed(0)
    cfg = VideoConfig(size=32, camera_size=32, frames=4, d=16)
    clips = make_clips(4, cfg, TRAIN_TEXTURES, 1).clips
    save_video_model(VideoNet(cfg).eval(), cfg, root / "inspection", clips, {})
    monkeypatch.setenv("VIGIL_MODEL_DIR", str(root))
    result = CliRunner().invoke(app, ["bench", "quantization", "--json", "--bits", "8,4,2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])
    assert set(report["models"]) == {"risk_nn", "inspection"}
    for rows in report["models"].values():
        assert set(rows) == {"32", "8", "4", "2"}
        for bits, row in rows.items():
            assert row["size_bytes"] > 0 and row["batch1_ms"] > 0 and row["batch64_ms"] > 0
            if bits != "32":
                assert row["smaller"] == round(rows["32"]["size_bytes"] / row["size_bytes"], 2)
                assert row["kernels"], bits  # integer kernels ran
        assert rows["2"]["size_bytes"] < rows["4"]["size_bytes"] < rows["32"]["size_bytes"]
    goals = {(g["model"], g["bits"]): g for g in report["goals"]}
    assert set(goals) == {(m, b) for m in ("risk_nn", "inspection") for b in (8, 4)}
    row = report["models"]["risk_nn"]["4"]
    assert goals["risk_nn", 4]["met"]["smaller"] == (row["smaller"] >= 6.0)
    assert not list(root.glob("exports*"))  # measured, not written among the models
    bad = CliRunner().invoke(app, ["bench", "quantization", "--bits", "3"])
    assert bad.exit_code == 2


def test_the_deep_stem_quantizes_with_its_batch_norms_folded():
    """The deep stem's convolutions all run as integer kernels once its batch norms are
    folded into them (the path quantize_inspection takes)."""
    from vigil.models.compression.conv import fold_batchnorm, slice_time
    from vigil.models.inspection.net import stem_config

    cfg = VideoConfig(size=64, camera_size=64, frames=4, views=1, **stem_config("deep"))
    torch.manual_seed(0)
    gen = torch.Generator().manual_seed(1)
    clips = torch.rand(24, 1, 4, 64, 64, generator=gen)
    net = VideoNet(cfg).train()
    with torch.no_grad():
        net(clips * 2)  # batch-norm statistics of its own
    net.eval()
    fp32 = export_video(net, cfg)
    assert fold_batchnorm(net) == 8
    slice_time(net)
    calibrate(net, quant_config(8), [(clips[i : i + 8],) for i in range(0, 16, 8)])
    graph = export_qdq(net, (clips[:2],), ["clip"], ["defect_logit", "location_logits"])
    ops = optimized_ops(graph)
    assert ops["QLinearConv"] == 9 and "BatchNormalization" not in ops, ops
    got = onnx_session(graph).run(None, {"clip": clips[16:].numpy()})[0]
    with torch.no_grad():
        fake = net(clips[16:])[0].numpy()
    base = onnx_session(fp32).run(None, {"clip": clips[16:].numpy()})[0]
    # what the fake-quantized torch model computes, and near the float model: relative to
    # the logit, as this untrained net's logits hardly spread (0.37 across the clips);
    # the integer kernels' re-rounding through seven convolutions in a row measured 2.3 %
    # of the logit against the fake-quantized model and 2.5 % against the float one
    assert np.max(np.abs(got - fake) / np.abs(fake)) <= 0.04
    assert np.max(np.abs(got - base) / np.abs(base)) <= 0.05
