"""The model-release loop live on the embedded broker: a risk worker scoring a stream is
sent bad releases (refused, the old model keeps serving) and a good one (swapped in
between two micro-batches, without losing or repeating a transaction)."""

from __future__ import annotations

import json
import math
import re
import shutil
import threading

import numpy as np
import pytest
from typer.testing import CliRunner

from tests.apps.helpers import collect, wait_for_log
from tests.conftest import worker_env
from tests.releases import repacked, resigned
from vigil.apps.cli import app
from vigil.apps.clients import publish
from vigil.apps.process import WorkerProcess
from vigil.apps.releases import publish_release, read_releases
from vigil.models.registry import build_release, release_messages
from vigil.models.risk import (
    TabularConfig,
    export,
    train,
)
from vigil.models.signing import SigningKey
from vigil.streams.partitioning import partition_for
from vigil.streams.sources import GeneratorConfig, TransactionGenerator

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def history(tiny_risk):
    return tiny_risk.train_set, tiny_risk.test_set


@pytest.fixture(scope="module")
def model_b(tiny_risk):
    """The tiny risk model's configuration with another seed."""
    cfg = TabularConfig(seed=8, trees=30, epochs=3, folds=3)
    return train(tiny_risk.train_set, cfg, say=lambda _: None)


@pytest.fixture
def two_models(tmp_path_factory, tiny_risk, model_b):
    """Two risk models (different seeds), each alone in its models directory: A serves from
    disk at start, B is released."""
    rows = tiny_risk.test_set.features[:200]
    a, b = tiny_risk.model, model_b
    return [(m, export(m, tmp_path_factory.mktemp(root), rows)) for m, root in ((a, "a"), (b, "b"))]


def _model_score(model, score: dict) -> float:
    """The combined score a record must carry if ``model`` scored it (rules combine as in
    tests/apps/test_model_worker.py)."""
    x = np.array([[math.nan if v is None else v for v in score["features"]]], np.float32)
    keep = 1.0 - float(model.predict(x)[0])
    for hit in score["rule_hits"]:
        keep *= 1.0 - hit["score"]
    return 1.0 - keep


