#!/usr/bin/env python3
"""Prepare DomainNet (or a class subset of it) as DST/train/<label>/<file> + DST/val/<label>/<file>.

--src is the DomainNet root (domain folders clipart, infograph, painting, quickdraw, real, sketch).
List lines are "<domain>/<class>/<file> <label>"; several lists per split are concatenated (e.g. the
official per-domain lists). Class folders are the labels as 3 digits (000), class_names.tsv names
them; a file keeps its name, prefixed with "<domain>_" unless it starts with the domain. A listed
file must be a regular file inside --src."""
import os
import sys

sys.dont_write_bytecode = True  # keep the repository clean: nothing written outside --dst
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _prep_common import (  # noqa: E402
    PrepError, folder_lookup, image_name_problem, listed_items, materialize, parse_args, parse_lists, run_main,
    safe_component)

DOMAINS = ("clipart", "infograph", "painting", "quickdraw", "real", "sketch")
LINE_FORMAT = "<domain>/<class>/<file> <label>, e.g. real/pickup_truck/real_221_000552.jpg 0"


def parse_line(line: str) -> tuple[str, int]:
    fields = line.rsplit(maxsplit=1)
    parts = fields[0].split("/")
    why = ("expected a path and a label" if len(fields) != 2 else
           f"label {fields[1]!r} is not a non-negative integer" if not fields[1].isdigit() else
           "the path must have exactly three parts <domain>/<class>/<file>"
           if len(parts) != 3 or not all(map(safe_component, parts)) else
           f"unknown domain {parts[0]!r} (known: {', '.join(DOMAINS)})" if parts[0] not in DOMAINS else
           f"class folder {parts[1]!r} is hidden (its name starts with '.')" if parts[1].startswith(".") else
           image_name_problem(parts[2]))
    if why:
        raise ValueError(why)
    return fields[0], int(fields[1])


def label_names(entries: list[tuple[str, int, str]]) -> dict[int, str]:
    """label -> class name; a label with two names, or a name with two labels, is an error."""
    seen: tuple[dict, dict] = ({}, {})  # label -> (class, origin), class -> (label, origin)
    for rel, label, origin in entries:
        cls = rel.split("/")[1]
        for known, key, value, what in ((seen[0], label, cls, f"label {label} goes with two class names"),
                                        (seen[1], cls, label, f"class {cls!r} has two labels")):
            old, where = known.setdefault(key, (value, origin))
            if old != value:
                raise PrepError(f"{what}: {old!r} ({where}) and {value!r} ({origin}); use lists that agree.")
    return {label: cls for label, (cls, _) in seen[0].items()}


def main(argv: list[str] | None = None) -> int:
    args, src, dst = parse_args(__doc__, argv, f"DomainNet root holding the domain folders ({', '.join(DOMAINS)})",
                                list_format=LINE_FORMAT, several=True)
    present = [d for d in DOMAINS if (src / d).is_dir()]
    if not present:
        raise PrepError(f"--src {src} {'holds none of' if src.is_dir() else 'is not a folder holding'} the DomainNet "
                        f"domain folders ({', '.join(DOMAINS)}), into which the domain zips are extracted.")
    lists = {"train": args.train_list, "val": args.val_list}
    split = parse_lists(lists, parse_line, LINE_FORMAT)
    names = label_names(split["train"] + split["val"])  # type: ignore[arg-type]
    width = max(3, len(str(max(names))))

    def place(rel: str, label: object) -> tuple[str, str]:
        domain, _, file = rel.split("/")
        return f"{label:0{width}d}", file if file.startswith(domain) else f"{domain}_{file}"
    items = listed_items(split, folder_lookup(src), place, f"Check that --src is the DomainNet root (domains found: "
                         f"{', '.join(present)}) and that the lists belong to it.")
    return materialize("split_domainnet", src, dst, args.mode, items,
                       {f"{label:0{width}d}": cls for label, cls in names.items()},
                       {f"{s}_lists": [os.path.abspath(p) for p in paths] for s, paths in lists.items()})


if __name__ == "__main__":
    run_main(main)
