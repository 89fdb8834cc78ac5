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
