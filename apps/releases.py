"""Model releases on the broker: publish, list, roll back (the `vigil models` commands and
the trainer's publishing step). The format and its checks live in models.registry."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from vigil.apps.clients import publish, read_messages
from vigil.errors import VigilError
from vigil.models.kinds import KINDS
from vigil.models.registry import Assembler, Refusal, Release, describe, release_messages
from vigil.models.signing import TrustedKeys

__all__ = ["PublishError", "ReleaseLog", "find_model_dir", "publish_release", "read_releases"]


class PublishError(VigilError):
    """The broker did not take every record of a release."""


def publish_release(bootstrap: str, topic: str, release: Release) -> int:
    """Publish a release's records (manifest, then chunks) in order; returns the count.
    One partition and an idempotent producer keep them in order across retries."""
    records = release_messages(release)
    result = publish(bootstrap, topic, records)
    if result.failed:
        raise PublishError(
            f"the broker refused {result.failed} of {result.count} records of "
            f"{release.version}: workers will refuse it as truncated; publish it again"
        )
    return result.count


@dataclass
class ReleaseLog:
    """What ``vigil.models`` holds, in topic order."""

    releases: list[Release] = field(default_factory=list)
    refused: list[Refusal] = field(default_factory=list)
    incomplete: list[str] = field(default_factory=list)  # still waiting for chunks

    def latest(self, name: str) -> Release | None:
        """The newest complete, verified release of ``name``: what workers serve unless
        it fails their own checks (input spec, parity)."""
        return self.find(name)

    def rows(self) -> list[dict[str, Any]]:
        """One row per release (what `vigil models list` and the console show): the valid
        ones described, the newest of each model marked ``latest``; refused and incomplete
        ones with their status."""
        latest = {r.name: self.latest(r.name) for r in self.releases}
        return (
            [{**describe(r), "latest": latest[r.name] is r, "status": "ok"} for r in self.releases]
            + [
                {"name": f.name, "version": f.version, "status": f"refused: {f.reason}"}
                for f in self.refused
            ]
            + [{"version": v, "status": "incomplete"} for v in self.incomplete]
        )

    def find(self, name: str, version: str | None = None) -> Release | None:
        """The newest release of ``name`` (of that ``version``, if given)."""
        found = [r for r in self.releases if r.name == name and version in (None, r.version)]
        return found[-1] if found else None


def read_releases(bootstrap: str, topic: str, trusted: TrustedKeys) -> ReleaseLog:
    """Read the whole topic (as a worker does at start) and verify every release."""
    out = ReleaseLog()
    assembler = Assembler(trusted)
    try:
        for msg in read_messages(bootstrap, topic):
            for got in assembler.add(
                msg.key(), msg.value(), msg.headers(), msg.offset(), msg.timestamp()[1]
            ):
                (out.refused if isinstance(got, Refusal) else out.releases).append(got)
    except LookupError:  # no topic yet: nothing was ever published
        return out
    out.incomplete = [p.manifest["version"] for p in assembler.pending.values()]
    return out


def find_model_dir(models_path: Path, version: str) -> Path | None:
    """A model directory named ``version`` where `vigil train` and `vigil export` write."""
    for k in KINDS.values():
        for parent in (k.directory(models_path), k.exports(models_path)):
            if (parent / version / "manifest.json").exists():
                return parent / version
    return None
