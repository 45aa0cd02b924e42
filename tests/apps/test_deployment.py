"""docker-compose.yml and the Dockerfile cannot run here (no Docker engine): their
structure is checked against the CLI, the settings and each other, so they cannot drift,
and the facts a deployment depends on (a writable models volume, LightGBM's runtime, a
broker reachable from the host and kept on a volume, one image, readiness probes that
really probe) are asserted one by one. The probes' own commands run here for real."""

from __future__ import annotations

import base64
import re
import subprocess
import sys
from pathlib import Path

import yaml
from typer.testing import CliRunner

from vigil.apps.cli import app
from vigil.apps.metrics import Metrics, serve
from vigil.apps.process import free_port
from vigil.apps.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
DOCKERFILE = (ROOT / "Dockerfile").read_text()
SERVICES = COMPOSE["services"]
VIGIL = {n: s for n, s in SERVICES.items() if str(s.get("image", "")).startswith("vigil:")}
PORTS = {  # each long-running service's metrics port, as the settings define it
    "risk-worker": Settings.model_fields["risk_metrics_port"].default,
    "inspection-worker": Settings.model_fields["inspection_metrics_port"].default,
    "risk-trainer": Settings.model_fields["trainer_metrics_port"].default,
    "inspection-trainer": Settings.model_fields["trainer_metrics_port"].default,
}


def test_every_service_runs_a_real_vigil_command_with_known_settings():
    assert {"kafka", "prometheus"} | {"topics", "console", *PORTS} == set(SERVICES)
    assert set(VIGIL) == {"topics", "console", *PORTS}
    known = {f"VIGIL_{name.upper()}" for name in Settings.model_fields}
    runner = CliRunner()
    for name, service in VIGIL.items():
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
    assert SERVICES["topics"]["command"] == ["vigil", "topics"]
    assert SERVICES["topics"]["restart"] == "no"
    assert SERVICES["risk-worker"]["command"] == ["vigil", "worker", "risk"]
    assert SERVICES["inspection-worker"]["command"] == ["vigil", "worker", "inspection"]
    console = SERVICES["console"]
    assert console["command"][:2] == ["vigil", "ui"] and "0.0.0.0" in console["command"]
    port = console["command"][console["command"].index("--port") + 1]
    assert console["ports"] == [f"{port}:{port}"]
    for model in ("risk", "inspection"):
        command = SERVICES[f"{model}-trainer"]["command"]
        assert command[:3] == ["vigil", "train", model] and "--publish" in command
        assert "--every" in command
    # a generated risk model never reaches production by default
    assert "--allow-synthetic" not in SERVICES["risk-trainer"]["command"]
    # one models volume and one partition count for all of them
    assert {s["environment"]["VIGIL_PARTITIONS"] for s in VIGIL.values()} == {"8"}
    assert all("models:/models" in s["volumes"] for s in VIGIL.values())
    assert SERVICES["kafka"]["environment"]["KAFKA_PROCESS_ROLES"] == "broker,controller"


def _dockerfile_lines() -> list[str]:
    joined = re.sub(r"\\\n\s*", " ", DOCKERFILE)  # continuation lines joined
    return [ln.strip() for ln in joined.splitlines() if ln.strip() and not ln.startswith("#")]


def test_one_image_built_once_with_the_cpu_wheel_index_as_a_build_argument():
    images = {s["image"] for s in VIGIL.values()}
    builds = {yaml.safe_dump(s["build"]) for s in VIGIL.values()}
    assert len(images) == 1 and len(builds) == 1  # same name and build: built once
    build = next(iter(VIGIL.values()))["build"]
    assert build["context"] == "."
    index = build["args"]["PIP_EXTRA_INDEX_URL"]
    assert re.fullmatch(r"\$\{VIGIL_TORCH_INDEX:-https://\S+/cpu\}", index), index
    lines = _dockerfile_lines()
    arg = next(i for i, ln in enumerate(lines) if ln.startswith("ARG PIP_EXTRA_INDEX_URL"))
    install = next(i for i, ln in enumerate(lines) if "pip install" in ln)
    assert arg < install  # pip reads it as an environment variable during the install


