#!/usr/bin/env python3
"""Prepare ImageNet-R as DST/train/<wnid>/<file> + DST/val/<wnid>/<file>.

The source is the ``imagenet-r`` folder (200 wnid folders such as n01443537) or ``imagenet-r.tar``
(members ``imagenet-r/<wnid>/<file>``). With ``--train-list`` and ``--val-list`` (one path per
line, e.g. ``n01443537/art_0.jpg``, an optional leading ``imagenet-r/`` is tolerated) exactly
those files are used. Without lists a seeded per-class split is made: one
``numpy.random.Generator(PCG64(seed))`` is created, then for each wnid in sorted order the sorted
file names are permuted with it and the first ``round(val_fraction * n)`` (at least 1 and at most
n - 1 when n >= 2) go to val. The result is identical on every machine.

From a folder, files are symlinked / hard-linked / copied per ``--mode``; from a tar the needed
members are extracted straight into the destination (copy semantics). ``class_names.tsv`` is
written when the source has a README.txt with lines ``<wnid> <name>``.
"""
from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # keep the repository clean: nothing written outside --dst

import argparse  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import tarfile  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Sequence  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _prep_common import (  # noqa: E402
    FileSource, Item, PrepError, Source, add_common_args, check_src_dst, first, image_name_problem,
    is_image_name, materialize, open_tar, read_list, run_main, safe_component,
)

TOOL = "split_imagenet_r"
WNID_RE = re.compile(r"^n\d{8}$")
README_RE = re.compile(r"^(n\d{8})\s+(\S.*?)\s*$")
TOP = "imagenet-r"
HINT = (
    "Point --src at the extracted imagenet-r/ folder (holding the wnid folders such as n01443537) "
    "or at imagenet-r.tar."
)


class TarMemberSource(Source):
    """A regular-file member of the source tar, extracted into the destination."""

    __slots__ = ("tar", "member", "where")

    def __init__(self, tar: tarfile.TarFile, member: tarfile.TarInfo, where: str) -> None:
        self.tar = tar
        self.member = member
        self.where = where
        self.order = member.offset

    def describe(self) -> str:
        return self.where

    def write(self, tmp: Path, mode: str) -> None:
        stream = self.tar.extractfile(self.member)
        if stream is None:  # pragma: no cover - only regular files are planned
            raise PrepError(f"{self.where} is not a regular file in the archive.")
        try:
            with stream, open(tmp, "wb") as out:
                shutil.copyfileobj(stream, out, 1 << 20)
        except (tarfile.TarError, EOFError, zlib.error) as exc:
            raise PrepError(f"cannot read {self.where} ({exc}); the archive is damaged. Re-download it.") from None

    def entry_mode(self, dest: Path) -> str | None:
        return "symlink" if os.path.islink(dest) else "copy"

    def matches(self, dest: Path) -> bool:
        try:
            return not os.path.islink(dest) and dest.is_file() and dest.stat().st_size == self.member.size
        except OSError:
            return False


