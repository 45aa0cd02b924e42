"""`vigil topics` registers the contract's JSON Schemas with a schema registry when
VIGIL_SCHEMA_REGISTRY_URL is set. The registry is an in-process stand-in of its REST API
(tests/apps/registry_standin.py says why no real one runs here); the topics are real, on
the embedded broker."""

from __future__ import annotations

import base64
import json

import pytest
from typer.testing import CliRunner

from tests.apps.registry_standin import RegistryStandin
from vigil.apps.cli import app
from vigil.apps.process import free_port
from vigil.streams.contract import JSON_TOPICS, json_schema

pytestmark = pytest.mark.integration


@pytest.fixture
def env(bootstrap, namespace, tmp_path, monkeypatch):
    monkeypatch.setenv("VIGIL_KAFKA_BOOTSTRAP", bootstrap)
    monkeypatch.setenv("VIGIL_NAMESPACE", namespace)
    monkeypatch.setenv("VIGIL_STATE_DIR", str(tmp_path))
    return monkeypatch


def test_topics_registers_every_json_topics_schema_once(env, namespace):
    runner = CliRunner()
    with RegistryStandin() as registry:
        url = registry.url.replace("http://", "http://ops:p%40ss@")
        env.setenv("VIGIL_SCHEMA_REGISTRY_URL", url)
        first = runner.invoke(app, ["topics"])
        assert first.exit_code == 0, first.output
        again = runner.invoke(app, ["topics"])
        assert again.exit_code == 0, again.output
    want = {f"{namespace}.{s}-value": s for s in JSON_TOPICS}
    assert set(registry.subjects) == set(want)
    for subject, suffix in want.items():
        (version,) = registry.subjects[subject]  # the second run added no version
        assert version["schemaType"] == "JSON"
        assert json.loads(version["schema"]) == json_schema(suffix)
        assert f"{subject}: JSON Schema registered" in first.output
    assert first.output.count("registered, id") == len(JSON_TOPICS)

    def registered(output: str) -> list[str]:
        return [line for line in output.splitlines() if "registered, id" in line]

    assert registered(first.output) == registered(again.output)  # same ids: idempotent
    token = base64.b64encode(b"ops:p@ss").decode()
    assert set(registry.auth) == {f"Basic {token}"}


def test_a_refusing_or_absent_registry_is_a_clear_error(env):
    runner = CliRunner()
    with RegistryStandin(refuse=True) as registry:
        env.setenv("VIGIL_SCHEMA_REGISTRY_URL", registry.url.replace("//", "//u:secret@"))
        refused = runner.invoke(app, ["topics"])
    assert refused.exit_code == 1
    assert "refused" in refused.output and "(HTTP 409)" in refused.output
    assert "incompatible with an earlier schema" in refused.output
    env.setenv("VIGIL_SCHEMA_REGISTRY_URL", f"http://u:secret@127.0.0.1:{free_port()}")
    absent = runner.invoke(app, ["topics"])
    assert absent.exit_code == 1 and "cannot register" in absent.output
    assert "secret" not in absent.output
