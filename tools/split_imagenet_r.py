#!/usr/bin/env python3
"""Prepare ImageNet-R as DST/train/<wnid>/<file> + DST/val/<wnid>/<file>.

The source is the ``imagenet-r`` folder (200 wnid folders such as n01443537) or ``imagenet-r.tar``
(members ``imagenet-r/<wnid>/<file>``). With ``--train-list`` and ``--val-list`` (one path per
line, e.g. ``n01443537/art_0.jpg``, an optional leading ``imagenet-r/`` is tolerated) exactly
those files are used. Without lists a seeded per-class split is made: one
``numpy.random.Generator(PCG64(seed))`` is created, then for each wnid in sorted order the sorted
file names are permuted with it and the first ``round(val_fraction * n)`` (at least 1 and at most
n - 1 when n >= 2) go to val. The result is identical on every machine.

Images are regular files with an image extension (in a folder: inside it, links followed), put
in place per ``--mode``; from a tar the needed members (files, or hard links to them) are
extracted through tarfile's "data" filter and renamed into place (copy semantics).
``class_names.tsv`` is written when the source has a README.txt with lines ``<wnid> <name>``.
"""
from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
from pathlib import Path
from typing import Sequence

sys.dont_write_bytecode = True  # keep the repository clean: nothing written outside --dst
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _prep_common import (  # noqa: E402
    TAR_ERRORS, TMP_SUFFIX, FileSource, Item, PrepError, Source, add_common_args, check_src_dst,
    first, folder_lookup, image_name_problem, materialize, open_tar, parse_lists, resolve_listed,
    run_main, safe_component, tar_members,
)

TOOL = "split_imagenet_r"
WNID_RE = re.compile(r"^n\d{8}$")
README_RE = re.compile(r"^(n\d{8})\s+(\S.*?)\s*$")
TOP = "imagenet-r"
LINE_FORMAT = "one relative path <wnid>/<file>, e.g. n01443537/art_0.jpg"
HINT = ("Point --src at the extracted imagenet-r/ folder (holding the wnid folders such as n01443537) "
        "or at imagenet-r.tar.")
Inventory = tuple[dict[str, Source], dict[str, str], "str | None"]  # images, unusable entries, README


class TarMemberSource(Source):
    """A member of the source tar, extracted through tarfile's "data" filter."""

    def __init__(self, tar: tarfile.TarFile, member: tarfile.TarInfo, size: int, src: Path) -> None:
        self.tar, self.member, self.size, self.order = tar, member, size, member.offset
        self.where = f"{src}:{member.name}"

    def filtered(self, dest: str) -> tarfile.TarInfo:
        """The member as the "data" filter would extract it into ``dest``; PrepError if refused."""
        try:
            return tarfile.data_filter(self.member, dest)
        except tarfile.FilterError as exc:
            raise PrepError(f"tarfile's safety filter refuses the member {self.where}: {exc}. Nothing was "
                            "extracted; this is not a plain ImageNet-R archive, re-download it.") from None

    def write(self, tmp: Path, mode: str) -> None:
        stage = tempfile.mkdtemp(prefix=".extract-", suffix=TMP_SUFFIX, dir=tmp.parent)  # fresh, ours
        try:
            out = os.path.join(stage, self.filtered(stage).name)
            try:
                self.tar.extract(self.member, stage, set_attrs=False, filter="data")
            except (*TAR_ERRORS, KeyError) as exc:
                raise PrepError(f"cannot extract {self.where} ({exc}); the archive is damaged. Re-download it.") from None
            if not stat.S_ISREG(os.lstat(out).st_mode):
                raise PrepError(f"the member {self.where} does not extract to a regular file (a link to a special "
                                "member?); this is not a plain ImageNet-R archive, re-download it.")
            os.replace(out, tmp)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def scan_folder(src: Path) -> Inventory:
    """Images (regular files inside ``src``) and unusable image-named entries of a folder source."""
    with os.scandir(src) as it:
        wnids = sorted(e.name for e in it if WNID_RE.match(e.name) and e.is_dir())
    if not wnids:
        extra = f" Did you mean --src {src / TOP}?" if (src / TOP).is_dir() else ""
        raise PrepError(f"{src} has no wnid folders (like n01443537).{extra} {HINT}")
    lookup, files, odd = folder_lookup(src), {}, {}
    for wnid in wnids:
        with os.scandir(src / wnid) as it:
            for rel in sorted(f"{wnid}/{e.name}" for e in it if not image_name_problem(e.name)):
                got = lookup(rel)
                if isinstance(got, int):
                    files[rel] = FileSource(os.path.join(str(src), rel), got)
                elif got is not None:
                    odd[rel] = got
    if not files:
        raise PrepError(f"{src} holds no wnid folders with images (expected <wnid>/<image>, e.g. "
                        f"n01443537/art_0.jpg). {HINT}")
    readme = src / "README.txt"
    return files, odd, readme.read_text(encoding="utf-8", errors="replace") if readme.is_file() else None


