#!/usr/bin/env python3
"""Prepare ImageNet-R as DST/train/<wnid>/<file> + DST/val/<wnid>/<file>.

--src: the imagenet-r folder (wnid folders such as n01443537) or imagenet-r.tar, whose members are extracted
through tarfile's "data" filter (copy semantics). With --train-list and --val-list (lines such as
n01443537/art_0.jpg) exactly those files are used; without, a seeded per-class split, the same on every
machine: one numpy.random.Generator(PCG64(seed)) permutes each wnid's sorted file names, wnids in sorted
order, and the first round(val_fraction * n) (at least 1, at most n - 1 when n >= 2) go to val. Images
are regular files with an image extension; class_names.tsv comes from a README.txt ("<wnid> <name>" lines)."""
import contextlib
import os
import re
import shutil
import stat
import sys
import tarfile
import tempfile
from pathlib import Path

import numpy as np

sys.dont_write_bytecode = True  # keep the repository clean: nothing written outside --dst
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _prep_common import (  # noqa: E402
    TAR_ERRORS, TMP_SUFFIX, PrepError, Source, first, folder_lookup, image_name_problem, listed_items, materialize,
    open_tar, parse_args, parse_lists, run_main, safe_component, tar_members)

WNID_RE = re.compile(r"^n\d{8}$")
LINE_FORMAT = "<wnid>/<file>, e.g. n01443537/art_0.jpg"
HINT = "Point --src at the extracted imagenet-r/ folder (holding wnid folders such as n01443537) or at imagenet-r.tar."


class TarMemberSource(Source):
    def __init__(self, tar: tarfile.TarFile, member: tarfile.TarInfo, size: int, src: Path) -> None:
        self.tar, self.member, self.size, self.order = tar, member, size, member.offset
        self.where = f"{src}:{member.name}"

    def filtered(self, dest: str) -> tarfile.TarInfo:  # the member as the "data" filter extracts it into dest
        try:
            return tarfile.data_filter(self.member, dest)
        except tarfile.FilterError as exc:
            raise PrepError(f"tarfile's safety filter refuses the member {self.where}: {exc}. Re-download the archive.")

    def write(self, tmp: Path, mode: str) -> None:
        stage = tempfile.mkdtemp(prefix=".extract-", suffix=TMP_SUFFIX, dir=tmp.parent)  # fresh, ours
        try:
            out = os.path.join(stage, self.filtered(stage).name)
            try:
                self.tar.extract(self.member, stage, set_attrs=False, filter="data")
            except (*TAR_ERRORS, KeyError) as exc:
                raise PrepError(f"cannot extract {self.where} ({exc}); the archive is damaged, re-download it.")
            if not stat.S_ISREG(os.lstat(out).st_mode):
                raise PrepError(f"the member {self.where} does not extract to a regular file. Re-download the archive.")
            os.replace(out, tmp)
        finally:
            shutil.rmtree(stage, ignore_errors=True)


def scan(src: Path, tar: tarfile.TarFile | None) -> tuple[dict[str, Source], dict[str, str], str | None]:
    """The images (<wnid>/<file> -> Source), why image-named entries are no images, and README.txt."""
    files, odd, readme = {}, {}, None
    if tar is None:
        lookup, wnids = folder_lookup(src), [n for n in os.listdir(src) if WNID_RE.match(n) and (src / n).is_dir()]
        for rel in sorted(f"{w}/{n}" for w in wnids for n in os.listdir(src / w) if not image_name_problem(n)):
            got = lookup(rel)
            if got is not None:
                (odd if isinstance(got, str) else files)[rel] = got
        if (src / "README.txt").is_file():
            readme = (src / "README.txt").read_text(encoding="utf-8", errors="replace")
    else:
        sizes: dict[str, int] = {}  # member name -> size, to size hard links
        for parts, m in tar_members(tar, src, HINT):
            sizes[m.name], rel = (m.size if m.isfile() else -1), "/".join(parts[1:])
            if (len(parts) == 3 and parts[0] == "imagenet-r" and WNID_RE.match(parts[1])
                    and not image_name_problem(parts[2])):
                if m.isfile() or m.islnk():
                    files[rel] = TarMemberSource(tar, m, m.size if m.isfile() else sizes.get(m.linkname, -1), src)
                else:
                    what = "a symbolic link" if m.issym() else "a folder" if m.isdir() else "a special file"
                    odd[rel] = f"is {what} in the archive, not a regular file"
            elif parts == ["imagenet-r", "README.txt"] and m.isfile():
                readme = tar.extractfile(m).read(1 << 20).decode("utf-8", "replace")  # type: ignore[union-attr]
    if not files:
        extra = f" Did you mean --src {src / 'imagenet-r'}?" if (src / "imagenet-r").is_dir() else ""
        what = "wnid folders with images" if tar is None else "members imagenet-r/<wnid>/<image>"
        raise PrepError(f"{src} has no {what} (e.g. n01443537/art_0.jpg).{extra} {HINT}")
    return files, odd, readme


