"""``vigil broker`` (the embedded development broker) and ``vigil topics``."""

from __future__ import annotations

import threading

import typer

from vigil.apps.broker import (
    BrokerError,
    EmbeddedBroker,
    clear_runtime,
    ensure_all,
    write_runtime,
)
from vigil.apps.cli.base import (
    app,
    console,
    fail,
    get_bootstrap,
    get_settings,
    out,
    setup_logging,
)
from vigil.apps.process import stop_on_signals


@app.command()
def broker(port: int = typer.Option(0, help="listen port on 127.0.0.1 (0 = a free one)")) -> None:
    """Run the embedded Kafka-compatible broker (Tansu, in memory) until Ctrl-C."""
    settings = get_settings()
    setup_logging(settings)
    try:
        b = EmbeddedBroker(port=port).start()
    except BrokerError as exc:
        fail(exc, 1)
    try:
        created = ensure_all(
            b.bootstrap, settings.topics, settings.partitions, settings.replication_factor
        )
        write_runtime(settings, b)
        console.print(
            f"broker ready on [bold]{b.bootstrap}[/] (created {len(created)} topics); "
            f"other vigil commands here find it. Ctrl-C stops it and discards all data."
        )
        out.print(b.bootstrap)
        try:
            with stop_on_signals(threading.Event()) as stop:
                while b.running and not stop.wait(0.5):
                    pass
        except KeyboardInterrupt:
            pass
    finally:
        clear_runtime(settings)
        b.stop()


@app.command()
def topics(
    replication: int | None = typer.Option(
        None,
        min=1,
        help="replication factor of topics it creates (default: VIGIL_REPLICATION_FACTOR)",
    ),
) -> None:
    """Create every topic of the namespace that does not exist yet (VIGIL_PARTITIONS
    partitions; the control topics, models and rules, one partition, kept forever), then
    list them. Idempotent: the deployment's topic initialisation."""
    settings = get_settings()
    bootstrap = get_bootstrap(settings)
    try:
        created = ensure_all(
            bootstrap,
            settings.topics,
            settings.partitions,
            replication or settings.replication_factor,
        )
    except BrokerError as exc:
        fail(exc, 1)
    configs = settings.topics.configs()
    for name, partitions in settings.topics.all(settings.partitions).items():
        state = "created" if name in created else "exists"
        kept = " (kept forever)" if name in configs else ""
        out.print(f"{name}: {partitions} partition{'s' if partitions > 1 else ''}, {state}{kept}")
    if settings.schema_registry_url:
        from vigil.apps.registry import RegistryError, register_schemas

        try:
            ids = register_schemas(settings.schema_registry_url, settings.topics)
        except RegistryError as exc:
            fail(exc, 1)
        for subject, schema_id in ids.items():
            out.print(f"{subject}: JSON Schema registered, id {schema_id}")
