"""Test helpers that forge releases: changed and signed again with the right key (and a
new sequence), so that they pass every transport check and only a worker's serving checks
can refuse them."""

from __future__ import annotations

import hashlib

from vigil.models.registry import Release, chunk_index, pack_files, resign
from vigil.models.signing import SigningKey


def resigned(release: Release, signer: SigningKey, **changes) -> Release:
    """The release with manifest fields changed, signed again by ``signer``."""
    return resign(release, signer, **changes)


def repacked(release: Release, signer: SigningKey, **replace: bytes) -> Release:
    """The release with some files replaced: indexed, hashed and signed again."""
    index, payload = pack_files({**release.files(), **replace})
    sha = hashlib.sha256(payload).hexdigest()
    chunks = chunk_index(payload, release.manifest["chunk_bytes"])
    manifest = resign(
        release, signer, files=index, size=len(payload), sha256=sha, **chunks
    ).manifest
    return Release(manifest, payload)
