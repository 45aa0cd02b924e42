"""The user documentation stays true to the code and the repository."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from vigil.apps.settings import Settings, settings_reference

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", ROOT / "CHANGELOG.md", *sorted((ROOT / "docs").rglob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def test_configuration_doc_is_generated_from_settings() -> None:
    on_disk = (ROOT / "docs" / "configuration.md").read_text()
    assert on_disk == settings_reference(), (
        "docs/configuration.md is stale: run `vigil config --reference > docs/configuration.md`"
    )
    for name in Settings.model_fields:  # independent of the generator: every field is there
        assert f"`VIGIL_{name.upper()}`" in on_disk


def test_every_setting_says_what_it_does() -> None:
    missing = [name for name, field in Settings.model_fields.items() if not field.description]
    assert missing == []


def test_readme_is_short() -> None:
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_links_stay_inside_the_repository_and_resolve(doc: Path) -> None:
    for target in LINK.findall(doc.read_text()):
        if re.match(r"^[a-z]+://", target) or target.startswith("#"):
            continue
        path = (doc.parent / target.split("#", 1)[0]).resolve()
        assert path.is_relative_to(ROOT), f"{doc.name} links outside the repository: {target}"
        assert path.exists(), f"{doc.name} links to a missing file: {target}"


def test_licence_is_declared_and_shipped() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["license"] == "Apache-2.0"
    assert "Apache License" in (ROOT / "LICENSE").read_text()[:200]


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: str(p.relative_to(ROOT)))
def test_source_files_the_docs_name_exist(doc: Path) -> None:
    if doc.name in ("benchmarks.md", "CHANGELOG.md"):  # history names the files of its day
        return
    for path in re.findall(
        r"(?<![\w/.])((?:apps|streams|models|tests)/[\w/]+\.py)", doc.read_text()
    ):
        assert (ROOT / path).exists(), f"{doc.name} names {path}, which is not there"
