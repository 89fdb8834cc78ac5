"""Shared helpers of the dataset-preparation tools ``tools/split_*.py``.

A tool validates its source into a plan (:class:`Item` list); :func:`materialize` checks --dst,
writes what is missing (each entry atomically), then ``class_names.tsv`` and, last (it marks a
complete destination), ``prepare_info.json``. Input problems are :class:`PrepError`: one
``error: ...`` line, exit code 2. Nothing outside --dst is written, nothing is deleted (but this
process' own temporary files), nothing is written through a link or into a special file.
"""
from __future__ import annotations

import argparse
import datetime as _dt
import errno
import json
import os
import shutil
import stat
import sys
import tarfile
import zlib
from pathlib import Path
from typing import Callable, Iterable, Iterator, NamedTuple, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: splitlora.run.fileio
from splitlora.run.fileio import atomic_replace, atomic_write_text  # noqa: E402  (light: no torch)

SPLITS, MODES = ("train", "val"), ("symlink", "hardlink", "copy")
INFO_NAME, NAMES_NAME, TMP_SUFFIX = "prepare_info.json", "class_names.tsv", ".prep-tmp"
TAR_ERRORS = (tarfile.TarError, EOFError, ValueError, zlib.error)
# datasets/folder.py's IMAGE_EXTENSIONS (lower-case compare; names starting with '.' skipped), mirrored
# as importing datasets imports torch; tests/test_tools_imagenet_r.py checks that the two agree.
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")
_KINDS = {stat.S_IFREG: "a regular file", stat.S_IFDIR: "a folder", stat.S_IFLNK: "a symbolic link",
          stat.S_IFIFO: "a FIFO (named pipe)", stat.S_IFSOCK: "a socket", stat.S_IFCHR: "a character device",
          stat.S_IFBLK: "a block device"}


class PrepError(Exception):
    """A user-facing error; printed as ``error: <message>`` and exit code 2, no traceback."""


def first(values: Iterable[object], n: int = 5) -> str:
    """Comma-separated first ``n`` values."""
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
    """Whether ``part`` is usable as one path component (no separators, not . or ..)."""
    return part not in ("", ".", "..") and not any(c in part for c in "/\\\0")


def image_name_problem(name: str) -> str | None:
    """Why main.py would not load a file of this name as an image (None: it would)."""
    if name.startswith("."):
        return f"{name!r} is a hidden file (its name starts with '.'), which main.py skips"
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        return f"{name!r} is not an image file: main.py loads only {', '.join(IMAGE_EXTENSIONS)} files"
    return None


def open_tar(path: Path, hint: str) -> tarfile.TarFile:
    """Open a (possibly compressed) tar archive for reading; a one-line PrepError if it is none."""
    try:
        tar = tarfile.open(path, "r:*")
    except TAR_ERRORS:  # (an OSError goes to run_main)
        raise PrepError(f"{path} is not a readable tar archive (expected a .tar, .tar.gz, .tar.bz2 or .tar.xz "
                        f"file; this file is none of them or is truncated). {hint}") from None
    tar.errorlevel = 2  # every extraction problem raises (level 1 ignores some)
    return tar


def tar_members(tar: tarfile.TarFile, path: Path, hint: str) -> Iterator[tuple[list[str], tarfile.TarInfo]]:
    """``(name parts without '' and '.', member)`` of every member, in archive order."""
    try:
        for m in tar:
            yield [p for p in m.name.split("/") if p not in ("", ".")], m
    except (*TAR_ERRORS, OSError) as exc:
        raise PrepError(f"{path} is not a readable tar archive or is damaged ({exc}). {hint}") from None