class Dataset:
    """Inventory of an ImageNet-R source: files per wnid, README text, entry factory."""

    def __init__(self, src: Path) -> None:
        self.src = src
        self.tar: tarfile.TarFile | None = None
        self.files: dict[str, dict[str, object]] = {}  # wnid -> file name -> size | TarInfo
        self.readme: str | None = None
        if src.is_dir():
            self._scan_folder()
        else:
            self._scan_tar()
        self.files = {w: f for w, f in self.files.items() if f}
        if not self.files:
            where = f"{src}" if self.tar is None else f"the archive {src}"
            expected = "<wnid>/<image>" if self.tar is None else f"{TOP}/<wnid>/<image>"
            raise PrepError(f"{where} holds no wnid folders with images (expected {expected}, e.g. n01443537/art_0.jpg). {HINT}")

    def _scan_folder(self) -> None:
        with os.scandir(self.src) as it:
            wnids = sorted(e.name for e in it if e.is_dir() and WNID_RE.match(e.name))
        if not wnids:
            extra = f" Did you mean --src {self.src / TOP}?" if (self.src / TOP).is_dir() else ""
            raise PrepError(f"{self.src} has no wnid folders (like n01443537).{extra} {HINT}")
        for wnid in wnids:
            with os.scandir(self.src / wnid) as it:
                self.files[wnid] = {
                    e.name: e.stat().st_size for e in it if is_image_name(e.name) and e.is_file()
                }
        readme = self.src / "README.txt"
        if readme.is_file():
            self.readme = readme.read_text(encoding="utf-8", errors="replace")

    def _scan_tar(self) -> None:
        self.tar = open_tar(self.src, HINT)
        try:
            for m in self.tar:
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if not parts or parts[0] != TOP or not m.isfile():
                    continue
                if len(parts) == 3 and WNID_RE.match(parts[1]) and is_image_name(parts[2]):
                    self.files.setdefault(parts[1], {})[parts[2]] = m
                elif parts[1:] == ["README.txt"]:
                    self.readme = self.tar.extractfile(m).read().decode("utf-8", "replace")  # type: ignore[union-attr]
        except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
            raise PrepError(f"{self.src} is not a readable tar archive or is damaged ({exc}). {HINT}") from None
        if not self.files:
            raise PrepError(f"the archive {self.src} has no members {TOP}/<wnid>/<image> (e.g. {TOP}/n01443537/art_0.jpg). {HINT}")

    def source(self, wnid: str, name: str) -> Source:
        """The entry source of one file (which must exist in the inventory)."""
        ref = self.files[wnid][name]
        if self.tar is not None:
            return TarMemberSource(self.tar, ref, f"{self.src}:{ref.name}")  # type: ignore[arg-type]
        return FileSource(os.path.join(str(self.src), wnid, name), int(ref))  # type: ignore[arg-type]

    def class_names(self, wnids: Sequence[str]) -> dict[str, str] | None:
        """wnid -> name from README.txt, or None when there is no README or it lacks wnids."""
        if self.readme is None:
            return None
        mapping: dict[str, str] = {}
        for line in self.readme.splitlines():
            m = README_RE.match(line.strip())
            if m:
                mapping.setdefault(m.group(1), m.group(2))
        missing = [w for w in wnids if w not in mapping]
        if missing:
            print(
                f"warning: README.txt names no class for {len(missing)} wnid(s) (first 5: {first(missing)}); "
                "class_names.tsv is not written.",
                file=sys.stderr,
            )
            return None
        return {w: mapping[w] for w in wnids}


def _parse_list(path: Path) -> list[tuple[str, str, str]]:
    """``(wnid, file name, origin)`` per line of a list file."""
    out = []
    for lineno, line in read_list(path):
        rel = line[len(TOP) + 1:] if line.startswith(TOP + "/") else line
        parts = rel.split("/")
        if (len(parts) != 2 or any(c.isspace() for c in rel) or not WNID_RE.match(parts[0])
                or not safe_component(parts[1])):
            raise PrepError(
                f"malformed line {lineno} in {path}: {line!r}. Each line must be one relative path "
                "<wnid>/<file>, e.g. n01443537/art_0.jpg."
            )
        problem = image_name_problem(parts[1])
        if problem:
            raise PrepError(f"line {lineno} in {path} names {line!r}: {problem}. Remove the line from the list.")
        out.append((parts[0], parts[1], f"{path}:{lineno}"))
    return out


def _parse_lists(train_list: Path, val_list: Path) -> dict[str, list[tuple[str, str, str]]]:
    """Parse both lists and check they are non-empty and disjoint (before the source scan)."""
    split = {"train": _parse_list(train_list), "val": _parse_list(val_list)}
    for name, path in (("train", train_list), ("val", val_list)):
        if not split[name]:
            raise PrepError(f"the {name} list {path} has no entries. Pass a list with one <wnid>/<file> per line.")
    train_keys = {(w, f) for w, f, _ in split["train"]}
    overlap = [f"{w}/{f} ({o})" for w, f, o in split["val"] if (w, f) in train_keys]
    if overlap:
        raise PrepError(
            f"{len(overlap)} file(s) are in both the train and the val list (first 5: {first(overlap)}). "
            "Train and val must be disjoint; fix the lists."
        )
    return split


