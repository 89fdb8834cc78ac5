"""Shared by tools/split_*.py: a tool turns its source into a plan (Items), materialize() writes it into --dst.
Nothing is written outside --dst, through a link or into a special file; nothing is deleted but our own temporaries."""
from __future__ import annotations

import argparse
import datetime as _dt
import errno
import functools
import json
import os
import shutil
import stat
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, NamedTuple, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: splitlora.run.fileio
from splitlora.run.fileio import atomic_replace, atomic_write_text  # noqa: E402  (light: no torch)

SPLITS, MODES = ("train", "val"), ("symlink", "hardlink", "copy")
INFO_NAME, NAMES_NAME, TMP_SUFFIX = "prepare_info.json", "class_names.tsv", ".prep-tmp"
TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, zlib.error)
# datasets/folder.py's (importing it imports torch); tests/tools/test_split_imagenet_r.py checks that they agree
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_KINDS = {stat.S_IFREG: "a regular file", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link",
          stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device"}


class PrepError(Exception):
    """Printed as one ``error: <message>`` line, exit code 2."""


def first(values: Iterable[object], n: int = 5) -> str:
    return ", ".join(str(v) for _, v in zip(range(n), values))


def kind(what: int | str | Path) -> str | None:
    """What a file is in words, from its ``st_mode`` or its path (links followed; None: nothing there)."""
    if not isinstance(what, int):
        try:
            what = os.stat(what).st_mode
        except (FileNotFoundError, NotADirectoryError):
            return None
    return _KINDS.get(stat.S_IFMT(what), "a special file")


def safe_component(part: str) -> bool:
    return part not in ("", ".", "..") and not any(c in part for c in "/\\\0")


def image_name_problem(name: str) -> str | None:  # why main.py would not load it as an image (None: it would)
    if name.startswith("."):
        return f"{name!r} is a hidden file (its name starts with '.'), which main.py skips"
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        return f"{name!r} is not an image file: main.py loads only {', '.join(IMAGE_EXTENSIONS)} files"
    return None


def open_tar(path: Path, hint: str) -> tarfile.TarFile:
    try:
        tar = tarfile.open(path, "r:*")
    except TAR_ERRORS:  # (an OSError goes to run_main)
        raise PrepError(f"{path} is not a readable tar archive (expected a .tar, .tar.gz, .tar.bz2 or .tar.xz). {hint}")
    tar.errorlevel = 2  # every extraction problem raises (level 1 ignores some)
    return tar


def tar_members(tar: tarfile.TarFile, path: Path, hint: str) -> Iterable[tuple[list[str], tarfile.TarInfo]]:
    try:
        for m in tar:
            yield [p for p in m.name.split("/") if p not in ("", ".")], m
    except (*TAR_ERRORS, OSError) as exc:
        raise PrepError(f"{path} is not a readable tar archive or is damaged ({exc}). {hint}")


def parse_lists(lists: dict[str, Sequence[Path]], parse: Callable[[str], tuple[str, object]], fmt: str) -> dict:
    """Each split's ``[(rel, extra, "<list>:<line>")]``; ``parse(line)``: ``(rel, extra)`` or ValueError(why)."""
    split: dict[str, list] = {name: [] for name in lists}
    for name, path in ((name, path) for name, paths in lists.items() for path in paths):
        what = kind(path)
        if what != "a regular file":
            raise PrepError(f"list file {path} is {what}, not a text file" if what else f"list file not found: {path}")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise PrepError(f"list file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).")
        before = len(split[name])
        for lineno, line in ((n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()):
            try:
                split[name].append((*parse(line), f"{path}:{lineno}"))  # type: ignore[arg-type]
            except ValueError as exc:
                raise PrepError(f"malformed line {lineno} in {path}: {line!r} ({exc}); lines are {fmt}.")
        if len(split[name]) == before:
            raise PrepError(f"list file {path} has no entries; lines are {fmt}.")
    train = {rel for rel, _, _ in split["train"]}
    both = [f"{rel} ({origin})" for rel, _, origin in split["val"] if rel in train]
    if both:
        raise PrepError(f"{len(both)} file(s) are in both the train and the val lists (first 5: {first(both)}).")
    return split


def folder_lookup(root: Path) -> Callable[[str], Source | str | None]:
    """``lookup(rel)``: a FileSource for the regular file ``root/rel``, None if missing, else why it is no image."""
    real, real_dir = os.path.realpath(root), functools.lru_cache(maxsize=None)(os.path.realpath)

    def lookup(rel: str) -> Source | str | None:
        path = os.path.join(root, rel)
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target, st = os.path.realpath(path), os.stat(path)
            else:
                target = os.path.join(real_dir(os.path.dirname(path)), os.path.basename(path))
        except OSError:  # missing, dangling link, link loop
            return None
        if target != real and not target.startswith(real + os.sep):
            return f"leads outside --src {root} (to {target})"
        if not stat.S_ISREG(st.st_mode):
            return f"is {kind(st.st_mode)} in --src, not a regular file"
        return FileSource(path)
    return lookup


def listed_items(split: dict, lookup: Callable[[str], object], place: Callable, hint: str) -> list[Item]:
    items, missing = [], []
    for name, (rel, extra, origin) in ((name, entry) for name, entries in split.items() for entry in entries):
        found = lookup(rel)
        if isinstance(found, str):
            raise PrepError(f"{rel} ({origin}) {found}; only regular files inside --src are images. Fix the list.")
        if found is None:
            missing.append(rel)
        else:
            items.append(Item(name, *place(rel, extra), found, origin))
    if missing:
        raise PrepError(f"{len(missing)} file(s) listed are absent from --src (first 5: {first(missing)}). {hint}")
    return items


class Source:
    """An entry's content: write(tmp, mode) creates tmp; state(dest, lstat) is (the --mode an existing dest
    was made with, whether it equals this); where: for messages; order: of the writes."""
    order, where, size = 0, "", -1

    def state(self, dest: Path, st: os.stat_result) -> tuple[str, bool]:
        return ("symlink", False) if stat.S_ISLNK(st.st_mode) else ("copy", st.st_size == self.size)


class FileSource(Source):
    def __init__(self, path: str) -> None:
        self.where = self.path = path  # absolute, as the user spelled it (the symlink target)

    def write(self, tmp: Path, mode: str) -> None:
        try:
            {"symlink": os.symlink, "hardlink": os.link, "copy": shutil.copyfile}[mode](self.path, tmp)
        except OSError as exc:
            if mode != "hardlink" or exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            raise PrepError(f"cannot hard-link {self.path} into {tmp.parent} ({exc.strerror}); use another --mode.")

    def state(self, dest: Path, st: os.stat_result) -> tuple[str, bool]:
        if stat.S_ISLNK(st.st_mode):
            return "symlink", os.readlink(dest) == self.path or (
                os.path.realpath(dest) == os.path.realpath(self.path) and os.path.exists(dest))
        try:
            sst = os.stat(self.path)
        except OSError:
            return "copy", False
        same = (st.st_dev, st.st_ino) == (sst.st_dev, sst.st_ino)
        return ("hardlink" if same else "copy"), same or st.st_size == sst.st_size


# DST/<split>/<cls>/<name> made from source; origin (a list file:line, a pickle row, ...): for messages
Item = NamedTuple("Item", [("split", str), ("cls", str), ("name", str), ("source", Source), ("origin", str)])


def parse_args(doc: str, argv: list[str] | None, src_help: str, with_mode: bool = True, list_format: str = "",
               several: bool = False, **more: dict) -> tuple[argparse.Namespace, Path, Path]:
    """The arguments (lists with a ``list_format``, --option for option=kwargs) and checked absolute --src, --dst."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--src", required=True, type=Path, help=src_help)
    parser.add_argument("--dst", required=True, type=Path, help="destination folder, not inside --src")
    if with_mode:
        parser.add_argument("--mode", choices=MODES, default="symlink", help="symlink (default), hardlink or copy")
    for split in SPLITS if list_format else ():
        parser.add_argument(f"--{split}-list", type=Path, nargs="+" if several else None, required=several,
                            help=f"{split} list{'s (concatenated)' if several else ''}; lines {list_format}")
    for name, kwargs in more.items():
        parser.add_argument(f"--{name.replace('_', '-')}", **kwargs)
    args = parser.parse_args(argv)
    src, dst = Path(os.path.abspath(args.src)), Path(os.path.abspath(args.dst))
    if (what := kind(src)) not in ("a folder", "a regular file"):
        raise PrepError(f"--src {src} is {what}, not a folder or an archive file." if what else
                        f"source not found: {src}. Check --src (download/extract the dataset first).")
    s, d = src.resolve(), dst.resolve()
    if d == s or s in d.parents:
        raise PrepError(f"--dst {dst} {'is the same as' if d == s else 'lies inside'} --src {src}; use another --dst.")
    if os.path.lexists(dst) and not dst.is_dir():
        raise PrepError(f"--dst {dst} exists and is not a folder. Choose a new or existing folder.")
    return args, src, dst


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    try:
        sys.exit(main(argv))
    except PrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("\nerror: interrupted. Re-run the same command to complete --dst.", file=sys.stderr)
        sys.exit(130)
    except OSError as exc:
        names = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n)
        print(f"error: {exc.strerror or exc}{f' ({names})' if names else ''}; re-running resumes.", file=sys.stderr)
        sys.exit(1)


_MODE_NOUN = {"symlink": "symbolic link", "hardlink": "hard link to its source", "copy": "separate copy"}


def _exists(path: Path, folder: bool = False) -> bool:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not (stat.S_ISDIR if folder else stat.S_ISREG)(mode):
        raise PrepError(f"{path} is {kind(mode)}; nothing is written through links or into special files (remove it).")
    return True


def materialize(tool: str, src: Path, dst: Path, mode: str, items: list[Item], class_names: dict[str, str] | None,
                options: dict[str, object], empty_fix: str | None = None) -> int:
    """Check ``dst`` against the plan (refusing before anything is written), write the missing entries
    (atomically), class_names.tsv and, last (it marks a complete destination), prepare_info.json. The
    classes are the keys of ``class_names`` (else those of the items); an empty one is an error with ``empty_fix``."""
    from tqdm import tqdm  # imported lazily: keeps validation failures fast

    classes = sorted(class_names or {it.cls for it in items})
    planned: dict[tuple[str, str], dict[str, Item]] = {(s, c): {} for s in SPLITS for c in classes}
    for it in items:
        other = planned[(it.split, it.cls)].setdefault(it.name, it)
        if other is not it:
            raise PrepError(f"{other.origin} and {it.origin} have the same destination {it.split}/{it.cls}/{it.name}")
    empty = {s: [c for c in classes if not planned[(s, c)]] for s in SPLITS}
    for split, other in (("val", "train"), ("train", "val")):
        if empty[split] and empty_fix:
            raise PrepError(f"{len(empty[split])} class(es) have {other} images but no {split} images (first 5: "
                            f"{first(empty[split])}); main.py refuses an empty class folder. {empty_fix}")
    tsv = "".join(f"{k}\t{class_names[k]}\n" for k in classes) if class_names else None
    if tsv and (tsv.count("\t"), tsv.count("\n"), "\r" in tsv) != (len(classes), len(classes), False):
        raise PrepError("a class name holds a tab or a line break; fix the source's class names.")
    try:
        old = json.loads((dst / INFO_NAME).read_text(encoding="utf-8")) if _exists(dst / INFO_NAME) else None
    except ValueError:
        old = "not JSON"
    if old is not None and (not isinstance(old, dict) or old.get("tool") != tool):
        raise PrepError(f"{dst / INFO_NAME} is not one written by {tool}: {dst} holds something else. Use a new --dst.")
    modes = [(old["mode"], f"its {INFO_NAME} says so")] if old and isinstance(old.get("mode"), str) else []
    if _exists(dst / NAMES_NAME) and tsv is not None and (dst / NAMES_NAME).read_text(encoding="utf-8") != tsv:
        raise PrepError(f"{dst / NAMES_NAME} differs: {dst} was prepared from another source. Use a new --dst.")

    foreign, to_check, to_write = [], [], []  # (our temporary files, left by an interrupted run, are ignored)
    for split in SPLITS:
        if _exists(dst / split, folder=True):
            foreign += [dst / split / n for n in sorted(os.listdir(dst / split))
                        if (split, n) not in planned and not n.endswith(TMP_SUFFIX)]
        for cls in classes:
            entries, cdir = planned[(split, cls)], dst / split / cls
            existing = {n for n in os.listdir(cdir) if not n.endswith(TMP_SUFFIX)} if _exists(cdir, True) else set()
            to_check += [(cdir / n, it, os.lstat(cdir / n)) for n, it in entries.items() if n in existing]
            to_write += [it for n, it in entries.items() if n not in existing]
            foreign += [cdir / n for n in sorted(existing - entries.keys())]
    if foreign:
        raise PrepError(f"--dst {dst} holds {len(foreign)} entries that are not part of this split (first 5: "
                        f"{first(foreign)}); it was prepared with other settings or data. Use a new --dst.")
    wrong = []
    for dest, it, st in tqdm(to_check, desc=f"{tool}: checking", unit="img", leave=False, disable=not to_check):
        usable = stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)  # not a folder, a FIFO, ...
        found, same = it.source.state(dest, st) if usable else ("", False)
        if found and found != mode:
            modes.append((found, f"e.g. {dest} is a {_MODE_NOUN[found]}"))
        if not same:
            wrong.append(f"{dest} ({kind(st.st_mode)}; expected {it.source.where})")
    for old_mode, evidence in (m for m in modes if m[0] != mode):
        raise PrepError(f"--dst {dst} was prepared with --mode {old_mode} ({evidence}), not --mode {mode}: re-run with "
                        f"--mode {old_mode} to complete it, or use a new --dst for --mode {mode}.")
    if wrong:
        raise PrepError(f"{len(wrong)} existing destination entries do not match the source (first 5: "
                        f"{first(wrong)}). Nothing was overwritten; remove them or use a new --dst.")
    near = next(p for p in (dst, *dst.parents) if p.exists())  # hard links: refused before anything is written
    if mode == "hardlink" and to_write and os.stat(to_write[0].source.path).st_dev != os.stat(near).st_dev:
        raise PrepError(f"--mode hardlink needs --src and --dst on one filesystem ({src}, {dst} are not); use another.")
    for split, cls in planned:
        (dst / split / cls).mkdir(parents=True, exist_ok=True)
    to_write.sort(key=lambda it: (it.source.order, it.split, it.cls, it.name))
    for it in tqdm(to_write, desc=f"{tool}: writing", unit="img", disable=not to_write):
        atomic_replace(dst / it.split / it.cls / it.name, lambda tmp: it.source.write(tmp, mode), suffix=TMP_SUFFIX)
    wrote_tsv = tsv is not None and not (dst / NAMES_NAME).exists()
    if wrote_tsv:
        atomic_write_text(dst / NAMES_NAME, tsv, suffix=TMP_SUFFIX)
    counts = {s: sum(len(planned[(s, c)]) for c in classes) for s in SPLITS}
    if old is not None and not to_write and not wrote_tsv:
        print(f"{tool}: destination already complete, nothing changed.")
    else:
        info = {"tool": tool, "source": str(src), "mode": mode, "num_classes": len(classes), "images": counts,
                "class_names_file": NAMES_NAME if tsv is not None else None, "options": options,
                "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        atomic_write_text(dst / INFO_NAME, json.dumps(info, indent=2) + "\n", suffix=TMP_SUFFIX)
        print(f"{tool}: completed an existing destination ({len(to_write)} entries added, {len(to_check)} already "
              "present)." if old is not None or to_check else f"{tool}: done ({len(to_write)} entries written).")
    for split in (s for s in SPLITS if empty[s]):
        print(f"warning: {len(empty[split])} class(es) have no {split} images (first 5: {first(empty[split])}).",
              file=sys.stderr)
    print(f"  classes:     {len(classes)}\n  train:       {counts['train']} images\n  val:         {counts['val']} "
          f"images\n  mode:        {mode}\n  destination: {dst}")
    return 0