def test_the_image_has_lightgbms_runtime_and_a_models_mount_point_its_user_owns():
    lines = _dockerfile_lines()
    assert lines[0].startswith("FROM python:3.11")
    apt = next(ln for ln in lines if "apt-get install" in ln)
    assert "libgomp1" in apt.split()
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] not in ("root", "0")
    user = users[-1]
    run = " ".join(ln for ln in lines if ln.startswith("RUN "))
    assert f"useradd --create-home --uid 1000 {user}" in run
    model_dir = next(iter(VIGIL.values()))["environment"]["VIGIL_MODEL_DIR"]
    assert f"mkdir -p {model_dir}" in run
    assert re.search(rf"chown {user}(:{user})? {re.escape(model_dir)}(\s|$)", run)
    assert all(f"models:{model_dir}" in s["volumes"] for s in VIGIL.values())


def test_the_broker_is_reachable_from_the_host_and_keeps_its_data_on_a_volume():
    kafka = SERVICES["kafka"]
    env = kafka["environment"]
    listeners = dict(x.split("://") for x in env["KAFKA_LISTENERS"].split(","))
    advertised = dict(x.split("://") for x in env["KAFKA_ADVERTISED_LISTENERS"].split(","))
    protocols = dict(x.split(":") for x in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(advertised) | {env["KAFKA_CONTROLLER_LISTENER_NAMES"]} == set(listeners)
    assert set(listeners) <= set(protocols)
    # the services' address is advertised on one listener, the host's on another
    inside = [n for n, a in advertised.items() if a == "kafka:9092"]
    assert inside and env["KAFKA_INTER_BROKER_LISTENER_NAME"] == inside[0]
    assert listeners[inside[0]].endswith(":9092")
    for mapping in kafka["ports"]:
        host_port, container_port = mapping.split(":")
        outside = [n for n, a in advertised.items() if a == f"localhost:{host_port}"]
        assert outside, f"nothing advertised for the published port {host_port}"
        assert listeners[outside[0]] == f":{container_port}"
    data = env["KAFKA_LOG_DIRS"]
    volume = next(v for v in kafka["volumes"] if v.endswith(f":{data}"))
    assert volume.split(":")[0] in COMPOSE["volumes"]
    # a formatted volume is only reused under the cluster id it was formatted with
    assert len(base64.urlsafe_b64decode(env["CLUSTER_ID"] + "==")) == 16


def _probe(service: str, port: int) -> int:
    test = SERVICES[service]["healthcheck"]["test"]
    assert test[0] == "CMD" and test[1] == "python"
    command = [sys.executable, *[a.replace(f":{PORTS[service]}/", f":{port}/") for a in test[2:]]]
    return subprocess.run(command, capture_output=True, timeout=30).returncode


def test_worker_healthchecks_probe_readiness_on_the_workers_own_port():
    for service in ("risk-worker", "inspection-worker"):
        test = " ".join(SERVICES[service]["healthcheck"]["test"])
        assert f"http://127.0.0.1:{PORTS[service]}/readyz" in test
        state = {"ready": False}
        port = free_port()
        server = serve(Metrics(service), lambda s=state: (s["ready"], "why"), "127.0.0.1", port)
        try:
            assert _probe(service, port) != 0  # 503: not ready
            state["ready"] = True
            assert _probe(service, port) == 0
        finally:
            server.stop()
        assert _probe(service, port) != 0  # nothing listening


INSPECTION_ROUND_PEAK_MIB = 8790  # a default round's peak resident set (docs/benchmarks.md)


def test_the_inspection_trainer_has_a_memory_limit_above_a_rounds_peak():
    limit = SERVICES["inspection-trainer"]["mem_limit"]
    value, unit = re.fullmatch(r"(\d+)([gm])", limit).groups()
    assert int(value) * (1024 if unit == "g" else 1) >= 1.25 * INSPECTION_ROUND_PEAK_MIB


def test_prometheus_scrapes_every_worker_and_trainer_on_its_metrics_port():
    prometheus = SERVICES["prometheus"]
    source = prometheus["configs"][0]
    assert source["target"] == "/etc/prometheus/prometheus.yml"
    config = yaml.safe_load(COMPOSE["configs"][source["source"]]["content"])
    scraped = {}
    for job in config["scrape_configs"]:
        (sd,) = job["dns_sd_configs"]
        for name in sd["names"]:
            scraped[name] = sd["port"]
    assert scraped == PORTS
