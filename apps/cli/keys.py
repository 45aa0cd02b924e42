"""``vigil keys``: release signing keys."""

from __future__ import annotations

from pathlib import Path

import typer

from vigil.apps.cli.base import (
    app,
    console,
    fail,
)
from vigil.models.signing import SignatureError

keys_app = typer.Typer(help="Release signing keys (Ed25519).", no_args_is_help=True)
app.add_typer(keys_app, name="keys")


@keys_app.command("generate")
def keys_generate(
    out_dir: Path = typer.Option(Path("keys"), "--out", help="where to write the key pair"),
) -> None:
    """Make a release signing key pair: release.key (private, mode 0600) for whoever
    publishes models, release.pub for the workers."""
    from vigil.models.signing import generate_keypair

    try:
        private, public = generate_keypair(out_dir)
    except SignatureError as exc:
        fail(exc, 1)
    console.print(
        f"wrote {private} (keep it with the publishers) and {public}\n"
        f"publishers (vigil train, vigil models): VIGIL_RELEASE_SIGNING_KEY={private}\n"
        f"workers: VIGIL_RELEASE_PUBLIC_KEYS={public}",
        soft_wrap=True,
    )
