"""docker-compose.yml cannot run here (no Docker engine): its structure is checked against
the CLI and the settings, so it cannot drift from them."""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from apps.cli import app
from apps.settings import Settings

COMPOSE = Path(__file__).resolve().parents[2] / "docker-compose.yml"


def test_every_service_runs_a_real_vigil_command_with_known_settings():
    services = yaml.safe_load(COMPOSE.read_text())["services"]
    assert "kafka" in services and {"risk-worker", "inspection-worker"} <= set(services)
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