def parse_line(line: str) -> tuple[str, None]:
    rel = line.removeprefix("imagenet-r/")
    parts = rel.split("/")
    if len(parts) != 2 or any(c.isspace() for c in rel) or not WNID_RE.match(parts[0]) or not safe_component(parts[1]):
        raise ValueError("not a relative path <wnid>/<file>")
    if image_name_problem(parts[1]):
        raise ValueError(image_name_problem(parts[1]))
    return rel, None


def seeded_split(files: dict[str, Source], seed: int, val_fraction: float) -> dict[str, list[tuple[str, None, str]]]:
    rng, split, by_wnid = np.random.Generator(np.random.PCG64(seed)), {"train": [], "val": []}, {}
    for rel in sorted(files):
        by_wnid.setdefault(rel.split("/")[0], []).append(rel)
    for wnid, rels in by_wnid.items():
        n, k = len(rels), round(val_fraction * len(rels))
        val_idx = {int(i) for i in rng.permutation(n)[:min(max(k, 1), n - 1) if n >= 2 else k]}
        for i, rel in enumerate(rels):
            split["val" if i in val_idx else "train"].append((rel, None, f"seeded split of {wnid}"))
    return split


def class_names(readme: str | None, wnids: set[str]) -> dict[str, str] | None:
    lines = map(str.strip, (readme or "").splitlines())
    mapping = dict(reversed([m.groups() for m in map(re.compile(r"(n\d{8})\s+(\S.*?)\s*").fullmatch, lines) if m]))
    missing = sorted(wnids - mapping.keys())
    if readme is not None and missing:
        print(f"warning: README.txt names no class for {len(missing)} wnid(s) (first 5: {first(missing)}); "
              "class_names.tsv is not written.", file=sys.stderr)
    return None if readme is None or missing else {w: mapping[w] for w in wnids}


def main(argv: list[str] | None = None) -> int:
    args, src, dst = parse_args(
        __doc__, argv, "the imagenet-r/ folder or imagenet-r.tar (copy semantics for a tar)", list_format=LINE_FORMAT,
        seed=dict(type=int, default=0, help="seed of the split without lists (default 0)"),
        val_fraction=dict(type=float, default=0.2, help="fraction of each class for val without lists (default 0.2)"))
    lists = args.train_list is not None
    if lists != (args.val_list is not None):
        raise PrepError("only one of --train-list / --val-list was given. Pass both, or neither for a seeded split.")
    if not lists and not (0.0 < args.val_fraction < 1.0 and args.seed >= 0):
        raise PrepError(f"--val-fraction must be in (0, 1) and --seed >= 0, not {args.val_fraction} and {args.seed}.")
    if lists:  # list problems are reported before the (possibly slow) source scan
        split = parse_lists({"train": [args.train_list], "val": [args.val_list]}, parse_line, LINE_FORMAT)
    if not src.is_dir() and not hasattr(tarfile, "data_filter"):
        raise PrepError("this Python's tarfile lacks the 'data' filter (3.11.4+, 3.10.12+, 3.9.17+): pass a folder.")
    with contextlib.nullcontext() if src.is_dir() else open_tar(src, HINT) as tar:
        files, odd, readme = scan(src, tar)
        if lists:
            fix = f"Fix the lists {args.train_list} and {args.val_list}."
            options = {"train_list": os.path.abspath(args.train_list), "val_list": os.path.abspath(args.val_list)}
        else:
            if odd:
                print(f"warning: skipped {len(odd)} image-named entr{'y' if len(odd) == 1 else 'ies'} of {src} that "
                      f"are no images (first 5: {first(f'{k} {v}' for k, v in odd.items())}).", file=sys.stderr)
            split = seeded_split(files, args.seed, args.val_fraction)
            fix = f"With --val-fraction {args.val_fraction} every class needs at least 2 images."
            options = {"seed": args.seed, "val_fraction": args.val_fraction}
        items = listed_items(split, lambda rel: files.get(rel) or odd.get(rel), lambda rel, _: rel.split("/"),
                             "Check that --src is the full ImageNet-R and that the lists belong to it.")
        for it in items:  # a refusal of tarfile's filter stops the run before anything is written
            if isinstance(it.source, TarMemberSource):
                it.source.filtered(str(dst))
        if tar is not None and args.mode != "copy":
            print(f"note: --mode {args.mode} does not apply to a tar: its members are extracted.", file=sys.stderr)
        return materialize("split_imagenet_r", src, dst, "copy" if tar is not None else args.mode, items,
                           class_names(readme, {it.cls for it in items}), options, empty_fix=fix)


if __name__ == "__main__":
    run_main(main)