def test_a_release_swaps_in_mid_stream_and_bad_ones_are_refused(settings, tmp_path, two_models):
    (model_a, dir_a), (model_b, dir_b) = two_models
    key = settings.release_signer()
    bootstrap, topics = settings.kafka_bootstrap, settings.topics
    txs = [
        (g.key, g.value)
        for g in TransactionGenerator(GeneratorConfig(seed=4, accounts=120)).take(5000)
    ]
    first, rest = txs[:2000], txs[2000:]
    publish(bootstrap, topics.transactions, first)
    env = worker_env(settings) | {"VIGIL_MODEL_DIR": str(dir_a.parent)}
    with WorkerProcess("risk", env, tmp_path / "worker.log") as worker:
        collect(
            bootstrap, topics.scores, lambda got: len(got) >= 1000, alive=lambda: worker.running
        )
        # the releases, built before the stream (building takes seconds on a busy host):
        # signed by an unknown key, truncated, for another feature spec (a publisher
        # on another version of Vigil), and the good one
        forged = build_release(dir_b, SigningKey.generate())
        truncated = release_messages(build_release(dir_b, key, chunk_bytes=64 * 1024))
        assert len(truncated) > 2
        release_b = build_release(dir_b, key)
        spec = {**release_b.manifest["input_spec"], "feature_spec": "lib-0:0000000000000000"}
        other_spec = resigned(release_b, key, input_spec=spec)
        good = build_release(dir_b, key)
        # mid-stream: the bad releases, then the good one, while the rest arrives
        stream = threading.Thread(
            target=publish, args=(bootstrap, topics.transactions, rest), kwargs={"rate": 1000}
        )
        stream.start()
        publish_release(bootstrap, topics.models, forged)
        publish(bootstrap, topics.models, truncated[:-1])
        publish_release(bootstrap, topics.models, other_spec)
        publish_release(bootstrap, topics.models, good)
        stream.join()
        scores = collect(
            bootstrap, topics.scores, lambda got: len(got) >= len(txs), alive=lambda: worker.running
        )
    log = (tmp_path / "worker.log").read_text(errors="replace")

    # every transaction scored exactly once: no gap, no repeat
    ids = [s["tx_id"] for s in scores]
    assert len(ids) == len(set(ids)) == len(txs)
    assert set(ids) == {json.loads(v)["tx_id"] for _k, v in txs}
    # the version switches once, from A to B, in every partition's order...
    version = {dir_a.name: 0, dir_b.name: 1}
    assert {s["model_version"] for s in scores} == set(version)
    by_id = {s["tx_id"]: s for s in scores}
    for p in range(settings.partitions):
        order = [
            version[by_id[json.loads(v)["tx_id"]]["model_version"]]
            for k, v in txs
            if partition_for(k.encode() if isinstance(k, str) else k, settings.partitions) == p
        ]
        assert order == sorted(order), f"partition {p} switched back and forth"
    # ... and across partitions at one point in processing time (between two batches)
    a = [s["processed_ms"] for s in scores if s["model_version"] == dir_a.name]
    b = [s["processed_ms"] for s in scores if s["model_version"] == dir_b.name]
    assert a and b and max(a) <= min(b)
    # each record carries the score of the model its stamp names (the Python models)
    for s in scores[::25]:
        model = model_a if s["model_version"] == dir_a.name else model_b
        assert s["score"] == pytest.approx(_model_score(model, s), abs=2e-5), s["tx_id"]

    # every bad release was refused with its reason, while A kept serving
    refusals = re.findall(r"risk release \S+ \(.*?\) refused, (\S+) keeps serving: (.*)", log)
    reasons = " | ".join(r for _serving, r in refusals)
    assert "does not trust" in reasons and "truncated" in reasons and "feature spec" in reasons
    assert {serving for serving, _r in refusals} == {dir_a.name}
    assert re.search(rf"risk release {dir_b.name} .* serving \d+ ms after it was published", log)

    # the registry's view (transport checks only: the feature spec is the worker's concern)
    listed = read_releases(bootstrap, topics.models, settings.release_trusted())
    assert listed.latest("risk").version == dir_b.name
    assert sorted(f.reason.split()[0] for f in listed.refused) == ["signed", "truncated:"]


def test_a_restarted_worker_serves_the_newest_release_that_passes(settings, tmp_path, two_models):
    """The topic holds A, then B forged to fail parity (its golden outputs are A's): a
    worker starting with no model on disk refuses B at catch-up and serves A."""
    (_a, dir_a), (_b, dir_b) = two_models
    key = settings.release_signer()
    bootstrap, topics = settings.kafka_bootstrap, settings.topics
    good = build_release(dir_a, key)
    golden_of_a = good.files()["golden.npz"]
    forged = repacked(build_release(dir_b, key), key, **{"golden.npz": golden_of_a})
    for release in (good, forged):
        publish_release(bootstrap, topics.models, release)
    env = worker_env(settings) | {"VIGIL_MODEL_DIR": str(tmp_path / "empty")}
    log = tmp_path / "worker.log"
    with WorkerProcess("risk", env, log) as worker:
        served = wait_for_log(
            log, r"risk release (\S+) \(\d+-bit.* serving after catching up", lambda: worker.running
        )
        assert served and served.group(1) == dir_a.name
        txs = [
            (g.key, g.value)
            for g in TransactionGenerator(GeneratorConfig(seed=6, accounts=50)).take(300)
        ]
        publish(bootstrap, topics.transactions, txs)
        scores = collect(
            bootstrap, topics.scores, lambda got: len(got) >= 300, alive=lambda: worker.running
        )
    text = log.read_text(errors="replace")
    assert re.search(rf"risk release {dir_b.name} .* refused, .*: parity failed", text)
    assert {s["model_version"] for s in scores} == {dir_a.name}