def scan_tar(tar: tarfile.TarFile, src: Path) -> Inventory:
    """Images (file members, or hard links) and unusable image-named members of a tar source."""
    files: dict[str, Source] = {}
    odd: dict[str, str] = {}
    sizes: dict[str, int] = {}  # member name -> size, to size hard links
    readme = None
    for parts, m in tar_members(tar, src, HINT):
        if m.isfile():
            sizes[m.name] = m.size
        if len(parts) == 3 and parts[0] == TOP and WNID_RE.match(parts[1]) and not image_name_problem(parts[2]):
            rel = f"{parts[1]}/{parts[2]}"
            if m.isfile() or m.islnk():
                files[rel] = TarMemberSource(tar, m, m.size if m.isfile() else sizes.get(m.linkname, -1), src)
            else:
                what = "a symbolic link" if m.issym() else "a folder" if m.isdir() else "a special file"
                odd[rel] = f"is {what} in the archive, not a regular file"
        elif parts == [TOP, "README.txt"] and m.isfile():
            readme = tar.extractfile(m).read(1 << 20).decode("utf-8", "replace")  # type: ignore[union-attr]
    if not files:
        raise PrepError(f"the archive {src} has no members {TOP}/<wnid>/<image> (e.g. {TOP}/n01443537/art_0.jpg). {HINT}")
    return files, odd, readme


def parse_line(line: str) -> tuple[str, None]:
    """The ``wnid/file`` of a list line (a leading ``imagenet-r/`` dropped); ValueError(why) when malformed."""
    rel = line[len(TOP) + 1:] if line.startswith(TOP + "/") else line
    parts = rel.split("/")
    if len(parts) != 2 or any(c.isspace() for c in rel) or not WNID_RE.match(parts[0]) or not safe_component(parts[1]):
        raise ValueError("not a relative path <wnid>/<file>")
    if image_name_problem(parts[1]):
        raise ValueError(image_name_problem(parts[1]))
    return rel, None


