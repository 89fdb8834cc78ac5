#!/usr/bin/env python3
"""Prepare DomainNet (or a class subset of it) as DST/train/<label>/<file> + DST/val/<label>/<file>.

--src is the DomainNet root holding the domain folders (clipart, infograph, painting, quickdraw,
real, sketch). List lines are ``<domain>/<class>/<file> <label>``, e.g.
``real/pickup_truck/real_221_000552.jpg 0``; several lists per split are concatenated (e.g. the
official per-domain lists). The class folder is the label zero-padded to 3 digits (``000``); the
file keeps its name, prefixed with ``<domain>_`` unless it starts with the domain, so domains cannot
collide. ``class_names.tsv`` maps label folders to the class names of the lists. A listed file must
be a regular file inside --src (no symbolic link leading out of it).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Sequence

sys.dont_write_bytecode = True  # keep the repository clean: nothing written outside --dst
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _prep_common import (  # noqa: E402
    FileSource, Item, PrepError, add_common_args, check_src_dst, folder_lookup, image_name_problem, materialize,
    parse_lists, resolve_listed, run_main, safe_component,
)

TOOL = "split_domainnet"
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
LINE_FORMAT = "<domain>/<class>/<file> <label>, e.g. real/pickup_truck/real_221_000552.jpg 0"


def parse_line(line: str) -> tuple[str, int]:
    """``(<domain>/<class>/<file>, label)`` of a list line; ValueError(why) when it is malformed."""
    fields = line.rsplit(maxsplit=1)
    if len(fields) != 2:
        raise ValueError("expected a path and a label")
    parts = fields[0].split("/")
    if not fields[1].isdigit():
        raise ValueError(f"label {fields[1]!r} is not a non-negative integer")
    if len(parts) != 3 or not all(map(safe_component, parts)):
        raise ValueError("the path must have exactly three parts <domain>/<class>/<file>")
    if parts[0] not in DOMAINS:
        raise ValueError(f"unknown domain {parts[0]!r} (known: {', '.join(DOMAINS)})")
    if parts[1].startswith(".") or image_name_problem(parts[2]):
        raise ValueError(image_name_problem(parts[2]) or f"class folder {parts[1]!r} is hidden (its name starts with '.')")
    return fields[0], int(fields[1])


def check_labels(entries: Sequence[tuple[str, int, str]]) -> dict[int, str]:
    """label -> class name; a label with two names, or a name with two labels, is an error."""
    by_label: dict[int, tuple[str, str]] = {}  # label -> (class, origin)
    by_name: dict[str, tuple[int, str]] = {}  # class -> (label, origin)
    for rel, label, origin in entries:
        cls = rel.split("/")[1]
        other, where = by_label.setdefault(label, (cls, origin))
        if other != cls:
            raise PrepError(f"label {label} goes with two class names: {other!r} ({where}) and {cls!r} ({origin}). "
                            "The lists use different label numberings; use lists that agree.")
        other_label, where = by_name.setdefault(cls, (label, origin))
        if other_label != label:
            raise PrepError(f"class {cls!r} has two labels: {other_label} ({where}) and {label} ({origin}). The "
                            "lists use different label numberings; use lists that agree.")
    return {label: cls for label, (cls, _) in by_label.items()}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, f"DomainNet root holding the domain folders ({', '.join(DOMAINS)})")
    for split in ("train", "val"):
        parser.add_argument(f"--{split}-list", type=Path, nargs="+", required=True,
                            help=f"one or more {split} lists ({LINE_FORMAT}); concatenated")
    args = parser.parse_args(argv)
    src, dst = check_src_dst(args.src, args.dst)
    if not src.is_dir():
        raise PrepError(f"--src {src} is not a folder. Point it at the DomainNet root holding {', '.join(DOMAINS)}.")
    present = [d for d in DOMAINS if (src / d).is_dir()]
    if not present:
        raise PrepError(f"{src} holds none of the DomainNet domain folders ({', '.join(DOMAINS)}). Point --src at "
                        "the folder into which the domain zips were extracted.")
    split = parse_lists({"train": args.train_list, "val": args.val_list}, parse_line, LINE_FORMAT)
    names = check_labels(split["train"] + split["val"])  # type: ignore[arg-type]
    sizes = resolve_listed(split, folder_lookup(src), src, f"Check that --src is the DomainNet root (domains found: "
                           f"{', '.join(present)}) and that the lists belong to it.")
    width = max(3, len(str(max(names))))
    items = []
    for name, entries in split.items():
        for rel, label, origin in entries:
            domain, _, file = rel.split("/")
            items.append(Item(name, f"{label:0{width}d}", file if file.startswith(domain) else f"{domain}_{file}",
                              FileSource(os.path.join(str(src), rel), sizes[rel]), origin))  # type: ignore[arg-type]
    return materialize(tool=TOOL, src=src, dst=dst, mode=args.mode, items=items,
                       classes=sorted(f"{label:0{width}d}" for label in names),
                       class_names={f"{label:0{width}d}": cls for label, cls in names.items()},
                       options={"train_lists": [os.path.abspath(p) for p in args.train_list],
                                "val_lists": [os.path.abspath(p) for p in args.val_list]})


if __name__ == "__main__":
    run_main(main)