def parse_lists(lists: dict[str, Sequence[Path]], parse: Callable[[str], tuple[str, object]],
                line_format: str) -> dict[str, list[tuple[str, object, str]]]:
    """``{split: [(rel, extra, "<list>:<line>"), ...]}`` from each split's list files, where
    ``parse(line)`` gives ``(rel, extra)`` or raises ValueError(why) for a malformed line (an
    error naming file and line). A file listed in both splits is an error too."""
    split: dict[str, list[tuple[str, object, str]]] = {name: [] for name in lists}
    for name, path in ((name, path) for name, paths in lists.items() for path in paths):
        what = kind(path)
        if what != "a regular file":
            raise PrepError(f"list file not found: {path}. Check the path given to --train-list/--val-list." if what
                            is None else f"list file {path} is {what}, not a text file with one entry per line.")
        try:
            lines = path.read_text(encoding="utf-8").splitlines()
        except UnicodeDecodeError as exc:
            raise PrepError(f"list file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}).") from None
        before = len(split[name])
        for lineno, line in ((n, line.strip()) for n, line in enumerate(lines, start=1) if line.strip()):
            try:
                split[name].append((*parse(line), f"{path}:{lineno}"))  # type: ignore[arg-type]
            except ValueError as exc:
                raise PrepError(f"malformed line {lineno} in {path}: {line!r} ({exc}). Each line must be "
                                f"{line_format}.") from None
        if len(split[name]) == before:
            raise PrepError(f"list file {path} has no entries. Each line must be {line_format}.")
    keys = {rel for rel, _, _ in split["train"]}
    overlap = [f"{rel} ({origin})" for rel, _, origin in split["val"] if rel in keys]
    if overlap:
        raise PrepError(f"{len(overlap)} file(s) are in both the train and the val lists (first 5: "
                        f"{first(overlap)}). Train and val must be disjoint; fix the lists.")
    return split


def folder_lookup(root: Path) -> Callable[[str], int | str | None]:
    """``lookup(rel)``: the size of the regular file ``root/rel``, None when it is missing, or a
    phrase saying why it is no image (a FIFO, a link leading outside ``root``, ...)."""
    real, dirs = os.path.realpath(root), {}  # dirs: folder -> its real path

    def lookup(rel: str) -> int | str | None:
        path = os.path.join(root, rel)
        parent = os.path.dirname(path)
        if parent not in dirs:
            dirs[parent] = os.path.realpath(parent)
        try:
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                target, st = os.path.realpath(path), os.stat(path)
            else:
                target = os.path.join(dirs[parent], os.path.basename(path))
        except OSError:  # missing, dangling link, link loop
            return None
        if target != real and not target.startswith(real + os.sep):
            return f"leads outside --src {root} (to {target})"
        return st.st_size if stat.S_ISREG(st.st_mode) else f"is {kind(st.st_mode)} in --src, not a regular file"
    return lookup


def resolve_listed(split: dict[str, list[tuple[str, object, str]]], lookup: Callable[[str], object], src: Path,
                   hint: str) -> dict[str, object]:
    """``lookup(rel)`` of each listed file; a phrase (no image) or None (missing) is an error."""
    found, missing = {}, []
    for rel, _, origin in (entry for entries in split.values() for entry in entries):
        found[rel] = got = lookup(rel)
        if isinstance(got, str):
            raise PrepError(f"{rel} ({origin}) {got}; only regular files inside --src are images. Fix the list.")
        if got is None:
            missing.append(rel)
    if missing:
        raise PrepError(f"{len(missing)} file(s) named in the lists are absent from {src} (first 5: "
                        f"{first(missing)}). {hint}")
    return found


# ---------------------------------------------------------------------------- sources and plan
class Source:
    """Where the content of one destination entry comes from (``where``: for messages)."""

    order, where, size = 0, "", -1  # order: write order hint (e.g. the offset of a tar member)

    def write(self, tmp: Path, mode: str) -> None:
        """Create ``tmp`` (which does not exist yet) with this source's content."""
        raise NotImplementedError

    def state(self, dest: Path, st: os.stat_result) -> tuple[str, bool]:
        """The ``--mode`` an existing ``dest`` (lstat ``st``: a file or a link) was made with and
        whether it already equals this source."""
        return ("symlink", False) if stat.S_ISLNK(st.st_mode) else ("copy", st.st_size == self.size)


