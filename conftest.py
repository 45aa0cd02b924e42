"""Doctests under ``apps/``, ``streams/`` and ``models/`` run on the installed modules.

Those folders are installed as ``vigil.apps``, ``vigil.streams`` and ``vigil.models``.
pytest names a module by its folder (``models.signing``), which would import a second copy
of it beside ``vigil.models.signing``; here those names are aliases of the installed
modules instead, for the test session only.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys

_FOLDERS = ("apps", "streams", "models")


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self) -> None:
        self._specs: dict[str, object] = {}

    def find_spec(self, name, path, target=None):  # type: ignore[no-untyped-def]
        if name.split(".", 1)[0] not in _FOLDERS:
            return None
        return importlib.util.spec_from_loader(name, self)

    def create_module(self, spec):  # type: ignore[no-untyped-def]
        module = importlib.import_module(f"vigil.{spec.name}")
        self._specs[module.__name__] = module.__spec__  # the import machinery overwrites it
        return module

    def exec_module(self, module) -> None:  # type: ignore[no-untyped-def]
        module.__spec__ = self._specs[module.__name__]  # executed already, under its own name


sys.meta_path.insert(0, _Alias())