def seeded_split(files: dict[str, Source], seed: int, val_fraction: float) -> dict[str, list[tuple[str, object, str]]]:
    """The documented per-class split (see the module docstring)."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(seed))
    split: dict[str, list[tuple[str, object, str]]] = {"train": [], "val": []}
    by_wnid: dict[str, list[str]] = {}
    for rel in sorted(files):
        by_wnid.setdefault(rel.split("/")[0], []).append(rel)
    for wnid, rels in by_wnid.items():
        n, k = len(rels), round(val_fraction * len(rels))
        val_idx = {int(i) for i in rng.permutation(n)[:min(max(k, 1), n - 1) if n >= 2 else k]}
        for i, rel in enumerate(rels):
            split["val" if i in val_idx else "train"].append((rel, None, f"seeded split of {wnid}"))
    return split


def class_names(readme: str | None, wnids: Sequence[str]) -> dict[str, str] | None:
    """wnid -> name from README.txt, or None when there is no README or it lacks wnids."""
    mapping: dict[str, str] = {}
    for m in filter(None, (README_RE.match(line.strip()) for line in (readme or "").splitlines())):
        mapping.setdefault(m.group(1), m.group(2))
    missing = [w for w in wnids if w not in mapping]
    if readme is not None and missing:
        print(f"warning: README.txt names no class for {len(missing)} wnid(s) (first 5: {first(missing)}); "
              "class_names.tsv is not written.", file=sys.stderr)
    return None if readme is None or missing else {w: mapping[w] for w in wnids}


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_common_args(parser, "the imagenet-r/ folder or imagenet-r.tar (copy semantics for a tar)")
    for split, other in (("train", "val"), ("val", "train")):
        parser.add_argument(f"--{split}-list", type=Path, help=f"list of {split} files (<wnid>/<file> per line); "
                            f"needs --{other}-list")
    parser.add_argument("--seed", type=int, default=0, help="seed of the per-class split without lists (default 0)")
    parser.add_argument("--val-fraction", type=float, default=0.2,
                        help="fraction of each class for val without lists (default 0.2)")
    args = parser.parse_args(argv)
    lists = args.train_list is not None
    if lists != (args.val_list is not None):
        raise PrepError("only one of --train-list / --val-list was given. Pass both lists, or neither for a "
                        "seeded split (--seed, --val-fraction).")
    if not lists and not 0.0 < args.val_fraction < 1.0:
        raise PrepError(f"--val-fraction must lie strictly between 0 and 1, got {args.val_fraction}.")
    if not lists and args.seed < 0:
        raise PrepError(f"--seed must be a non-negative integer, got {args.seed}.")
    src, dst = check_src_dst(args.src, args.dst)
    if lists:  # list problems are reported before the (possibly slow) source scan
        split = parse_lists({"train": [args.train_list], "val": [args.val_list]}, parse_line, LINE_FORMAT)
    if not src.is_dir() and not hasattr(tarfile, "data_filter"):
        raise PrepError("extracting a tar safely needs tarfile's extraction filters (Python 3.11.4+, 3.10.12+ or "
                        "3.9.17+). Use such a Python, or extract imagenet-r.tar yourself and pass the folder.")
    with contextlib.nullcontext() if src.is_dir() else open_tar(src, HINT) as tar:
        files, odd, readme = scan_folder(src) if tar is None else scan_tar(tar, src)
        if lists:
            resolve_listed(split, lambda rel: files.get(rel) or odd.get(rel), src,
                           "Check that --src is the full ImageNet-R and that the lists belong to it.")
            fix = f"Fix the lists {args.train_list} and {args.val_list}."
            options: dict[str, object] = {"train_list": os.path.abspath(args.train_list),
                                          "val_list": os.path.abspath(args.val_list)}
        else:
            if odd:
                print(f"warning: skipped {len(odd)} image-named entr{'y' if len(odd) == 1 else 'ies'} of {src} that "
                      f"are no images (first 5: {first(f'{k} {v}' for k, v in odd.items())}).", file=sys.stderr)
            split = seeded_split(files, args.seed, args.val_fraction)
            fix = f"With --val-fraction {args.val_fraction} every class needs at least 2 images."
            options = {"seed": args.seed, "val_fraction": args.val_fraction}
        items = [Item(name, *rel.split("/"), files[rel], origin) for name, entries in split.items()
                 for rel, _, origin in entries]
        for it in items:  # a refusal of tarfile's filter stops the run before anything is written
            if isinstance(it.source, TarMemberSource):
                it.source.filtered(str(dst))
        if tar is not None and args.mode != "copy":
            print(f"note: the source is a tar; members are extracted into --dst (copy semantics), --mode {args.mode} "
                  "does not apply.", file=sys.stderr)
        classes = sorted({it.cls for it in items})
        return materialize(tool=TOOL, src=src, dst=dst, mode="copy" if tar is not None else args.mode, items=items,
                           classes=classes, class_names=class_names(readme, classes), options=options,
                           refuse_empty=fix)


if __name__ == "__main__":
    run_main(main)
