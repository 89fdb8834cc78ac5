"""The project stands on its own: no citation of files outside the repository."""
from __future__ import annotations

import subprocess

from tests.conftest import REPO


def test_nothing_cites_the_design_brief():
    brief = "DESIGN" + ".md"  # spelled apart so that this file does not match itself
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    offenders = [f for f in files if (REPO / f).is_file() and not f.endswith(".png")
                 and brief in (REPO / f).read_text(errors="ignore")]
    assert offenders == []
    assert (REPO / "docs" / "protocol.md").is_file()
    assert "docs/protocol.md" in (REPO / "README.md").read_text()


def _imports(path) -> set[str]:
    import ast
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module.split(".")[0])
    return names


def test_lower_packages_never_import_the_method_package():
    """Arrows point down: splitlora uses models and datasets, never the other way round."""
    offenders = {str(p.relative_to(REPO)): "splitlora" for pkg in ("models", "datasets")
                 for p in (REPO / pkg).glob("*.py") if "splitlora" in _imports(p)}
    assert offenders == {}
    assert "datasets" not in set().union(*(_imports(p) for p in (REPO / "models").glob("*.py")))


def test_production_code_reads_no_fault_variable():
    files = subprocess.run(["git", "ls-files", "*.py"], cwd=REPO, capture_output=True, text=True,
                           check=True).stdout.split()
    offenders = [f for f in files if not f.startswith("tests/")
                 and "SPLITLORA_FAULT" in (REPO / f).read_text()]
    assert offenders == []


def test_config_reference_is_generated_from_the_schema_and_current():
    """docs/config.md lists every key with its default; regenerate with tools/config_doc.py."""
    import sys

    from splitlora.config import Config, flatten, to_dict
    sys.path.insert(0, str(REPO / "tools"))
    import config_doc
    current = (REPO / "docs" / "config.md").read_text()
    assert current == config_doc.render(), "docs/config.md is stale: run python tools/config_doc.py"
    for key in flatten(to_dict(Config())):
        assert f"| `{key}` |" in current, key
