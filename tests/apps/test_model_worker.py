"""The risk worker with a freshly trained hybrid model, end to end on the embedded broker."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from tests.apps.helpers import collect
from tests.conftest import worker_env
from vigil.apps.clients import publish
from vigil.apps.process import WorkerProcess
from vigil.streams.features.library import FEATURE_SPEC
from vigil.streams.sources import GeneratorConfig, TransactionGenerator

pytestmark = pytest.mark.integration


@pytest.fixture
def trained(small_risk):
    return small_risk.model, small_risk.path


def _run(settings, tmp_path, model_dir, n=1500):
    gen = TransactionGenerator(GeneratorConfig(seed=4, accounts=80, typology_rate=0.01)).take(n)
    publish(
        bootstrap := settings.kafka_bootstrap,
        settings.topics.transactions,
        [(g.key, g.value) for g in gen],
    )
    env = worker_env(settings) | {"VIGIL_MODEL_DIR": str(model_dir)}
    with WorkerProcess("risk", env, tmp_path / "worker.log") as worker:
        scores = collect(
            bootstrap,
            settings.topics.scores,
            lambda got: len(got) >= n,
            alive=lambda: worker.running,
        )
        alerts = collect(bootstrap, settings.topics.alerts, lambda got: False, timeout_s=2)
    return scores, alerts, (tmp_path / "worker.log").read_text(errors="replace")


def test_the_worker_scores_with_the_newest_model_and_stamps_its_version(
    settings, tmp_path, trained
):
    model, path = trained
    scores, alerts, log = _run(settings, tmp_path, path.parent)
    assert f"model {path.name} loaded from" in log  # said at start
    assert len({s["tx_id"] for s in scores}) == 1500
    assert {s["model_version"] for s in scores} == {path.name}
    x = np.array(
        [[math.nan if v is None else v for v in s["features"]] for s in scores], dtype=np.float32
    )
    model_p = model.predict(x)  # the Python model, independent of the ONNX sessions
    for s, p in zip(scores, model_p, strict=True):
        keep = 1.0 - float(p)
        for hit in s["rule_hits"]:
            keep *= 1.0 - hit["score"]
        assert s["score"] == pytest.approx(1.0 - keep, abs=2e-5), s["tx_id"]
    by_model = [a for a in alerts if any(r["code"] == "model" for r in a["reasons"])]
    assert alerts and len(by_model) == len(alerts)  # every alert carries the model's reason
    for a in by_model:
        reason = next(r for r in a["reasons"] if r["code"] == "model")
        assert all(f["name"] in FEATURE_SPEC.names for f in reason["features"])
        assert a["model_version"] == path.name


def test_a_model_for_another_feature_spec_is_refused_and_rules_keep_scoring(
    settings, tmp_path, trained
):
    _model, path = trained
    stale = tmp_path / "models" / path.name
    stale.parent.mkdir()
    import shutil

    shutil.copytree(path, stale)
    manifest = json.loads((stale / "manifest.json").read_text())
    manifest["feature_spec"] = "lib-1:0123456789abcdef"
    (stale / "manifest.json").write_text(json.dumps(manifest))
    scores, _alerts, log = _run(settings, tmp_path, stale.parent, n=300)
    assert {s["model_version"] for s in scores} == {"rules-only"}
    assert "model refused" in log and "lib-1:0123456789abcdef" in log
