"""The fault suite's short version (``vigil chaos`` as `make test` runs it): real worker
processes on the embedded broker, killed, fuzzed, bombed and fed attack releases; every
count that must be zero is zero."""

from __future__ import annotations

import json

import pytest
from typer.testing import CliRunner

from vigil.apps.cli import app

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_vigil_chaos_short_run_loses_nothing_and_refuses_every_attack(tmp_path, monkeypatch):
    monkeypatch.setenv("VIGIL_STATE_DIR", str(tmp_path / "state"))
    monkeypatch.delenv("VIGIL_KAFKA_BOOTSTRAP", raising=False)  # its own embedded brokers
    args = ["chaos", "--events", "6000", "--rate", "1500", "--kills", "2", "--fuzz", "90"]
    args += ["--rules", "--releases", "--soak-minutes", "0.5", "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout.strip().splitlines()[-1])

    kills = report["kills"]
    assert kills["finished"] and kills["scored"] == kills["published"] == 6000
    assert kills["neither"] == kills["dead_lettered"] == 0
    assert kills["feature_values_differing"] == kills["duplicates_that_differ"] == 0
    assert kills["alerts_missing"] == kills["alerts_unexpected"] == 0
    assert len(kills["restart_to_scoring_s"]) == 2 and None not in kills["restart_to_scoring_s"]

    fuzz = report["fuzz"]
    assert fuzz["kinds"] >= 30 and fuzz["kinds_not_as_expected"] == []
    assert fuzz["neither"] == fuzz["unpublished"] == 0
    assert fuzz["scored"] + fuzz["dead_lettered"] == fuzz["hostile"] == 90
    assert fuzz["allow_with_invalid_score"] == fuzz["invalid_score_records"] == 0
    assert fuzz["worker_alive"] and fuzz["worker_restarts"] == 0

    rules = report["rules"]
    assert rules["refused"] == rules["bombs"] and rules["worker_alive"]
    assert rules["scored"] == rules["published"] and rules["valid_ruleset_applied_after"]

    releases = report["releases"]
    assert releases["refused"] == releases["attacks"] and releases["serving_unchanged"]
    assert releases["worker_alive"]

    soak = report["soak"]
    assert soak["worker_alive"] and soak["published"] > 0
