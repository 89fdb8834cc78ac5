"""House rules: the project stands on its own; the two floors keep their direction (the method
never imports the machinery that runs it, the lower packages never import the method) and no
import cycle exists among the project's modules; production code reads no test hook; the
config reference is generated and current; the test suite keeps its layout."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

from tests.helpers import REPO

PACKAGES = ("splitlora", "models", "datasets")


def _tracked(pattern: str = "*.py") -> list[str]:
    return subprocess.run(["git", "ls-files", pattern], cwd=REPO, capture_output=True, text=True,
                          check=True).stdout.split()


def test_nothing_cites_the_design_brief():
    brief = "DESIGN" + ".md"  # spelled apart so that this file does not match itself
    offenders = [f for f in _tracked("*") if (REPO / f).is_file() and not f.endswith(".png")
                 and brief in (REPO / f).read_text(errors="ignore")]
    assert offenders == []
    assert (REPO / "docs" / "protocol.md").is_file()
    assert "docs/protocol.md" in (REPO / "README.md").read_text()


# ------------------------------------------------------------------------------ imports

def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _project_modules() -> dict[str, Path]:
    """Every module of the project's packages and top-level scripts, by dotted name."""
    paths = [p for pkg in PACKAGES for p in (REPO / pkg).rglob("*.py")]
    paths += [p for p in REPO.glob("*.py")]
    return {_module_name(p): p for p in paths if "__pycache__" not in p.parts}


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The project modules ``path`` imports anywhere (function-level imports included),
    relative imports resolved; ``from pkg import name`` counts as pkg.name when that is a
    module, else as pkg."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()

    def add(target: str) -> None:
        while target and target not in modules:  # a name inside a module: the module
            target = target.rpartition(".")[0]
        if target:
            found.add(target)
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for alias in node.names:
                full = f"{target}.{alias.name}"
                add(full if full in modules else target)
    found.discard(name)
    return found


def _graph() -> dict[str, set[str]]:
    modules = _project_modules()
    return {name: _imports(path, modules) for name, path in modules.items()}


def test_the_import_parser_sees_function_level_and_relative_imports():
    graph = _graph()
    assert "splitlora.run.rundir" in graph["splitlora.run.cli"]  # inside run_cli()
    assert "splitlora.covariance" in graph["splitlora.methods.splitlora"]  # from ..covariance
    assert "splitlora.methods.inflora" in graph["splitlora.methods"]  # from .inflora import
    assert "models.lora" in graph["models"]


def test_the_method_never_imports_the_machinery_that_runs_it():
    """splitlora/*.py and splitlora/methods/*.py: never splitlora.run, at any level."""
    graph = _graph()
    method = [m for m in graph if m.startswith("splitlora") and not m.startswith("splitlora.run")]
    assert "splitlora.methods.splitlora" in method and "splitlora.engine" in method
    offenders = {m: sorted(d for d in graph[m] if d.startswith("splitlora.run"))
                 for m in method}
    assert {m: d for m, d in offenders.items() if d} == {}


def test_lower_packages_never_import_the_method_package():
    """Arrows point down: splitlora uses models and datasets, never the other way round;
    models does not use datasets."""
    graph = _graph()
    for pkg, forbidden in (("models", ("splitlora", "datasets")), ("datasets", ("splitlora",))):
        offenders = {m: sorted(d for d in graph[m] if d.split(".")[0] in forbidden)
                     for m in graph if m.split(".")[0] == pkg}
        assert {m: d for m, d in offenders.items() if d} == {}, pkg


def test_there_is_no_import_cycle_among_the_projects_modules():
    graph = _graph()
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                cycles.append(path[path.index(dep):] + [dep])
            elif dep not in state:
                visit(dep, path + [dep])
        state[node] = 2
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))
    for node in sorted(graph):
        if node not in state:
            visit(node, [node])
    assert cycles == [], " ; ".join(" -> ".join(c) for c in cycles)


def test_production_code_reads_no_fault_variable():
    offenders = [f for f in _tracked() if not f.startswith("tests/")
                 and "SPLITLORA_FAULT" in (REPO / f).read_text()]
    assert offenders == []


# ------------------------------------------------------------------------------ documentation

def test_config_reference_is_generated_from_the_schema_and_current():
    """docs/config.md lists every key with its default; regenerate with tools/config_doc.py."""
    import importlib.util

    from splitlora.run.config import flatten, load_config, to_dict
    spec = importlib.util.spec_from_file_location("config_doc", REPO / "tools" / "config_doc.py")
    config_doc = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(config_doc)
    current = (REPO / "docs" / "config.md").read_text()
    assert current == config_doc.render(), "docs/config.md is stale: run python tools/config_doc.py"
    for key in flatten(to_dict(load_config(None))):
        assert f"| `{key}` |" in current, key
    for name in ("threshold.energy", "inflora.lamb", "random_a.a_norm"):
        assert f"| `method.{name}` |" in current, name


# ------------------------------------------------------------------------------ the suite

def test_test_files_have_unique_names_and_import_no_other_test_module():
    """pytest's default import mode needs unique basenames; shared code lives in
    tests/helpers.py, never in a test module."""
    tests = sorted((REPO / "tests").rglob("test_*.py"))
    names = [p.name for p in tests]
    assert len(names) == len(set(names)), sorted(n for n in names if names.count(n) > 1)
    offenders = {}
    for path in tests:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and (
                    node.module.split(".")[-1].startswith("test_")
                    or node.module == "tests.conftest"):
                offenders[str(path.relative_to(REPO))] = node.module
    assert offenders == {}
