#!/usr/bin/env python3
"""Prepare DomainNet (or a class subset of it) as DST/train/<label>/<file> + DST/val/<label>/<file>.

--src is the DomainNet root holding the domain folders (clipart, infograph, painting, quickdraw,
real, sketch). List lines are ``<domain>/<class>/<file> <label>``, e.g.
``real/pickup_truck/real_221_000552.jpg 0``. Several lists per split are concatenated (e.g. the
official per-domain lists clipart_train.txt real_train.txt ...). The class folder is the label
zero-padded to 3 digits (``000``); the file keeps its name, prefixed with ``<domain>_`` when it does
not already start with the domain, so files of different domains cannot collide.
``class_names.tsv`` maps each label folder to the class directory name used in the lists.
"""
from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # keep the repository clean: nothing written outside --dst

import argparse  # noqa: E402
import os  # noqa: E402
import stat  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NamedTuple, Sequence  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _prep_common import (  # noqa: E402
    FileSource, Item, PrepError, add_common_args, check_src_dst, first, image_name_problem,
    materialize, read_list, run_main, safe_component,
)

TOOL = "split_domainnet"
DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
LINE_FORMAT = "<domain>/<class>/<file> <label>, e.g. real/pickup_truck/real_221_000552.jpg 0"


class Entry(NamedTuple):
    """One parsed list line."""

    domain: str
    cls: str
    file: str
    label: int
    origin: str  # "<list file>:<line>"

    @property
    def rel(self) -> str:
        return f"{self.domain}/{self.cls}/{self.file}"

    @property
    def dest_name(self) -> str:
        return self.file if self.file.startswith(self.domain) else f"{self.domain}_{self.file}"


def parse_list(path: Path) -> list[Entry]:
    """Parse one list file into entries (malformed lines are errors naming file and line)."""
    out = []
    for lineno, line in read_list(path):
        fields = line.rsplit(maxsplit=1)
        problem = None
        if len(fields) != 2:
            problem = "expected a path and a label"
        else:
            rel, label = fields
            parts = rel.split("/")
            if not label.isdigit():
                problem = f"label {label!r} is not a non-negative integer"
            elif len(parts) != 3 or not all(safe_component(p) for p in parts):
                problem = "the path must have exactly three parts <domain>/<class>/<file>"
            elif parts[0] not in DOMAINS:
                problem = f"unknown domain {parts[0]!r} (known: {', '.join(DOMAINS)})"
            elif parts[1].startswith("."):
                problem = f"class folder {parts[1]!r} is hidden (its name starts with '.')"
            else:
                problem = image_name_problem(parts[2])
        if problem:
            raise PrepError(f"malformed line {lineno} in {path}: {line!r} ({problem}). Each line must be {LINE_FORMAT}.")
        out.append(Entry(parts[0], parts[1], parts[2], int(label), f"{path}:{lineno}"))
    if not out:
        raise PrepError(f"list file {path} has no entries. Each line must be {LINE_FORMAT}.")
    return out


def check_labels(entries: Sequence[Entry]) -> dict[int, str]:
    """label -> class name; a label with two names, or a name with two labels, is an error."""
    by_label: dict[int, Entry] = {}
    by_name: dict[str, Entry] = {}
    for e in entries:
        other = by_label.setdefault(e.label, e)
        if other.cls != e.cls:
            raise PrepError(
                f"label {e.label} goes with two class names: {other.cls!r} ({other.origin}) and {e.cls!r} "
                f"({e.origin}). The lists use different label numberings; use lists that agree."
            )
        other = by_name.setdefault(e.cls, e)
        if other.label != e.label:
            raise PrepError(
                f"class {e.cls!r} has two labels: {other.label} ({other.origin}) and {e.label} ({e.origin}). "
                "The lists use different label numberings; use lists that agree."
            )
    return {label: e.cls for label, e in by_label.items()}


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, src_help=f"DomainNet root holding the domain folders ({', '.join(DOMAINS)})")
    parser.add_argument("--train-list", type=Path, nargs="+", required=True,
                        help=f"one or more train lists ({LINE_FORMAT}); concatenated")
    parser.add_argument("--val-list", type=Path, nargs="+", required=True,
                        help=f"one or more val lists ({LINE_FORMAT}); concatenated")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    src, dst = check_src_dst(args.src, args.dst)
    if not src.is_dir():
        raise PrepError(f"--src {src} is not a folder. Point it at the DomainNet root holding {', '.join(DOMAINS)}.")
    present = [d for d in DOMAINS if (src / d).is_dir()]
    if not present:
        raise PrepError(
            f"{src} holds none of the DomainNet domain folders ({', '.join(DOMAINS)}). Point --src at "
            "the folder into which the domain zips were extracted."
        )
    split = {
        "train": [e for p in args.train_list for e in parse_list(p)],
        "val": [e for p in args.val_list for e in parse_list(p)],
    }
    names = check_labels(split["train"] + split["val"])
    train_rel = {e.rel for e in split["train"]}
    overlap = [f"{e.rel} ({e.origin})" for e in split["val"] if e.rel in train_rel]
    if overlap:
        raise PrepError(
            f"{len(overlap)} file(s) are in both the train and the val lists (first 5: {first(overlap)}). "
            "Train and val must be disjoint; fix the lists."
        )
    width = max(3, len(str(max(names))))
    sizes: dict[str, int] = {}
    missing: list[str] = []
    for e in split["train"] + split["val"]:
        path = os.path.join(str(src), e.rel)
        try:
            st = os.stat(path)
            if not stat.S_ISREG(st.st_mode):
                raise FileNotFoundError
            sizes[path] = st.st_size
        except (FileNotFoundError, NotADirectoryError):
            missing.append(e.rel)
    if missing:
        raise PrepError(
            f"{len(missing)} file(s) named in the lists are absent from {src} (first 5: {first(missing)}). "
            f"Check that --src is the DomainNet root (domains found: {', '.join(present)}) and that the "
            "lists belong to it."
        )
    items = []
    for name, entries in split.items():
        for e in entries:
            path = os.path.join(str(src), e.rel)
            items.append(Item(name, f"{e.label:0{width}d}", e.dest_name, FileSource(path, sizes[path]), e.origin))
    folders = {label: f"{label:0{width}d}" for label in names}
    return materialize(
        tool=TOOL, src=src, dst=dst, mode=args.mode, items=items, classes=sorted(folders.values()),
        class_names={folders[k]: v for k, v in names.items()},
        options={"train_lists": [os.path.abspath(p) for p in args.train_list],
                 "val_lists": [os.path.abspath(p) for p in args.val_list]},
    )


if __name__ == "__main__":
    run_main(main)
