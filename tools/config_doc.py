#!/usr/bin/env python
"""Write the tables of docs/config.md from the config schema, so they cannot go stale.

    python tools/config_doc.py            # rewrite docs/config.md
    python tools/config_doc.py --check    # exit 1 if docs/config.md differs (a test runs this)

Each key of the schema is listed with its default, its comment in the code (comment lines just
above included) and the allowed values the validators and registries declare."""

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

from splitlora.run import config as schema  # noqa: E402

OUTPUT = REPO / "docs" / "config.md"

# the introduction above this line is prose kept in docs/config.md; the tables below it are made here
MARKER = "<!-- generated below by tools/config_doc.py from the schema: edit the schema, not the tables -->\n"


def _comments(cls: type) -> dict[str, str]:
    """Field name -> its comments in the class and its bases (none for a class made at run time)."""
    out: dict[str, str] = {}
    for base in reversed(cls.__mro__):
        try:
            source = inspect.getsource(base)
            body = ast.parse(source).body[0].body
        except (OSError, TypeError, IndexError):
            continue
        lines = source.splitlines()
        inline = {tok.start[0]: tok.string.lstrip("#").strip()
                  for tok in tokenize.generate_tokens(io.StringIO(source).readline)
                  if tok.type == tokenize.COMMENT}
        for node in body:
            if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                row = first = node.lineno
                while first > 1 and lines[first - 2].strip().startswith("#"):
                    first -= 1
                notes = [inline.get(r, "") for r in range(first, row + 1)]
                out[node.target.id] = " ".join(p for p in notes if p)
    return out


def _value(f: dataclasses.Field) -> str:
    value = f.default_factory() if f.default is dataclasses.MISSING else f.default  # type: ignore
    if value is None:
        return "`null`"
    if isinstance(value, bool):
        return f"`{str(value).lower()}`"
    return f"`{value}`" if value != "" else '`""`'


def _choices() -> dict[str, list[str]]:
    """Key -> its allowed values: the validators' choices and the registries' names."""
    from datasets import BENCHMARKS
    from splitlora.methods import METHODS
    out = {k: [str(v).lower() if isinstance(v, bool) else str(v) for v in vals]
           for k, vals in schema.CHOICES.items()}
    out.update({f"method.{name}.{k}": [str(v) for v in vals]
                for name, cls in METHODS.items() for k, vals in cls.Params.CHOICES.items()})
    out["method.name"] = list(METHODS)
    out["dataset.name"] = sorted(BENCHMARKS)
    return out


def _table(cls: type, prefix: str, choices: dict[str, list[str]]) -> tuple[list[str], list]:
    """The rows of a section, and its sub-sections (name, class)."""
    rows, nested = [], []
    notes, hints = _comments(cls), typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        key, tp = f"{prefix}{f.name}", hints[f.name]
        if isinstance(tp, type) and dataclasses.is_dataclass(tp):
            nested.append((key, tp))
            continue
        note = notes.get(f.name) or ("the method that runs (docs/results.md describes each)"
                                     if key == "method.name" else "")
        note = (note + "." if note and not note.endswith(".") else note).replace("|", "\\|")
        allowed = (" One of: " + ", ".join(f"`{c}`" for c in choices[key]) + "."
                   if key in choices else "")
        flag = " *(resumable)*" if key in schema.RESUMABLE_KEYS else ""
        rows.append(f"| `{key}` | {_value(f)} | {note}{allowed}{flag} |")
    return rows, nested


def render() -> str:
    """docs/config.md: its introduction (kept as written) and the tables of the schema now."""
    current = OUTPUT.read_text() if OUTPUT.is_file() else ""
    out, choices = [current.partition(MARKER)[0] if MARKER in current else "# Configuration\n\n",
                    MARKER], _choices()
    queue: list[tuple[str, type]] = [("", schema.schema())]
    while queue:
        name, cls = queue.pop(0)
        rows, nested = _table(cls, f"{name}." if name else "", choices)
        out.append(f"\n## {f'`{name}`' if name else 'Top level'}\n")
        doc = inspect.getdoc(cls) or ""
        if doc and not doc.startswith(cls.__name__ + "("):
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
    if args.check and OUTPUT.read_text() != text:
        print(f"error: {OUTPUT} is not current: run python tools/config_doc.py", file=sys.stderr)
        return 1
    if not args.check:
        OUTPUT.write_text(text)
        print(f"written: {OUTPUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
