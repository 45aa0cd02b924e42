"""docker-compose.yml cannot run here (no Docker engine): its structure is checked against
the CLI and the settings, so it cannot drift from them."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from vigil.apps.cli import app
from vigil.apps.settings import Settings

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_every_service_runs_a_real_vigil_command_with_known_settings():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert "kafka" in services and {
        "topics",
        "risk-worker",
        "inspection-worker",
        "risk-trainer",
        "inspection-trainer",
    } <= set(services)
    known = {f"VIGIL_{name.upper()}" for name in Settings.model_fields}
    runner = CliRunner()
    for name, service in services.items():
        if name == "kafka":
            continue
        command = service["command"]
        assert command[0] == "vigil", name
        help_run = runner.invoke(app, [*command[1:], "--help"])
        assert help_run.exit_code == 0, (name, help_run.output)
        env = service["environment"]
        assert set(env) <= known, (name, set(env) - known)
        assert env["VIGIL_KAFKA_BOOTSTRAP"] == "kafka:9092"
        assert service["depends_on"]["kafka"]["condition"] == "service_healthy"

        if name != "topics":  # topics exist (control topics kept forever) before anything runs
            assert service["depends_on"]["topics"]["condition"] == "service_completed_successfully"
            # workers hold only the public key; trainers sign (no development key anywhere)
            assert env["VIGIL_RELEASE_PUBLIC_KEYS"] == "/run/secrets/release_pub"
            assert "release_pub" in service["secrets"]
            signs = name.endswith("-trainer")
            assert ("VIGIL_RELEASE_SIGNING_KEY" in env) == signs, name
            assert ("release_key" in service["secrets"]) == signs, name


def test_the_stack_initialises_topics_runs_both_workers_and_refreshes_both_models():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert services["topics"]["command"] == ["vigil", "topics"]
    assert services["risk-worker"]["command"] == ["vigil", "worker", "risk"]
    assert services["inspection-worker"]["command"] == ["vigil", "worker", "inspection"]
    for model in ("risk", "inspection"):
        command = services[f"{model}-trainer"]["command"]
        assert command[:3] == ["vigil", "train", model] and "--publish" in command
        assert "--every" in command
    # one models volume and one partition count for all of them
    vigil = [s for n, s in services.items() if n != "kafka"]
    assert {s["environment"]["VIGIL_PARTITIONS"] for s in vigil} == {"8"}
    assert all("models:/models" in s.get("volumes", ["models:/models"]) for s in vigil)
    assert services["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"
