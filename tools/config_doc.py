#!/usr/bin/env python
"""Write docs/config.md from the config schema (splitlora/config.py), so it cannot go stale.

    python tools/config_doc.py            # rewrite docs/config.md
    python tools/config_doc.py --check    # exit 1 if docs/config.md differs (the tests run this)

Every key of the schema is listed with its default and the comment written beside it in the
schema (comment lines just above a field belong to it too); a section's docstring heads its
table. Validation rules (choices, ranges) live in ``splitlora.config.validate``.
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import io
import sys
import tokenize
import typing
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from splitlora import config as schema  # noqa: E402  (light: no torch import)

OUTPUT = REPO / "docs" / "config.md"

HEADER = """# Configuration reference

Generated from the schema in `splitlora/config.py` by `python tools/config_doc.py` (a test
checks that this file is current). Every default is the published protocol
([protocol.md](protocol.md)); a setting file in `configs/` only states what differs, and each
run directory's `config.yaml` holds the resolved whole. Override any key on the command line
with `--set KEY=VALUE` (the value is parsed as YAML: `--set train.milestones=[3,6]`,
`--set 'model.kwargs={depth: 6}'`); `python main.py --config FILE --print-config` prints the
resolved configuration. A whole section given as a mapping (`--set 'train={epochs: 3}'`) is
merged key by key into that section. Unknown keys and bad values are refused before anything
runs, with the closest known key suggested; a method-specific key (in `split` and `method`)
set on the command line for a method that does not read it (`split.alpha` with `seq_lora`)
gives a warning.

Keys marked *resumable* may change when an interrupted run is continued (they change how the
remaining tasks run, not what the finished ones computed); every other key is part of the
run's identity, and a run directory holding another value is refused.
"""


def _comments(cls: type) -> dict[str, str]:
    """Field name -> the comment on its line, after any comment lines just above it."""
    source = inspect.getsource(cls)
    lines = source.splitlines()
    inline: dict[int, str] = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            inline[tok.start[0]] = tok.string.lstrip("#").strip()
    out = {}
    for node in ast.parse(source).body[0].body:
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            row = node.lineno
            above = []
            prev = row - 1
            while prev >= 1 and lines[prev - 1].strip().startswith("#"):
                above.insert(0, inline.get(prev, ""))
                prev -= 1
            parts = above + ([inline[row]] if row in inline and not lines[row - 1].strip()
                             .startswith("#") else [])
            out[node.target.id] = " ".join(p for p in parts if p)
    return out


def _default(f: dataclasses.Field) -> str:
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:  # type: ignore[misc]
        value = f.default_factory()  # type: ignore[misc]
    else:
        return ""
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    if isinstance(value, str):
        return f"`{value}`" if value else "`\"\"`"
    return f"`{value}`"


def _escape(text: str) -> str:
    return text.replace("|", "\\|")


def _choices() -> dict[str, list[str]]:
    """Key -> its allowed values: the validator's choices and the registries' names."""
    from datasets import BENCHMARKS
    from splitlora.learner import METHODS
    out = {k: [str(v).lower() if isinstance(v, bool) else str(v) for v in vals]
           for k, vals in schema._CHOICES.items()}
    out["method.name"] = sorted(METHODS)
    out["dataset.name"] = sorted(BENCHMARKS)
    return out


def _section(cls: type, prefix: str, rows: list[str], sections: list[tuple[str, type]],
             choices: dict[str, list[str]]) -> None:
    hints = typing.get_type_hints(cls)
    notes = _comments(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        key = f"{prefix}{f.name}"
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            sections.append((key, tp))
            continue
        flags = " *(resumable)*" if key in schema.RESUMABLE_KEYS else ""
        allowed = (" One of: " + ", ".join(f"`{c}`" for c in choices[key]) + ".") \
            if key in choices else ""
        note = notes.get(f.name, "")
        if note and not note.endswith("."):
            note += "."
        rows.append(f"| `{key}` | {_default(f)} | {_escape(note)}{allowed}{flags} |")


def render() -> str:
    """The whole of docs/config.md."""
    out = [HEADER]
    choices = _choices()
    queue: list[tuple[str, type]] = [("", schema.Config)]
    while queue:
        name, cls = queue.pop(0)
        rows: list[str] = []
        nested: list[tuple[str, type]] = []
        _section(cls, f"{name}." if name else "", rows, nested, choices)
        title = f"`{name}`" if name else "Top level"
        doc = inspect.getdoc(cls) if cls.__doc__ and not cls.__doc__.startswith(cls.__name__ + "(") else ""
        out.append(f"\n## {title}\n")
        if doc:
            out.append(f"\n{doc.replace('``', '`')}\n")
        if rows:
            out.append("\n| key | default | meaning |\n|---|---|---|\n" + "\n".join(rows) + "\n")
        queue[0:0] = nested
    return "".join(out)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--check", action="store_true", help="exit 1 if docs/config.md is not current")
    args = p.parse_args(argv)
    text = render()
    if args.check:
        current = OUTPUT.read_text() if OUTPUT.is_file() else ""
        if current != text:
            print(f"{OUTPUT} is not current: run python tools/config_doc.py", file=sys.stderr)
            return 1
        return 0
    OUTPUT.parent.mkdir(parents=True, exist_ok=True)
    OUTPUT.write_text(text)
    print(f"written: {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