def test_models_commands_list_and_roll_back(settings, tmp_path, two_models, monkeypatch):
    (_a, dir_a), (_b, dir_b) = two_models
    for name, value in worker_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VIGIL_MODEL_DIR", str(dir_a.parent))
    runner = CliRunner()
    empty = runner.invoke(app, ["models", "list", "--json"])
    assert empty.exit_code == 0 and empty.stdout.strip() == ""
    for d in (dir_a, dir_b):
        done = runner.invoke(app, ["models", "publish", str(d)])
        assert done.exit_code == 0, done.output
    rows = [
        json.loads(line)
        for line in runner.invoke(app, ["models", "list", "--json"]).stdout.splitlines()
    ]
    assert [(r["version"], r["latest"]) for r in rows] == [(dir_a.name, False), (dir_b.name, True)]
    back = runner.invoke(app, ["models", "rollback", "risk", dir_a.name])
    assert back.exit_code == 0, back.output
    listed = read_releases(
        settings.kafka_bootstrap, settings.topics.models, settings.release_trusted()
    )
    # the same payload under a new signed manifest (a plain replay would be refused)
    assert listed.latest("risk").version == dir_a.name
    assert listed.releases[-1].payload == listed.releases[0].payload
    assert listed.releases[-1].manifest["rollback"] is True
    assert listed.releases[-1].manifest["replaces"] == dir_b.name
    # an attacker without the key appends B's records again, byte for byte: refused
    from vigil.apps.clients import read_messages

    b_records = [
        (m.key(), m.value(), m.headers())
        for m in read_messages(settings.kafka_bootstrap, settings.topics.models)
        if dict(m.headers())["vigil-release"] == dir_b.name.encode()
    ]
    publish(settings.kafka_bootstrap, settings.topics.models, b_records)
    trusted = settings.release_trusted()
    again = read_releases(settings.kafka_bootstrap, settings.topics.models, trusted)
    assert again.latest("risk").version == dir_a.name
    assert "replayed or older release" in again.refused[-1].reason
    nowhere = runner.invoke(app, ["models", "publish", str(tmp_path / "nowhere")])
    assert nowhere.exit_code == 1 and "no manifest.json" in nowhere.output
    stale = tmp_path / "stale" / dir_a.name
    shutil.copytree(dir_a, stale)
    manifest = json.loads((stale / "manifest.json").read_text())
    (stale / "manifest.json").write_text(json.dumps({**manifest, "feature_spec": "lib-0:0"}))
    refused = runner.invoke(app, ["models", "publish", str(stale)])
    assert refused.exit_code == 1 and "retrain it" in " ".join(refused.output.split())
    missing = runner.invoke(app, ["models", "rollback", "risk", "risk-000000000000"])
    assert missing.exit_code == 1 and "vigil models list" in missing.output
    wrong = runner.invoke(app, ["models", "rollback", "inspection", dir_a.name])
    assert wrong.exit_code == 1 and "is a risk model" in wrong.output


