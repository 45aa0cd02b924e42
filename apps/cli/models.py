"""``vigil models ...``: model releases on the stream: publish, list, roll back."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.table import Table

from vigil.apps.broker import (
    ensure_one,
)
from vigil.apps.cli.base import (
    app,
    console,
    fail,
    get_bootstrap,
    get_settings,
    get_signer,
    out,
)

models_app = typer.Typer(
    help="Model releases on the stream: publish, list, roll back.", no_args_is_help=True
)
app.add_typer(models_app, name="models")


@models_app.command("publish")
def models_publish(
    model_dir: Path = typer.Argument(..., help="a model directory (vigil train / vigil export)"),
) -> None:
    """Sign a model directory as a release and publish it: running workers verify it
    (signature, hashes, input spec, parity on its golden batch) and swap it in between two
    micro-batches."""
    from vigil.apps.releases import PublishError, publish_release
    from vigil.models.registry import build_release
    from vigil.models.serving import ModelError

    settings = get_settings()
    signer = get_signer(settings)  # a key problem is said before the broker is reached
    bootstrap = get_bootstrap(settings)
    ensure_one(bootstrap, settings.topics, settings.topics.models, settings.replication_factor)
    try:
        release = build_release(model_dir, signer)
        n = publish_release(bootstrap, settings.topics.models, release)
    except (ModelError, PublishError) as exc:
        fail(exc, 1)
    console.print(
        f"published {release.name} {release.version} ({release.manifest['bits']}-bit, "
        f"{release.manifest['size']} bytes, {n} records) to {settings.topics.models}"
    )


@models_app.command("list")
def models_list(as_json: bool = typer.Option(False, "--json", help="one JSON object per line")):
    """Every release on the models topic, verified as a worker would (signature, hashes);
    refused and incomplete ones too. The newest valid release of each model is marked."""
    from datetime import UTC, datetime

    from vigil.apps.releases import read_releases

    settings = get_settings()
    bootstrap = get_bootstrap(settings)
    rows = read_releases(bootstrap, settings.topics.models, settings.release_trusted()).rows()
    if as_json:
        for row in rows:
            print(json.dumps(row))
        return
    table = Table("model", "version", "bits", "size", "published (UTC)", "parent", "status")
    for row in rows:
        when = row.get("published_ms")
        table.add_row(
            row.get("name", "?"),
            row["version"] + (" *" if row.get("latest") else ""),
            str(row.get("bits", "")),
            str(row.get("size", "")),
            datetime.fromtimestamp(when / 1000, UTC).strftime("%Y-%m-%d %H:%M:%S") if when else "",
            row.get("parent_version") or "",
            row["status"],
        )
    out.print(table)
    count = f"{len(rows)} row{'s' if len(rows) != 1 else ''}"
    out.print(f"* the newest valid release of each model: what workers serve ({count})")


@models_app.command("rollback")
def models_rollback(
    name: str = typer.Argument(..., help="model name: risk or inspection"),
    version: str = typer.Argument(..., help="the version to serve again (vigil models list)"),
) -> None:
    """Serve an older version again: its payload is published anew under a new signed
    manifest (a new sequence, ``rollback: true``; workers refuse a plain replay of an old
    release), from the topic or built from its directory under MODELS."""
    from vigil.apps.releases import PublishError, find_model_dir, publish_release, read_releases
    from vigil.models.registry import build_release, resign
    from vigil.models.serving import ModelError

    settings = get_settings()
    signer = get_signer(settings)
    bootstrap = get_bootstrap(settings)
    log = read_releases(bootstrap, settings.topics.models, settings.release_trusted())
    serving = log.latest(name)
    release = log.find(name, version)
    source = settings.topics.models
    if release is None:
        found = find_model_dir(settings.models_path, version)
        if found is None:
            fail(
                f"no valid release {name} {version} on {settings.topics.models} and no "
                f"such directory under {settings.models_path}: see `vigil models list`",
                1,
            )
        try:
            release = build_release(found, signer)
        except ModelError as exc:
            fail(exc, 1)
        source = str(found)
    if release.name != name:
        fail(f"{version} is a {release.name} model, not {name}", 1)
    release = resign(release, signer, rollback=True, replaces=serving and serving.version)
    ensure_one(bootstrap, settings.topics, settings.topics.models, settings.replication_factor)
    try:
        publish_release(bootstrap, settings.topics.models, release)
    except PublishError as exc:
        fail(exc, 1)
    console.print(f"rolled {name} back to {version} (release from {source})")