class FileSource(Source):
    """A file on disk, linked or copied according to ``--mode``."""

    def __init__(self, path: str, size: int) -> None:
        self.where = self.path = path  # absolute, as the user spelled it (the symlink target)
        self.size = size

    def write(self, tmp: Path, mode: str) -> None:
        try:
            {"symlink": os.symlink, "hardlink": os.link, "copy": shutil.copyfile}[mode](self.path, tmp)
        except OSError as exc:
            if mode != "hardlink" or exc.errno not in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                raise
            raise PrepError(f"cannot hard-link {self.path} into {tmp.parent} ({exc.strerror}); hard links need "
                            "source and destination on the same filesystem and permission to link the source. "
                            "Use --mode symlink or --mode copy instead.") from None

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


# One destination entry DST/<split>/<cls>/<name> made from source; origin (a list file:line, a
# pickle row, ...) says for messages where it was requested.
Item = NamedTuple("Item", [("split", str), ("cls", str), ("name", str), ("source", Source), ("origin", str)])


# ---------------------------------------------------------------------------- command line
def add_common_args(parser: argparse.ArgumentParser, src_help: str, with_mode: bool = True) -> None:
    """Add ``--src``, ``--dst`` and (``with_mode``) ``--mode`` to a tool's parser."""
    parser.add_argument("--src", required=True, type=Path, help=src_help)
    parser.add_argument("--dst", required=True, type=Path, help="destination folder (created if needed; not inside "
                        f"--src); receives train/<class>/, val/<class>/, {NAMES_NAME} and {INFO_NAME}")
    if with_mode:
        parser.add_argument("--mode", choices=MODES, default="symlink", help="how images are placed in --dst: "
                            "symlink (absolute targets, default), hardlink (same filesystem only) or copy")


def check_src_dst(src: Path, dst: Path) -> tuple[Path, Path]:
    """Validate the source/destination pair; return absolute (unresolved) paths."""
    src_abs, dst_abs = Path(os.path.abspath(src)), Path(os.path.abspath(dst))
    what = kind(src_abs)
    if what is None:
        raise PrepError(f"source not found: {src_abs}. Check the --src path (download/extract the dataset first).")
    if what not in ("a folder", "a regular file"):
        raise PrepError(f"--src {src_abs} is {what}, not a folder or an archive file. Point --src at the download.")
    s, d = src_abs.resolve(), dst_abs.resolve()
    if d == s:
        raise PrepError(f"--dst {dst_abs} is the same as --src. Choose a separate destination folder outside the source.")
    if s in d.parents:
        raise PrepError(f"--dst {dst_abs} lies inside --src {src_abs}. Choose a destination outside the source folder.")
    if os.path.lexists(dst_abs) and not dst_abs.is_dir():
        raise PrepError(f"--dst {dst_abs} exists and is not a folder. Choose a new or existing folder as destination.")
    return src_abs, dst_abs


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run a tool's ``main`` and turn known failures into short messages and exit codes."""
    try:
        code = main(argv)
    except PrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:
        print(f"\nerror: interrupted. The destination may be incomplete (it has no up-to-date {INFO_NAME}); "
              "re-run the same command to complete it.", file=sys.stderr)
        code = 130
    except OSError as exc:
        names = " -> ".join(str(n) for n in (exc.filename, exc.filename2) if n)
        print(f"error: {exc.strerror or exc}{f' ({names})' if names else ''}. Check free disk space and permissions "
              "of the source and destination; re-running the same command resumes where it stopped.", file=sys.stderr)
        code = 1
    sys.exit(code)


# ---------------------------------------------------------------------------- destination
_MODE_NOUN = {"symlink": "symbolic link", "hardlink": "hard link to its source", "copy": "separate copy"}


def _mode_conflict(dst: Path, old: str, new: str, evidence: str) -> PrepError:
    return PrepError(f"--dst {dst} was prepared with --mode {old} ({evidence}), but this run uses --mode {new}; "
                     f"one destination cannot mix the two and nothing was changed. Re-run with --mode {old} to "
                     f"complete it, or use a new --dst (or delete {dst} first) for --mode {new}.")


