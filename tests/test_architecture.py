"""The package layers, read from the source: every ``import`` (at module level or inside a
function) between Vigil's modules. ``streams`` (stream logic) imports neither ``models`` nor
``apps``; ``models`` does not import ``apps``; no module reaches itself through its imports."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = {"vigil": "vigil", "apps": "vigil.apps", "streams": "vigil.streams"}
FOLDERS["models"] = "vigil.models"


def _modules() -> dict[str, Path]:
    found = {}
    for folder, package in FOLDERS.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            found[".".join((package, *parts))] = path
    return found


MODULES = _modules()


def _owner(name: str) -> str | None:
    """The module ``name`` refers to (``pkg.mod.attr`` -> ``pkg.mod``), if it is ours."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name or None


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [f"{node.module}.{a.name}" for a in node.names]
        else:
            continue
        found |= {owner for n in names if (owner := _owner(n))}
    return found


GRAPH = {name: _imports(path) - {name} for name, path in MODULES.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    out.append(sorted(component))
    return out


def test_the_cycle_finder_finds_a_cycle() -> None:  # the check below can fail
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_module_imports_itself_through_others() -> None:
    assert _cycles(GRAPH) == []


def test_lower_layers_do_not_import_higher_ones() -> None:
    above = {"vigil.streams": ("vigil.models", "vigil.apps"), "vigil.models": ("vigil.apps",)}
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for layer, higher in above.items()
        if module.startswith(layer + ".") or module == layer
        for target in targets
        if target.startswith(higher)
    ]
    assert wrong == []


def test_the_walk_sees_the_whole_tree() -> None:
    assert "vigil.streams.pipeline" in GRAPH and "vigil.apps.cli.train" in GRAPH
    assert "vigil.streams.scorers" in GRAPH["vigil.streams.pipeline"]


def test_no_module_but_the_model_kinds_branches_on_a_model_name_or_format() -> None:
    """Which model it is, is the kind's business (models/kinds.py): nobody else compares
    model names or formats."""
    import re

    branch = re.compile(r"""(==|!=|\bin\b)\s*\(?["'](risk|inspection)["']|["']onnx:[a-z+-]+["']""")
    assert branch.search('root = path if name == "inspection" else other')  # it can fail
    assert branch.search('if manifest["format"] == "onnx:gbdt+nn":')
    allowed = {"vigil.models.kinds"}  # and the scorers' own FORMAT constants, below
    found = []
    for name, path in MODULES.items():
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if name in allowed or re.match(r"\s*FORMAT = ", line):
                continue
            if branch.search(line):
                found.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()}")
    assert found == []


def test_no_package_exports_a_name_that_is_also_one_of_its_modules() -> None:
    """``from pkg import train`` must mean one thing: once ``pkg.train`` (a module) is
    imported under another name, Python would replace a function ``train`` with it."""
    import importlib

    clashes = []
    for name, path in MODULES.items():
        if path.name != "__init__.py":
            continue
        modules = {p.stem for p in path.parent.glob("*.py")} | {
            p.name for p in path.parent.iterdir() if (p / "__init__.py").exists()
        }
        exported = set(getattr(importlib.import_module(name), "__all__", ()))
        clashes += [f"{name}.{n}" for n in sorted(exported & modules)]
    assert clashes == []


KAFKA_CLIENTS = {"Producer", "Consumer", "AdminClient", "KafkaConsumer", "KafkaProducer"}
KAFKA_CLIENTS |= {f"AIOKafka{k}" for k in ("Consumer", "Producer", "Client", "AdminClient")}


def _calls(path: Path) -> list[ast.Call]:
    return [n for n in ast.walk(ast.parse(path.read_text())) if isinstance(n, ast.Call)]


def _called(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


def test_every_kafka_client_is_made_where_the_security_settings_are_applied() -> None:
    """apps/kafka.py applies VIGIL_KAFKA_SECURITY_PROTOCOL, SASL and TLS to each client it
    makes; a client constructed anywhere else would skip them (a plaintext connection to a
    secured cluster, or none). faust apps take them as broker_credentials."""
    made: dict[str, list[str]] = {}
    for name, path in MODULES.items():
        for call in _calls(path):
            called = _called(call)
            if called in KAFKA_CLIENTS:
                made.setdefault(name, []).append(called)
            if called in ("App", "VigilApp"):
                keywords = {k.arg for k in call.keywords}
                assert "broker_credentials" in keywords, f"{name}: a faust app without them"
    assert set(made) == {"vigil.apps.kafka"}, made
    assert {"Producer", "Consumer", "AdminClient"} <= set(made["vigil.apps.kafka"])
