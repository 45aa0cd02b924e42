"""The ``vigil`` command as a user runs it: clear errors, publish and consume round trip."""

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from vigil.apps.cli import app

runner = CliRunner()


def test_without_a_broker_commands_say_how_to_get_one(tmp_path, monkeypatch):
    monkeypatch.delenv("VIGIL_KAFKA_BOOTSTRAP", raising=False)
    monkeypatch.setenv("VIGIL_STATE_DIR", str(tmp_path))
    result = runner.invoke(app, ["consume", "alerts"])
    assert result.exit_code == 2
    assert "vigil broker" in result.output and "VIGIL_KAFKA_BOOTSTRAP" in result.output


def test_bad_configuration_is_named(monkeypatch):
    monkeypatch.setenv("VIGIL_PARTITIONS", "zero")
    result = runner.invoke(app, ["consume", "alerts"])
    assert result.exit_code == 2
    assert "invalid configuration" in result.output and "partitions" in result.output


def test_rates_show_and_validate_say_what_a_table_holds_or_what_is_wrong(tmp_path, monkeypatch):
    shown = runner.invoke(app, ["rates", "show"])
    assert shown.exit_code == 0 and "reference:2026-12" in shown.output and "JPY" in shown.output
    good = tmp_path / "good.yaml"
    good.write_text('name: t\nversion: "1"\nbase: CHF\nrates: {EUR: 0.93, USD: 0.8}\n')
    listed = runner.invoke(app, ["rates", "show", str(good)]).output
    assert "CHF per unit" in listed and "0.93" in listed and "JPY" not in listed
    refused = runner.invoke(app, ["rates", "validate", str(good)])
    assert refused.exit_code == 1 and "is in CHF, the reporting currency is EUR" in refused.output
    monkeypatch.setenv("VIGIL_REPORTING_CURRENCY", "CHF")
    ok = runner.invoke(app, ["rates", "validate", str(good)])
    assert ok.exit_code == 0 and "valid: t:1, 3 currencies in CHF" in ok.output
    bad = tmp_path / "bad.yaml"
    bad.write_text('name: t\nversion: "1"\nbase: CHF\nrates: {EUR: -1}\n')
    refused = runner.invoke(app, ["rates", "validate", str(bad)])
    assert refused.exit_code == 1 and "rate of EUR is -1.0" in refused.output
    missing = runner.invoke(app, ["rates", "validate", str(tmp_path / "none.yaml")])
    assert missing.exit_code == 1 and "cannot read rates table" in missing.output


def test_config_prints_the_settings_in_effect(monkeypatch):
    monkeypatch.setenv("VIGIL_NAMESPACE", "bank-eu")
    monkeypatch.setenv("VIGIL_PARTITIONS", "12")
    result = runner.invoke(app, ["config", "--json"])
    assert result.exit_code == 0, result.output
    shown = json.loads(result.output)
    assert shown["VIGIL_NAMESPACE"] == "bank-eu" and shown["VIGIL_PARTITIONS"] == "12"
    # every setting, defaults too: one per variable the configuration doc lists
    doc = Path(__file__).resolve().parents[2] / "docs" / "configuration.md"
    listed = doc.read_text().count("\n| `VIGIL_")
    assert len(shown) == listed and shown["VIGIL_BATCH_SIZE"] == "4000"


@pytest.mark.integration
def test_replay_a_jsonl_file_and_read_it_back(settings, tmp_path, monkeypatch):
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("VIGIL_NAMESPACE", settings.namespace)
    lines = ['{"tx_id": "r1"}', "not json at all", '{"tx_id": "r2", "account_id": "acc-1"}']
    path = tmp_path / "h.jsonl"
    path.write_text("\n".join(lines) + "\n")
    result = runner.invoke(app, ["publish", "transactions", "--file", str(path), "--count", "10"])
    assert result.exit_code == 0, result.output
    assert "published 3 records" in result.output
    # read them back raw from the transactions topic through the client the CLI uses
    from vigil.apps.clients import read_topic

    got = sorted(
        str(v) for _k, v, _ts in read_topic(settings.kafka_bootstrap, settings.topics.transactions)
    )
    assert got == sorted(
        ["{'tx_id': 'r1'}", "b'not json at all'", "{'tx_id': 'r2', 'account_id': 'acc-1'}"]
    )
    result = runner.invoke(app, ["consume", "dlq", "--json"])
    assert result.exit_code == 0 and result.output.strip() == ""  # no worker ran: empty DLQ