def test_the_refresh_gate_publishes_a_challenger_only_when_it_is_not_worse(
    settings, tmp_path, two_models, history
):
    from vigil.apps.trainer import gate_and_publish
    from vigil.models.metrics import average_precision
    from vigil.models.serving import HybridScorer
    from vigil.streams.features import FEATURE_SPEC

    (_strong_model, strong), _b = two_models
    train_set, test_set = history
    weak_model = train(
        train_set,
        TabularConfig(seed=1, trees=2, leaves=2, epochs=1, folds=2, hidden=2),
        say=lambda _: None,
    )
    weak = export(weak_model, tmp_path / "weak", test_set.features[:200])
    # the reference: each model directory's AUC-PR on the held-out days, as served (ONNX
    # Runtime; its float32 sigmoid ties saturated rows, which moves AUC-PR off the
    # Python model's)
    ap = {
        d.name: average_precision(
            test_set.labels, HybridScorer.load(d, FEATURE_SPEC.label).score_batch(test_set.features)
        )
        for d in (strong, weak)
    }
    assert ap[strong.name] > ap[weak.name]
    bootstrap = settings.kafka_bootstrap

    def gate(challenger):
        return gate_and_publish(settings, bootstrap, challenger, lambda _m: test_set, say=print)

    def serving():
        return (
            read_releases(bootstrap, settings.topics.models, settings.release_trusted())
            .latest("risk")
            .version
        )

    first = gate(weak)
    assert first["published"] and first["champion"] is None and serving() == weak.name
    better = gate(strong)
    assert better["published"] and better["champion"] == weak.name and serving() == strong.name
    assert better["challenger_score"] == pytest.approx(ap[strong.name], abs=1e-9)
    assert better["champion_score"] == pytest.approx(ap[weak.name], abs=1e-9)
    worse = gate(weak)
    assert not worse["published"] and worse["reason"] == "worse than the champion"
    assert serving() == strong.name
    assert gate(strong)["reason"] == "already serving"
    last = read_releases(bootstrap, settings.topics.models, settings.release_trusted()).releases[-1]
    assert last.version == strong.name and last.manifest["replaces"] == weak.name


def test_vigil_train_risk_publish_runs_one_refresh_round(settings, tmp_path, monkeypatch):
    for name, value in worker_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VIGIL_MODEL_DIR", str(tmp_path / "models"))
    runner = CliRunner()
    args = ["train", "risk", "--days", "6", "--holdout-days", "2", "--accounts", "300"]
    assert runner.invoke(app, [*args, "--every", "10m"]).exit_code == 2  # needs --publish
    assert runner.invoke(app, [*args, "--publish", "--every", "5s"]).exit_code == 2
    assert runner.invoke(app, [*args, "--allow-synthetic"]).exit_code == 2  # needs --publish
    # the stream holds no labels: without --allow-synthetic nothing is trained or published
    result = runner.invoke(app, [*args, "--publish", "--json"])
    assert result.exit_code == 0, result.output
    refused = json.loads(result.stdout.strip().splitlines()[-1])
    assert not refused["published"] and "--allow-synthetic" in refused["reason"]
    assert "0 labelled transactions" in refused["reason"]
    releases = read_releases(
        settings.kafka_bootstrap, settings.topics.models, settings.release_trusted()
    )
    assert releases.latest("risk") is None
    result = runner.invoke(app, [*args, "--publish", "--allow-synthetic", "--json"])
    assert result.exit_code == 0, result.output
    decision = json.loads(result.stdout.strip().splitlines()[-1])
    assert decision["published"] and decision["source"] == "generated"
    assert decision["challenger_bits"] == 8
    latest = read_releases(
        settings.kafka_bootstrap, settings.topics.models, settings.release_trusted()
    ).latest("risk")
    assert latest.version == decision["challenger"] and latest.manifest["bits"] == 8
    assert latest.manifest["parent_version"] == decision["trained"]  # the fp32 model


def test_vigil_train_inspection_publish_runs_one_refresh_round(settings, tmp_path, monkeypatch):
    for name, value in worker_env(settings).items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("VIGIL_MODEL_DIR", str(tmp_path / "models"))
    args = ["train", "inspection", "--clips", "40", "--test-clips", "20", "--epochs", "1"]
    args += ["--size", "32", "--camera-size", "32", "--publish", "--json"]
    runner = CliRunner()
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    decision = json.loads(first.stdout.strip().splitlines()[-1])
    assert decision["published"] and decision["reason"] == "no model serves yet"
    assert decision["challenger_bits"] == 32 and decision["challenger"] == decision["trained"]
    # the same seed trains the same model: it already serves, nothing is published again
    again = json.loads(runner.invoke(app, args).stdout.strip().splitlines()[-1])
    assert not again["published"] and again["reason"] == "already serving"
    log = read_releases(
        settings.kafka_bootstrap, settings.topics.models, settings.release_trusted()
    )
    assert [r.version for r in log.releases] == [decision["trained"]]
