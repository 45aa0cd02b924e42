"""Test helpers that forge releases: changed and signed again with the right key, so that
they pass every transport check and only a worker's serving checks can refuse them."""

from __future__ import annotations

import hashlib

from models.registry import Release, pack_files, signature


def resigned(release: Release, key: bytes, **changes) -> Release:
    """The release with manifest fields changed, signed again with ``key``."""
    manifest = {**release.manifest, **changes}
    manifest["signature"] = signature(manifest, key)
    return Release(manifest, release.payload)


def repacked(release: Release, key: bytes, **replace: bytes) -> Release:
    """The release with some files replaced: indexed, hashed and signed again."""
    index, payload = pack_files({**release.files(), **replace})
    sha = hashlib.sha256(payload).hexdigest()
    manifest = resigned(release, key, files=index, size=len(payload), sha256=sha).manifest
    return Release(manifest, payload)