def _exists_as(path: Path, want: Callable[[int], bool]) -> bool:
    """Whether ``path`` exists; a PrepError when it is not what ``want`` accepts (e.g. a symbolic link)."""
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return False
    if not want(mode):
        raise PrepError(f"{path} is {kind(mode)}, not {'a folder' if want is stat.S_ISDIR else 'a regular file'}; "
                        "nothing is written through links or into special files. Use a new --dst (or move it away).")
    return True


def _old_info(dst: Path, tool: str, mode: str, tsv: str | None) -> dict | None:
    """The existing prepare_info.json (None if absent) and class_names.tsv, checked against this run."""
    info, names, old = dst / INFO_NAME, dst / NAMES_NAME, None
    if _exists_as(info, stat.S_ISREG):
        try:
            old = json.loads(info.read_text(encoding="utf-8"))
        except (ValueError, UnicodeDecodeError):
            pass
        if not isinstance(old, dict):
            raise PrepError(f"{info} exists but is not valid JSON. Use a new --dst (or move that file away).")
        if old.get("tool") != tool:
            raise PrepError(f"--dst {dst} was prepared by {old.get('tool')!r}, not {tool}. Use a separate "
                            "destination folder per dataset.")
        if isinstance(old.get("mode"), str) and old["mode"] != mode:
            raise _mode_conflict(dst, old["mode"], mode, f"its {INFO_NAME} says so")
    if _exists_as(names, stat.S_ISREG) and tsv is not None and names.read_text(encoding="utf-8") != tsv:
        raise PrepError(f"{names} exists with different content. This destination was prepared from another "
                        "source; use a new --dst (or move that file away).")
    return old