@pytest.mark.integration
def test_consume_prints_a_table_or_json_lines(settings, monkeypatch):
    from vigil.apps.clients import publish

    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("VIGIL_NAMESPACE", settings.namespace)
    alert = {
        "alert_id": "x",
        "tx_id": "t9",
        "account_id": "a9",
        "decision": "block",
        "score": 0.95,
        "reasons": [{"code": "LARGE_TRANSFER", "detail": "big", "weight": 0.8}],
    }
    publish(settings.kafka_bootstrap, settings.topics.alerts, [("a9", json.dumps(alert).encode())])
    table = runner.invoke(app, ["consume", "alerts"])
    assert table.exit_code == 0 and "t9" in table.output and "LARGE_TRANSFER: big" in table.output
    lines = runner.invoke(app, ["consume", "alerts", "--json", "--limit", "1"])
    assert [json.loads(x) for x in lines.output.splitlines()] == [alert]


def test_a_settings_copy_in_another_namespace_names_its_own_topics():
    from vigil.apps.settings import Settings

    base = Settings(namespace="one")
    assert base.topics.transactions == "one.transactions"
    other = base.model_copy(update={"namespace": "two"})
    assert (other.topics.transactions, other.topics.scores) == (
        "two.transactions",
        "two.risk.scores",
    )


def test_an_unreachable_broker_is_a_clear_error(monkeypatch):
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", "127.0.0.1:1")
    result = runner.invoke(app, ["publish", "transactions", "--count", "3"])
    assert result.exit_code == 2
    assert "cannot reach a Kafka broker at '127.0.0.1:1'" in result.output


def test_undelivered_records_are_counted_not_reported_as_published():
    from vigil.apps.clients import publish

    result = publish("127.0.0.1:1", "t", [(b"k", b"v")] * 3, flush_timeout_s=0.5)
    assert (result.count, result.failed, result.delivered) == (3, 3, 0)