def _check_listed(ds: Dataset, split: dict[str, list[tuple[str, str, str]]]) -> None:
    """Every listed file must exist in the source."""
    missing = [f"{w}/{f}" for entries in split.values() for w, f, _ in entries if f not in ds.files.get(w, {})]
    if missing:
        raise PrepError(
            f"{len(missing)} file(s) named in the lists are absent from {ds.src} (first 5: {first(missing)}). "
            "Check that --src is the full ImageNet-R and that the lists belong to it."
        )


def _check_no_empty_class(split: dict[str, list[tuple[str, str, str]]], how: str) -> None:
    """Every class must have images in both splits (main.py refuses an empty class folder)."""
    have = {name: {w for w, _, _ in entries} for name, entries in split.items()}
    for name, other in (("val", "train"), ("train", "val")):
        lacking = sorted(have[other] - have[name])
        if lacking:
            raise PrepError(
                f"{len(lacking)} class(es) have {other} images but no {name} images in {how} (first 5: "
                f"{first(lacking)}); every class needs images in both train and val (main.py refuses an "
                "empty class folder). " + ("Fix the lists." if how.startswith("the lists") else
                                           "Every class needs at least 2 images.")
            )


def _seeded_split(ds: Dataset, seed: int, val_fraction: float) -> dict[str, list[tuple[str, str, str]]]:
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    split: dict[str, list[tuple[str, str, str]]] = {"train": [], "val": []}
    for wnid in sorted(ds.files):
        names = sorted(ds.files[wnid])
        n = len(names)
        k = round(val_fraction * n)
        if n >= 2:
            k = min(max(k, 1), n - 1)
        perm = rng.permutation(n)
        val_idx = set(int(i) for i in perm[:k])
        for i, name in enumerate(names):
            split["val" if i in val_idx else "train"].append((wnid, name, f"seeded split of {wnid}"))
    return split


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, src_help="the imagenet-r/ folder or imagenet-r.tar (copy semantics for a tar)")
    parser.add_argument("--train-list", type=Path, help="list of train files (<wnid>/<file> per line); needs --val-list")
    parser.add_argument("--val-list", type=Path, help="list of val files (<wnid>/<file> per line); needs --train-list")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class split without lists (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="fraction of each class for val without lists (default 0.2)")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    if (args.train_list is None) != (args.val_list is None):
        raise PrepError(
            "only one of --train-list / --val-list was given. Pass both lists, or neither for a "
            "seeded split (--seed, --val-fraction)."
        )
    use_lists = args.train_list is not None
    if not use_lists and not 0.0 < args.val_fraction < 1.0:
        raise PrepError(f"--val-fraction must lie strictly between 0 and 1, got {args.val_fraction}.")
    if not use_lists and args.seed < 0:
        raise PrepError(f"--seed must be a non-negative integer, got {args.seed}.")
    src, dst = check_src_dst(args.src, args.dst)
    # list problems are reported before the (possibly slow) source scan
    listed = _parse_lists(args.train_list, args.val_list) if use_lists else None
    ds = Dataset(src)
    try:
        if listed is not None:
            _check_listed(ds, listed)
            _check_no_empty_class(listed, f"the lists {args.train_list} and {args.val_list}")
            split = listed
            options: dict[str, object] = {
                "train_list": os.path.abspath(args.train_list), "val_list": os.path.abspath(args.val_list),
            }
        else:
            split = _seeded_split(ds, args.seed, args.val_fraction)
            _check_no_empty_class(split, f"the seeded split (--val-fraction {args.val_fraction})")
            options = {"seed": args.seed, "val_fraction": args.val_fraction}
        classes = sorted({w for entries in split.values() for w, _, _ in entries})
        items = [
            Item(name, wnid, fname, ds.source(wnid, fname), origin)
            for name, entries in split.items() for wnid, fname, origin in entries
        ]
        mode = args.mode
        if ds.tar is not None:
            if mode != "copy":
                print(f"note: the source is a tar; members are extracted into --dst (copy semantics), --mode {mode} does not apply.",
                      file=sys.stderr)
            mode = "copy"
        return materialize(
            tool=TOOL, src=src, dst=dst, mode=mode, items=items, classes=classes,
            class_names=ds.class_names(classes), options=options,
        )
    finally:
        if ds.tar is not None:
            ds.tar.close()


if __name__ == "__main__":
    run_main(main)