def _is_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def materialize(*, tool: str, src: Path, dst: Path, mode: str, items: list[Item], classes: Sequence[str],
                class_names: dict[str, str] | None, options: dict[str, object] | None = None,
                info_mode: str | None = None, refuse_empty: str | None = None) -> int:
    """Check ``dst`` against the plan, create what is missing, write names and info, report.

    Entries already matching their source are left untouched; a mismatching entry, entries or
    class folders not in the plan, or links / special files where folders or files belong stop
    the run (exit 2) before anything is written. ``info_mode`` (for a tool without ``--mode``)
    replaces ``mode`` in prepare_info.json and turns off the check against mixing modes. A class
    without images in a split is a warning, or with ``refuse_empty`` (how to fix it) an error.
    """
    from tqdm import tqdm  # imported lazily: keeps validation failures fast

    classes, shown_mode = sorted(classes), info_mode or mode
    planned: dict[tuple[str, str], dict[str, Item]] = {(s, c): {} for s in SPLITS for c in classes}
    for it in items:
        other = planned[(it.split, it.cls)].setdefault(it.name, it)
        if other is not it:
            raise PrepError(f"two entries map to the same destination {it.split}/{it.cls}/{it.name}: {other.origin} "
                            f"({other.source.where}) and {it.origin} ({it.source.where}). Remove the duplicate.")
    empty = {s: [c for c in classes if not planned[(s, c)]] for s in SPLITS}
    for split, other in (("val", "train"), ("train", "val")):
        if empty[split] and refuse_empty:
            raise PrepError(f"{len(empty[split])} class(es) have {other} images but no {split} images (first 5: "
                            f"{first(empty[split])}); every class needs images in both train and val (main.py "
                            f"refuses an empty class folder). {refuse_empty}")
    for folder, name in (class_names or {}).items():
        if any(c in name for c in "\t\r\n"):
            raise PrepError(f"class name {name!r} of {folder} contains a tab or newline; fix the source's name list.")
    tsv = "".join(f"{k}\t{class_names[k]}\n" for k in sorted(class_names)) if class_names else None
    old_info = _old_info(dst, tool, shown_mode, tsv)

    foreign, to_check, to_write, stale = [], [], [], 0
    for split in SPLITS:
        if _exists_as(dst / split, stat.S_ISDIR):
            foreign += [dst / split / n for n in sorted(os.listdir(dst / split)) if (split, n) not in planned
                        and not _is_tmp(n)]
        for cls in classes:
            entries, cdir = planned[(split, cls)], dst / split / cls
            existing = set(os.listdir(cdir)) if _exists_as(cdir, stat.S_ISDIR) else set()
            to_check += [(cdir / n, it, os.lstat(cdir / n)) for n, it in entries.items() if n in existing]
            to_write += [it for n, it in entries.items() if n not in existing]
            stale += sum(map(_is_tmp, existing - entries.keys()))
            foreign += [cdir / n for n in sorted(existing - entries.keys()) if not _is_tmp(n)]
    if foreign:
        raise PrepError(f"--dst {dst} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} that are not "
                        f"part of this split (first 5: {first(foreign)}); it was prepared with other settings or "
                        "data. Use a new --dst.")
    wrong = []
    for dest, it, st in tqdm(to_check, desc=f"{tool}: checking", unit="img", leave=False, disable=not to_check):
        usable = stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode)  # not a folder, a FIFO, ...
        found, same = it.source.state(dest, st) if usable else ("", False)
        if found and info_mode is None and found != mode:
            raise _mode_conflict(dst, found, mode, f"e.g. {dest} is a {_MODE_NOUN[found]}")
        if not same:
            wrong.append(f"{dest} ({kind(st.st_mode)}; expected {it.source.where})")
    if wrong:
        raise PrepError(f"{len(wrong)} existing destination entr{'y' if len(wrong) == 1 else 'ies'} do not match the "
                        f"source (first 5: {first(wrong)}). Nothing was overwritten; remove them or use a new --dst.")
    if mode == "hardlink" and to_write:  # the sources are FileSources
        near = next(p for p in (dst, *dst.parents) if p.exists())
        if os.stat(to_write[0].source.path).st_dev != os.stat(near).st_dev:  # type: ignore[attr-defined]
            raise PrepError(f"--mode hardlink needs --src and --dst on the same filesystem, but {src} and {dst} are "
                            "on different ones. Use --mode symlink or --mode copy.")

    for split, cls in planned:
        (dst / split / cls).mkdir(parents=True, exist_ok=True)
    to_write.sort(key=lambda it: (it.source.order, it.split, it.cls, it.name))
    for it in tqdm(to_write, desc=f"{tool}: writing", unit="img", disable=not to_write):
        atomic_replace(dst / it.split / it.cls / it.name, lambda tmp: it.source.write(tmp, mode), suffix=TMP_SUFFIX)
    wrote_tsv = tsv is not None and not (dst / NAMES_NAME).exists()
    if wrote_tsv:
        atomic_write_text(dst / NAMES_NAME, tsv, suffix=TMP_SUFFIX)
    counts = {s: sum(len(planned[(s, c)]) for c in classes) for s in SPLITS}
    if old_info is not None and not to_write and not wrote_tsv:
        print(f"{tool}: destination already complete, nothing changed.")
    else:
        info = {"tool": tool, "source": str(src), "mode": shown_mode, "num_classes": len(classes), "images": counts,
                "class_names_file": NAMES_NAME if tsv is not None else None, "options": options or {},
                "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")}
        atomic_write_text(dst / INFO_NAME, json.dumps(info, indent=2) + "\n", suffix=TMP_SUFFIX)
        print(f"{tool}: completed an existing destination ({len(to_write)} entries added, {len(to_check)} already "
              "present)." if old_info is not None or to_check else f"{tool}: done ({len(to_write)} entries written).")
    if stale:
        print(f"  note: {stale} stale temporary file(s) ({TMP_SUFFIX}) from an interrupted run were left in place.")
    for split in (s for s in SPLITS if empty[s]):
        print(f"warning: {len(empty[split])} class(es) have no {split} images (first 5: {first(empty[split])}).",
              file=sys.stderr)
    print(f"  classes:     {len(classes)}\n  train:       {counts['train']} images\n  val:         {counts['val']} "
          f"images\n  mode:        {shown_mode}\n  destination: {dst}")
    return 0
