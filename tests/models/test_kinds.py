"""The model kinds answer for their models: lookups, loading, the held-out metric."""

import numpy as np
import pytest
from sklearn.metrics import average_precision_score

from vigil.errors import UsageError
from vigil.models.kinds import INSPECTION, KINDS, RISK, kind, kind_of
from vigil.models.serving import HybridScorer, ModelError, read_manifest


def test_kinds_are_found_by_name_and_by_manifest_format():
    assert kind("risk") is RISK and kind("inspection") is INSPECTION
    assert kind_of({"format": RISK.format}) is RISK
    assert kind_of({"format": INSPECTION.format}) is INSPECTION
    with pytest.raises(UsageError, match="unknown model 'audio': one of risk, inspection"):
        kind("audio")
    with pytest.raises(ModelError, match="unknown format"):
        kind_of({"format": "onnx:something-else", "version": "x"})
    assert len({k.format for k in KINDS.values()}) == len(KINDS)  # formats tell kinds apart


def test_each_kind_has_its_own_place_under_the_models_directory(tmp_path):
    assert RISK.directory(tmp_path) == tmp_path
    assert INSPECTION.directory(tmp_path) == tmp_path / "inspection"
    assert INSPECTION.exports(tmp_path) == tmp_path / "exports" / "inspection"
    assert RISK.latest(tmp_path) is None and INSPECTION.load_latest(tmp_path) is None


def test_the_risk_kind_loads_and_scores_a_trained_model(small_risk):
    assert RISK.latest(small_risk.path.parent) == small_risk.path
    scorer = RISK.load(small_risk.path)
    assert isinstance(scorer, HybridScorer)
    assert kind_of(read_manifest(small_risk.path)) is RISK
    test = small_risk.test_set
    onnx = RISK.outputs(scorer, test.features)
    python = small_risk.model.predict(test.features)
    assert np.abs(onnx - python).max() < 1e-5  # ONNX vs Python, row by row
    assert RISK.score(scorer, test) == pytest.approx(average_precision_score(test.labels, onnx))
    # float32 noise (1e-7) may swap near-tied rows: the metric moves by little, not by 0
    want = average_precision_score(test.labels, python)
    assert RISK.score(scorer, test) == pytest.approx(want, abs=2e-3)
    with pytest.raises(ModelError, match="not a inspection model: format"):
        INSPECTION.load(small_risk.path)


def test_golden_inputs_are_realistic_and_deterministic(small_risk):
    manifest = read_manifest(small_risk.path)
    a = RISK.golden_inputs(manifest, 32)
    b = RISK.golden_inputs(manifest, 32)
    assert a.shape[0] == 32 and np.array_equal(a, b, equal_nan=True)
    assert RISK.input_spec(manifest)["feature_spec"] == manifest["feature_spec"]
