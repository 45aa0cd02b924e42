"""The installed distribution claims one top-level name, ``vigil``, and runs beside other
packages that own the generic names ``apps``, ``models`` and ``streams``."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CONFIG = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
IGNORE = shutil.ignore_patterns("__pycache__")


def test_every_package_folder_is_installed_under_vigil() -> None:
    folders = {"vigil": "vigil", "vigil.apps": "apps", "vigil.streams": "streams"}
    folders["vigil.models"] = "models"
    assert CONFIG["package-dir"] == folders
    found = set()
    for name, folder in folders.items():
        for init in (ROOT / folder).rglob("__init__.py"):
            parts = init.parent.relative_to(ROOT / folder).parts
            found.add(".".join((name, *parts)))
    assert sorted(CONFIG["packages"]) == sorted(found)


def test_the_wheel_holds_only_the_vigil_package(tmp_path: Path) -> None:
    source = tmp_path / "source"  # a copy: building writes build/ next to the sources
    source.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE", *CONFIG["package-dir"].values()):
        copy = shutil.copytree if (ROOT / name).is_dir() else shutil.copy
        copy(ROOT / name, source / name, **({"ignore": IGNORE} if (ROOT / name).is_dir() else {}))
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"]
        + ["-w", str(tmp_path), str(source)],
        check=True,
        capture_output=True,
    )
    (wheel,) = tmp_path.glob("vigil-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/", 1)[0] for n in names if not n.split("/", 1)[0].endswith(".dist-info")}
    assert top == {"vigil"}
    assert "vigil/streams/rules/rulesets/aml.yaml" in names  # package data travels too
    assert "vigil/streams/jsonschema/vigil.transactions.json" in names  # the contract's schemas
    assert any(
        n.startswith("vigil/models/inspection/demo/") and n.endswith("clip.onnx") for n in names
    )
    assert "vigil/apps/cli/__main__.py" in names and "vigil/models/tasks.py" in names


def test_the_cli_runs_beside_packages_named_models_apps_and_streams(tmp_path: Path) -> None:
    other = tmp_path / "site"  # another distribution's top-level modules, first on the path
    for name in ("apps", "models", "streams"):
        (other / name).mkdir(parents=True)
        (other / name / "__init__.py").write_text(f"OWNER = 'another package'  # {name}\n")
    env = {**os.environ, "PYTHONPATH": str(other), "VIGIL_NAMESPACE": "beside"}
    run = subprocess.run(
        [sys.executable, "-m", "vigil.apps.cli", "config", "--json"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["VIGIL_NAMESPACE"] == "beside"
    aml = ROOT / "streams" / "rules" / "rulesets" / "aml.yaml"
    check = subprocess.run(
        [
            sys.executable,
            "-c",
            "import models, vigil.apps.cli, vigil.models.serving; print(models.OWNER)",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert check.returncode == 0 and check.stdout.strip() == "another package", check.stderr
    validate = subprocess.run(
        [sys.executable, "-m", "vigil.apps.cli", "rules", "validate", str(aml)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
    )
    assert validate.returncode == 0, validate.stderr