def test_generate_then_backtest_as_json(tmp_path):
    tx, labels = tmp_path / "tx.jsonl", tmp_path / "labels.jsonl"
    made = runner.invoke(
        app,
        [
            "generate",
            "--count",
            "3000",
            "--out",
            str(tx),
            "--labels",
            str(labels),
            "--seed",
            "3",
            "--accounts",
            "100",
        ],
    )
    assert made.exit_code == 0, made.output
    assert len(tx.read_text().splitlines()) == 3000 == len(labels.read_text().splitlines())
    from importlib import resources

    seed = resources.files("vigil.streams.rules").joinpath("rulesets", "seed.yaml")
    result = runner.invoke(
        app, ["rules", "backtest", str(seed), "--input", str(tx), "--labels", str(labels), "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert report["ruleset"] == "seed:2" and report["transactions"] == 3000
    assert [r["name"] for r in report["rules"]] == ["large_transfer", "frequent_small"]


def test_a_bad_labels_file_names_the_line(tmp_path):
    (tmp_path / "tx.jsonl").write_text("{}\n")
    (tmp_path / "labels.jsonl").write_text('{"tx_id": "a", "label": 1}\nnot json\n')
    from importlib import resources

    seed = resources.files("vigil.streams.rules").joinpath("rulesets", "seed.yaml")
    result = runner.invoke(
        app,
        [
            "rules",
            "backtest",
            str(seed),
            "--input",
            str(tmp_path / "tx.jsonl"),
            "--labels",
            str(tmp_path / "labels.jsonl"),
        ],
    )
    text = " ".join(result.output.split())  # rich wraps long lines
    assert result.exit_code == 2 and "labels.jsonl:2: not a label record" in text


@pytest.mark.integration
def test_publish_with_labels_writes_the_ground_truth(settings, monkeypatch):
    from vigil.apps.clients import read_topic
    from vigil.streams.schemas import Label
    from vigil.streams.sources import GeneratorConfig, TransactionGenerator

    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("VIGIL_NAMESPACE", settings.namespace)
    result = runner.invoke(
        app,
        [
            "publish",
            "transactions",
            "--count",
            "500",
            "--with-labels",
            "--malformed-rate",
            "0.05",
            "--seed",
            "4",
        ],
    )
    assert result.exit_code == 0, result.output
    # the CLI defaults
    cfg = GeneratorConfig(
        seed=4, malformed_rate=0.05, typology_rate=0.002, flow_typology_rate=0.001
    )
    gen = TransactionGenerator(cfg).take(500)
    want = sorted((g.tx["tx_id"], g.label, g.typology) for g in gen if g.tx is not None)
    labels = [
        Label.model_validate(v)
        for _k, v, _ in read_topic(settings.kafka_bootstrap, settings.topics.labels)
    ]
    assert sorted((lab.tx_id, lab.label, lab.typology) for lab in labels) == want
    assert len(want) < 500  # malformed records have no label


def test_bench_features_reports_its_workload_as_json():
    result = runner.invoke(
        app, ["bench", "features", "--events", "2000", "--batch", "500", "--json"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    from vigil.streams.features.library import FEATURE_SPEC
    from vigil.streams.pipeline import RULE_NAMES
    from vigil.streams.rules import default_ruleset

    aml = default_ruleset(RULE_NAMES)
    assert (report["events"], report["batch"], report["rules"]) == (2000, 500, len(aml.rules))
    assert (report["features"], report["feature_spec"]) == (
        len(FEATURE_SPEC.names),
        FEATURE_SPEC.label,
    )
    assert report["ruleset"] == aml.label == "aml:4" and report["us_per_tx"] > 0
    assert report["metrics_us_per_tx"] > 0
    assert report["metrics_share"] == pytest.approx(
        report["metrics_us_per_tx"] / report["us_per_tx"], abs=1e-4
    )
    stages = report["stage_us_per_tx"]
    assert set(stages) == {"decode", "state", "features", "rules", "outputs"}
    assert report["features_rules_us_per_tx"] == pytest.approx(
        stages["features"] + stages["rules"], abs=0.011
    )
    assert sum(stages.values()) <= report["us_per_tx"] + 0.1


def test_train_risk_from_a_labelled_history_writes_a_model_workers_can_load(tmp_path):
    from vigil.models.kinds import RISK

    tx, labels, models = tmp_path / "tx.jsonl", tmp_path / "labels.jsonl", tmp_path / "models"
    made = runner.invoke(
        app,
        [
            "generate",
            *("--count", "12000", "--accounts", "400", "--seed", "5"),
            *("--typology-rate", "0.006", "--flow-typology-rate", "0.003"),
            *("--out", str(tx), "--labels", str(labels)),
        ],
    )
    assert made.exit_code == 0, made.output
    result = runner.invoke(
        app,
        [
            "train",
            "risk",
            *("--input", str(tx), "--labels", str(labels)),
            *("--holdout-days", "3", "--out", str(models), "--json"),
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.output.strip().splitlines()[-1])
    assert set(report["models"]) == {"rules_only", "lightgbm", "nn", "hybrid"}
    assert report["positives"] > 0
    scorer = RISK.load_latest(models)
    assert scorer is not None and scorer.version == report["version"]
    # --input without --labels is a usage error, not a crash
    bad = runner.invoke(app, ["train", "risk", "--input", str(tx), "--out", str(models)])
    assert bad.exit_code == 2 and "go together" in bad.output


@pytest.mark.slow
@pytest.mark.integration
def test_bench_risk_with_two_workers_scores_every_event_once(settings):
    from vigil.apps.bench import bench_risk
    from vigil.streams.sources import GeneratorConfig, TransactionGenerator

    events = 400
    settings.topics.all(settings.partitions)  # the bench runs in a namespace of its own
    report = bench_risk(settings, events=events, workers=2, timeout_s=120)
    gen = TransactionGenerator(GeneratorConfig(seed=7)).take(events)
    valid = sum(1 for g in gen if g.tx is not None)
    assert report["events"] == events and report["scored"] == valid == events
    assert not report["timed_out"] and report["model_versions"] == ["rules-only"]
    assert report["p50_ms"] <= report["p99_ms"] and len(report["p99_ms_by_tenth"]) == 10


@pytest.mark.integration
def test_publish_frames_puts_decodable_ordered_frames_per_camera(settings, monkeypatch, tmp_path):
    from vigil.apps.clients import read_messages
    from vigil.streams.frames import decode_frame

    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("VIGIL_NAMESPACE", settings.namespace)
    labels = tmp_path / "frames.jsonl"
    args = ["publish", "frames", "--cameras", "2", "--fps", "200", "--seconds", "0.2"]
    result = runner.invoke(app, [*args, "--size", "64", "--labels", str(labels)])
    assert result.exit_code == 0, result.output
    assert "published 80 frames from 2 camera(s)" in result.output
    by_camera: dict[str, list] = {}
    for msg in read_messages(settings.kafka_bootstrap, settings.topics.frames):
        frame = decode_frame(msg.key(), msg.value(), msg.headers())
        assert frame.image.shape == (64, 64)
        by_camera.setdefault(frame.camera_id, []).append((msg.partition(), frame.seq))
    assert sorted(by_camera) == ["cam-0", "cam-1"]
    for got in by_camera.values():
        assert len({p for p, _ in got}) == 1  # one camera, one partition: its order is kept
        assert [s for _, s in got] == list(range(40))
    truth = [json.loads(line) for line in labels.read_text().splitlines()]
    assert len(truth) == 80 and {t["camera_id"] for t in truth} == {"cam-0", "cam-1"}
    bad = runner.invoke(app, ["publish", "frames", "--codec", "gif"])
    assert bad.exit_code == 2 and "unknown codec 'gif'" in bad.output


def test_bench_inspection_without_a_model_says_how_to_train_one(tmp_path, monkeypatch):
    monkeypatch.setenv("VIGIL_MODEL_DIR", str(tmp_path))
    result = runner.invoke(app, ["bench", "inspection", "--seconds", "1"])
    assert result.exit_code == 1
    assert "no inspection model" in result.output and "vigil train inspection" in result.output
    result = runner.invoke(app, ["bench", "inspection", "--codec", "gif"])
    assert result.exit_code == 2 and "unknown codec 'gif'" in result.output


@pytest.mark.slow
def test_bench_hybrid_evaluates_each_history_as_training_would():
    """Two small histories in two spawned processes: each row is what training and
    evaluating that history's seed gives in this process, and the summary is their mean."""
    from vigil.models.risk import (
        WARMUP_DAYS,
        TabularConfig,
        evaluate,
        history_from_generator,
        temporal_split,
    )
    from vigil.models.risk import train as train_model

    args = ["--days", "6", "--holdout-days", "2", "--accounts", "300", "--seed", "3"]
    result = runner.invoke(
        app, ["bench", "hybrid", "--histories", "2", "--jobs", "2", *args, "--json"]
    )
    assert result.exit_code == 0, result.output
    assert "history 4 (" in result.stderr  # progress, beside the JSON on stdout
    report = json.loads(result.stdout)
    assert [r["seed"] for r in report["runs"]] == [3, 4]
    history = history_from_generator(6, seed=4, accounts=300, warmup_days=WARMUP_DAYS)
    train_set, test_set = temporal_split(history, 2)
    want = evaluate(train_model(train_set, TabularConfig(seed=4), say=lambda _m: None), test_set)
    run = report["runs"][1]
    assert run["auc_pr"] == {name: m["auc_pr"] for name, m in want["models"].items()}
    assert run["hybrid_vs"] == {name: d["difference"] for name, d in want["hybrid_vs"].items()}
    assert run["log_loss"] == {
        name: m["calibration"]["log_loss"]
        for name, m in want["models"].items()
        if name != "rules_only"
    }
    leads = [r["hybrid_vs"]["lightgbm"] for r in report["runs"]]
    assert report["hybrid_vs"]["lightgbm"]["mean"] == pytest.approx(np.mean(leads), abs=1e-5)
    # log-loss: lower is better, so the lead is LightGBM's minus the hybrid's
    leads = [r["log_loss"]["lightgbm"] - r["log_loss"]["hybrid"] for r in report["runs"]]
    got = report["hybrid_log_loss_vs"]["lightgbm"]
    assert got["mean"] == pytest.approx(np.mean(leads), abs=1e-5)
    assert set(report["hybrid_log_loss_vs"]) == {"lightgbm", "nn"}


def test_bench_hybrid_refuses_a_hold_out_as_long_as_the_history():
    result = runner.invoke(app, ["bench", "hybrid", "--days", "4", "--holdout-days", "4"])
    assert result.exit_code == 2
    assert "nothing to train on" in result.output


@pytest.mark.parametrize(
    ("when", "reason", "message"),
    [
        (" + ".join(["amount"] * 490) + " > 1", "r", "too deep"),
        ("(" * 90 + "amount > 1" + ")" * 90, "r", "nested too deeply"),
        ("amount > 1", "{amount:>1500000}", "width and precision are at most 64"),
    ],
)
def test_rules_validate_refuses_bombs_in_one_line_without_a_traceback(
    tmp_path, when, reason, message
):
    doc = {"ruleset": "x", "version": "1", "rules": [{"name": "bomb", "typology": "t",
           "when": when, "score": 0.5, "reason": reason}]}  # fmt: skip
    path = tmp_path / "bomb.json"
    path.write_text(json.dumps(doc))
    result = runner.invoke(app, ["rules", "validate", str(path)])
    assert result.exit_code == 1, result.output
    assert message in result.output and "rule 'bomb'" in result.output
    assert "Traceback" not in result.output and "RecursionError" not in result.output
    nested = tmp_path / "nested.yaml"
    nested.write_text("[" * 5000 + "]" * 5000)
    result = runner.invoke(app, ["rules", "validate", str(nested)])
    assert result.exit_code == 1 and "nested over 16 levels" in result.output, result.output


def test_keys_generate_makes_a_pair_workers_trust_without_the_private_half(tmp_path):
    from vigil.apps.settings import Settings
    from vigil.models.registry import canonical, sign_manifest
    from vigil.models.signing import SigningKey

    out = tmp_path / "keys"
    made = runner.invoke(app, ["keys", "generate", "--out", str(out)])
    assert made.exit_code == 0, made.output
    assert (out / "release.key").stat().st_mode & 0o777 == 0o600
    assert f"VIGIL_RELEASE_PUBLIC_KEYS={out / 'release.pub'}" in made.output
    again = runner.invoke(app, ["keys", "generate", "--out", str(out)])
    assert again.exit_code == 1 and "not overwritten" in again.output
    # a worker configured with the public key alone: no development key is made anywhere
    worker = Settings(state_dir=tmp_path / "state", release_public_keys=str(out / "release.pub"))
    trusted = worker.release_trusted()
    assert not (tmp_path / "state").exists()
    signed = sign_manifest({"name": "risk"}, SigningKey.load(out / "release.key"))
    trusted.verify(canonical(signed), signed["signature"])
    wrong_half = {"VIGIL_RELEASE_SIGNING_KEY": str(out / "release.pub")}
    result = runner.invoke(app, ["models", "publish", str(tmp_path)], env=wrong_half)
    assert result.exit_code == 2 and "is not a PEM private key" in result.output


def test_expected_errors_are_one_line_and_bugs_keep_their_traceback(monkeypatch, capsys):
    # A stand-in for a command (mock): which command fails does not matter, only how main()
    # reports what escapes it.
    import vigil.apps.cli as cli
    from vigil.errors import DataError

    def fails_as_expected() -> None:
        raise DataError("labels.jsonl:3: not a label record")

    monkeypatch.setattr(cli, "app", fails_as_expected)
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 1
    err = capsys.readouterr().err
    assert "error: labels.jsonl:3: not a label record" in err and "Traceback" not in err

    def has_a_bug() -> None:
        raise ValueError("operands could not be broadcast together")

    monkeypatch.setattr(cli, "app", has_a_bug)
    with pytest.raises(ValueError, match="broadcast"):  # not swallowed into one line
        cli.main()


def test_every_error_vigil_raises_on_purpose_is_a_vigil_error():
    from vigil.apps.broker import BrokerError
    from vigil.apps.releases import PublishError
    from vigil.errors import VigilError
    from vigil.models.registry import ReleaseError
    from vigil.models.serving import ModelError
    from vigil.models.signing import SignatureError
    from vigil.streams.frames import FrameError
    from vigil.streams.rules import RuleError

    for error in (BrokerError, PublishError, ReleaseError, ModelError, SignatureError):
        assert issubclass(error, VigilError), error
    for error in (FrameError, RuleError):  # bad input: still a ValueError for callers
        assert issubclass(error, VigilError) and issubclass(error, ValueError), error


@pytest.mark.slow
def test_the_demo_runs_the_whole_stack_and_accounts_for_every_transaction(tmp_path):
    """``make demo`` (``vigil demo``) on its own embedded broker: every published transaction
    ends scored or dead-lettered (the demo's publisher sends some malformed ones), and
    within its 100 s both workers serve demo models (the risk one trained as it runs, the
    inspection one shipped)."""
    import os
    import re
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "VIGIL_KAFKA_BOOTSTRAP"}
    env |= {"VIGIL_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
    run = subprocess.run(
        [sys.executable, "-m", "vigil.apps.cli", "demo", "--duration", "100", "--ui-port", "0"],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    said = " ".join((run.stdout + run.stderr).split())
    found = re.search(r"published (\d+), scored (\d+), alerts (\d+), dead letters (\d+)", said)
    assert found, said[-2000:]
    published, scored, _alerts, dead = map(int, found.groups())
    assert published > 0 and scored + dead == published
    served = re.search(r"last served: risk (\S+), inspection (\S+)", said)
    assert served and served[1].startswith("risk-demo-"), said[-500:]
    assert served[2].startswith("inspection-demo-"), said[-500:]


def _children(pid: int) -> set[int]:
    """Processes whose parent is ``pid`` (from /proc)."""
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                found.add(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGHUP"])
def test_a_terminated_demo_stops_the_broker_and_workers_it_started(tmp_path, sig):
    """A supervisor's SIGTERM or a closed terminal's SIGHUP stops the demo the way Ctrl-C
    does: its workers and broker (in sessions of their own) do not run on."""
    import os
    import signal
    import subprocess
    import sys
    import time

    env = {k: v for k, v in os.environ.items() if k != "VIGIL_KAFKA_BOOTSTRAP"}
    env |= {"VIGIL_STATE_DIR": str(tmp_path / "state"), "COLUMNS": "200"}
    demo = subprocess.Popen(
        [sys.executable, "-m", "vigil.apps.cli", "demo"],
        env=env,
        cwd=tmp_path,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        deadline = time.monotonic() + 120
        started: set[int] = set()
        while len(started) < 3 and time.monotonic() < deadline:  # broker + two workers
            started = _children(demo.pid)
            time.sleep(0.5)
        assert len(started) >= 3, started
        time.sleep(3)  # the workers past their start
        demo.send_signal(getattr(signal, sig))
        output, _ = demo.communicate(timeout=120)
    finally:
        if demo.poll() is None:
            demo.kill()
    assert "stopping: publisher, worker, broker" in output, output[-2000:]
    assert "published" in output
    time.sleep(1)
    running = {p for p in started if Path(f"/proc/{p}").exists()}
    zombies = {p for p in running if (Path(f"/proc/{p}/stat").read_text().split(") ")[1][0] == "Z")}
    assert running <= zombies, f"still running after the demo exited: {running - zombies}"


@pytest.mark.integration
def test_label_a_transaction_or_an_alert_and_a_bad_id_is_a_clear_error(settings, monkeypatch):
    from tests.reference import wire
    from vigil.apps.clients import publish, read_topic

    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", settings.kafka_bootstrap)
    monkeypatch.setenv("VIGIL_NAMESPACE", settings.namespace)
    txs = [wire(f"lt{i}", f"acct-{i}", f"bene-{i}", i, 50.0 + i) for i in range(30)]
    publish(
        settings.kafka_bootstrap,
        settings.topics.transactions,
        [(t["account_id"], json.dumps(t).encode()) for t in txs],
    )
    alert = {"alert_id": "al-7", "tx_id": "lt7", "account_id": "acct-7", "decision": "block"}
    publish(
        settings.kafka_bootstrap, settings.topics.alerts, [("acct-7", json.dumps(alert).encode())]
    )

    fraud = runner.invoke(app, ["label", "lt12", "--fraud", "--typology", "mule"])
    assert fraud.exit_code == 0, fraud.output
    legit = runner.invoke(app, ["label", "al-7", "--legit"])
    assert legit.exit_code == 0, legit.output
    labels = [v for _k, v, _ts in read_topic(settings.kafka_bootstrap, settings.topics.labels)]
    by_tx = {v["tx_id"]: v for v in labels}
    assert by_tx["lt12"]["label"] == 1 and by_tx["lt12"]["typology"] == "mule"
    assert (by_tx["lt12"]["account_id"], by_tx["lt12"]["counterparty_id"]) == ("acct-12", "bene-12")
    assert by_tx["lt12"]["tx_ts_ms"] == txs[12]["ts_ms"]
    assert by_tx["lt7"]["label"] == 0 and by_tx["lt7"]["counterparty_id"] == "bene-7"
    from vigil.streams.schemas import Label

    assert all(Label.model_validate(v) for v in labels)  # the contract's label records

    missing = runner.invoke(app, ["label", "no-such-id", "--fraud"])
    assert missing.exit_code == 1
    assert "neither a transaction" in missing.output and "no-such-id" in missing.output
    unsaid = runner.invoke(app, ["label", "lt12"])
    assert unsaid.exit_code == 2 and "--fraud or --legit" in unsaid.output
    too_long = runner.invoke(app, ["label", "lt12", "--fraud", "--typology", "x" * 65])
    assert too_long.exit_code == 2 and "--typology" in too_long.output
