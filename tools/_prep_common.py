"""Shared helpers for the dataset-preparation tools in ``tools/``.

Each tool (``split_cifar100.py``, ``split_imagenet_r.py``, ``split_domainnet.py``) reads and
validates its source, builds a plan (a list of :class:`Item`) and hands it to
:func:`materialize`, which validates the destination, writes the missing entries atomically and
finally writes ``class_names.tsv`` and ``prepare_info.json`` (the latter last: it marks a
complete destination).

Destination layout::

    DST/train/<class>/<image>
    DST/val/<class>/<image>
    DST/class_names.tsv      # "<folder>\\t<human name>" per class folder, sorted (when known)
    DST/prepare_info.json    # tool, source, mode, class count, images per split, UTC time

Errors meant for the user are raised as :class:`PrepError` and printed by :func:`run_main` as a
single ``error: ...`` paragraph without traceback. Nothing outside ``--dst`` is ever written and
nothing is ever deleted (except this process' own half-written temporary file on failure).
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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repository: splitlora.run.fileio
from splitlora.run.fileio import atomic_replace, atomic_write_text  # noqa: E402  (light: no torch)

SPLITS: tuple[str, str] = ("train", "val")
MODES: tuple[str, ...] = ("symlink", "hardlink", "copy")
INFO_NAME = "prepare_info.json"
NAMES_NAME = "class_names.tsv"
TMP_SUFFIX = ".prep-tmp"
EXIT_INVALID = 2
EXIT_OSERROR = 1
EXIT_INTERRUPTED = 130
# The file names main.py loads as images: datasets/folder.py's IMAGE_EXTENSIONS (compared
# lower-case; names starting with '.' are skipped). Mirrored rather than imported because
# importing the datasets package imports torch (seconds) and these tools stay torch-free;
# tests/test_tools_imagenet_r.py checks that the two lists agree.
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm")


class PrepError(Exception):
    """A user-facing error; printed as ``error: <message>`` and exit code 2, no traceback."""


# --------------------------------------------------------------------------------------------
# sources: what one destination entry is made from
# --------------------------------------------------------------------------------------------
class Source:
    """Where the content of one destination entry comes from."""

    order: int = 0  # write order hint (e.g. the offset of a tar member)

    def describe(self) -> str:
        """Human-readable origin, used in messages."""
        raise NotImplementedError

    def write(self, tmp: Path, mode: str) -> None:
        """Create ``tmp`` (which does not exist yet) with this source's content."""
        raise NotImplementedError

    def matches(self, dest: Path) -> bool:
        """Whether an existing ``dest`` already is / points to / equals this source."""
        raise NotImplementedError

    def entry_mode(self, dest: Path) -> str | None:
        """The ``--mode`` an existing ``dest`` was made with, or None when not telling."""
        return None


class FileSource(Source):
    """A file on disk, linked or copied according to ``--mode``."""

    __slots__ = ("path", "size")

    def __init__(self, path: str, size: int) -> None:
        self.path = path  # absolute, as the user spelled it (used as symlink target)
        self.size = size

    def describe(self) -> str:
        return self.path

    def write(self, tmp: Path, mode: str) -> None:
        if mode == "symlink":
            os.symlink(self.path, tmp)
        elif mode == "hardlink":
            try:
                os.link(self.path, tmp)
            except OSError as exc:
                if exc.errno in (errno.EXDEV, errno.EPERM, errno.EMLINK):
                    raise PrepError(
                        f"cannot hard-link {self.path} into {tmp.parent} ({exc.strerror}); hard "
                        "links need source and destination on the same filesystem and permission "
                        "to link the source. Use --mode symlink or --mode copy instead."
                    ) from None
                raise
        elif mode == "copy":
            shutil.copyfile(self.path, tmp)
        else:  # pragma: no cover - argparse restricts the choices
            raise ValueError(mode)

    def matches(self, dest: Path) -> bool:
        try:
            if os.path.islink(dest):
                target = os.readlink(dest)
                if target == self.path:
                    return True
                return os.path.realpath(dest) == os.path.realpath(self.path) and os.path.exists(dest)
            st = os.stat(dest)
            if not stat.S_ISREG(st.st_mode):
                return False
            sst = os.stat(self.path)
            if (st.st_dev, st.st_ino) == (sst.st_dev, sst.st_ino):
                return True
            return st.st_size == sst.st_size
        except OSError:
            return False

    def entry_mode(self, dest: Path) -> str | None:
        try:
            if os.path.islink(dest):
                return "symlink"
            st, sst = os.stat(dest), os.stat(self.path)
        except OSError:
            return None
        return "hardlink" if (st.st_dev, st.st_ino) == (sst.st_dev, sst.st_ino) else "copy"


# --------------------------------------------------------------------------------------------
# plan
# --------------------------------------------------------------------------------------------
@dataclass(slots=True)
class Item:
    """One destination entry: ``DST/<split>/<cls>/<name>`` made from ``source``."""

    split: str
    cls: str
    name: str
    source: Source
    origin: str  # where the entry was requested (list file:line, pickle row, ...) for messages


def first(values: Iterable[object], n: int = 5) -> str:
    """Comma-separated first ``n`` values of an iterable."""
    out = []
    for i, v in enumerate(values):
        if i >= n:
            break
        out.append(str(v))
    return ", ".join(out)


def safe_component(part: str) -> bool:
    """Whether ``part`` is usable as one path component (no separators, not . or ..)."""
    return bool(part) and part not in (".", "..") and "/" not in part and "\\" not in part and "\0" not in part


def is_image_name(name: str) -> bool:
    """Whether main.py would load a file of this name as an image (see IMAGE_EXTENSIONS)."""
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def image_name_problem(name: str) -> str | None:
    """Why a listed file name is not an image main.py would load (None if it is one)."""
    if name.startswith("."):
        return f"{name!r} is a hidden file (its name starts with '.'), which main.py skips"
    if not name.lower().endswith(IMAGE_EXTENSIONS):
        return (f"{name!r} is not an image file: main.py loads only {', '.join(IMAGE_EXTENSIONS)} "
                "files")
    return None


def open_tar(path: Path, hint: str) -> tarfile.TarFile:
    """Open a (possibly compressed) tar archive for reading; a one-line PrepError if it is none."""
    try:
        return tarfile.open(path, "r:*")
    except (tarfile.TarError, EOFError, ValueError, zlib.error):  # (an OSError goes to run_main)
        raise PrepError(
            f"{path} is not a readable tar archive (expected a .tar, .tar.gz, .tar.bz2 or .tar.xz file; "
            f"this file is none of them or is truncated). {hint}"
        ) from None


def read_list(path: Path) -> Iterator[tuple[int, str]]:
    """Yield ``(line number, stripped line)`` of a list file, skipping blank lines."""
    if not path.exists():
        raise PrepError(f"list file not found: {path}. Check the path given to --train-list/--val-list.")
    if not path.is_file():
        raise PrepError(f"list file {path} is not a regular file. Pass the path of a text file with one entry per line.")
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise PrepError(f"list file {path} is not UTF-8 text ({exc.reason} at byte {exc.start}). Pass a plain-text list.") from None
    for lineno, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if line:
            yield lineno, line


# --------------------------------------------------------------------------------------------
# argument handling and entry point
# --------------------------------------------------------------------------------------------
def add_common_args(parser: argparse.ArgumentParser, src_help: str, mode_help: str | None = None,
                    with_mode: bool = True) -> None:
    """Add ``--src``, ``--dst`` and (``with_mode``) ``--mode`` to a tool's parser."""
    parser.add_argument("--src", required=True, type=Path, help=src_help)
    parser.add_argument(
        "--dst", required=True, type=Path,
        help="destination folder (created if needed; must not be inside --src); receives "
        f"train/<class>/, val/<class>/, {NAMES_NAME} and {INFO_NAME}",
    )
    if not with_mode:
        return
    parser.add_argument(
        "--mode", choices=MODES, default="symlink",
        help=mode_help or "how images are placed in the destination: symlink (absolute targets, "
        "default), hardlink (same filesystem only) or copy",
    )


def check_src_dst(src: Path, dst: Path) -> tuple[Path, Path]:
    """Validate the source/destination pair; return absolute (unresolved) paths."""
    src_abs = Path(os.path.abspath(src))
    dst_abs = Path(os.path.abspath(dst))
    if not os.path.exists(src_abs):
        raise PrepError(f"source not found: {src_abs}. Check the --src path (download/extract the dataset first).")
    s, d = src_abs.resolve(), dst_abs.resolve()
    if d == s:
        raise PrepError(f"--dst {dst_abs} is the same as --src. Choose a separate destination folder outside the source.")
    if s in d.parents:
        raise PrepError(f"--dst {dst_abs} lies inside --src {src_abs}. Choose a destination outside the source folder.")
    if os.path.lexists(dst_abs) and not dst_abs.is_dir():
        raise PrepError(f"--dst {dst_abs} exists and is not a folder. Choose a new or existing folder as destination.")
    return src_abs, dst_abs


def describe_oserror(exc: OSError) -> str:
    """A one-line description of an OSError with its file name(s)."""
    what = exc.strerror or str(exc)
    names = [n for n in (exc.filename, exc.filename2) if n]
    return f"{what}" + (f" ({' -> '.join(map(str, names))})" if names else "")


def run_main(main: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None = None) -> None:
    """Run a tool's ``main`` and turn known failures into short messages and exit codes."""
    try:
        code = main(argv)
    except PrepError as exc:
        print(f"error: {exc}", file=sys.stderr)
        code = EXIT_INVALID
    except KeyboardInterrupt:
        print(
            "\nerror: interrupted. The destination may be incomplete (it has no up-to-date "
            f"{INFO_NAME}); re-run the same command to complete it.",
            file=sys.stderr,
        )
        code = EXIT_INTERRUPTED
    except OSError as exc:
        print(
            f"error: {describe_oserror(exc)}. Check free disk space and permissions of the source "
            "and destination; re-running the same command resumes where it stopped.",
            file=sys.stderr,
        )
        code = EXIT_OSERROR
    sys.exit(code)


# --------------------------------------------------------------------------------------------
# destination handling
# --------------------------------------------------------------------------------------------
def _is_tmp(name: str) -> bool:
    return name.startswith(".") and name.endswith(TMP_SUFFIX)


def _write_atomic(dest: Path, source: Source, mode: str) -> None:
    """Place one image (a link, a hard link or a file) atomically."""
    atomic_replace(dest, lambda tmp: source.write(tmp, mode), suffix=TMP_SUFFIX)


def _write_text_atomic(path: Path, text: str) -> None:
    atomic_write_text(path, text, suffix=TMP_SUFFIX)


def _nearest_existing(path: Path) -> Path:
    while not path.exists():
        path = path.parent
    return path


def _check_unique(items: Sequence[Item]) -> None:
    seen: dict[tuple[str, str, str], Item] = {}
    for it in items:
        key = (it.split, it.cls, it.name)
        other = seen.get(key)
        if other is not None:
            raise PrepError(
                f"two entries map to the same destination {'/'.join(key)}: {other.origin} "
                f"({other.source.describe()}) and {it.origin} ({it.source.describe()}). Remove the "
                "duplicate from the list(s)."
            )
        seen[key] = it


_MODE_NOUN = {"symlink": "symbolic link", "hardlink": "hard link to its source", "copy": "separate copy"}


def _mode_conflict(dst: Path, old: str, new: str, evidence: str) -> str:
    """The message refusing to mix two ``--mode`` values in one destination."""
    return (
        f"--dst {dst} was prepared with --mode {old} ({evidence}), but this run uses --mode {new}; "
        "one destination cannot mix the two and nothing was changed. Re-run with --mode "
        f"{old} to complete it, or use a new --dst (or delete {dst} first) for --mode {new}."
    )


def names_tsv(class_names: dict[str, str]) -> str:
    """Content of class_names.tsv: ``<folder>\\t<name>`` per class, sorted by folder."""
    for folder, name in class_names.items():
        if any(c in name for c in "\t\r\n"):
            raise PrepError(f"class name {name!r} of {folder} contains a tab or newline; fix the source's name list.")
    return "".join(f"{k}\t{class_names[k]}\n" for k in sorted(class_names))


def materialize(
    *,
    tool: str,
    src: Path,
    dst: Path,
    mode: str,
    items: list[Item],
    classes: Sequence[str],
    class_names: dict[str, str] | None,
    options: dict[str, object] | None = None,
    info_mode: str | None = None,
) -> int:
    """Validate ``dst`` against the plan, create what is missing, write names/info, report.

    Existing entries that already match their source are left untouched; an existing entry
    that does not match, or entries/class folders not in the plan, stop the run (exit 2)
    before anything is written.
    """
    from tqdm import tqdm  # imported lazily: keeps validation failures fast

    classes = sorted(classes)
    class_set = set(classes)
    _check_unique(items)
    for it in items:
        if it.cls not in class_set:  # pragma: no cover - programming error in a tool
            raise ValueError(f"item class {it.cls} not among classes")

    # ---- existing metadata ----
    info_path = dst / INFO_NAME
    names_path = dst / NAMES_NAME
    old_info: dict | None = None
    if info_path.exists():
        try:
            old_info = json.loads(info_path.read_text(encoding="utf-8"))
            if not isinstance(old_info, dict):
                raise ValueError("not an object")
        except (ValueError, UnicodeDecodeError):
            raise PrepError(f"{info_path} exists but is not valid JSON. Use a new --dst (or move that file away).") from None
        if old_info.get("tool") != tool:
            raise PrepError(
                f"--dst {dst} was prepared by {old_info.get('tool')!r}, not {tool}. Use a separate "
                "destination folder per dataset."
            )
        old_mode = old_info.get("mode")
        if isinstance(old_mode, str) and old_mode != (info_mode or mode):
            raise PrepError(_mode_conflict(dst, old_mode, info_mode or mode, f"its {INFO_NAME} says so"))
    tsv = names_tsv(class_names) if class_names else None
    if tsv is not None and names_path.exists():
        if names_path.read_text(encoding="utf-8") != tsv:
            raise PrepError(
                f"{names_path} exists with different content. This destination was prepared from "
                "another source; use a new --dst (or move that file away)."
            )

    # ---- existing tree ----
    planned: dict[tuple[str, str], dict[str, Item]] = {(s, c): {} for s in SPLITS for c in classes}
    for it in items:
        planned[(it.split, it.cls)][it.name] = it
    foreign: list[str] = []
    for split in SPLITS:
        sdir = dst / split
        if os.path.lexists(sdir) and not sdir.is_dir():
            raise PrepError(f"{sdir} exists and is not a folder. Use a new --dst.")
        if sdir.is_dir():
            foreign += [str(sdir / n) for n in sorted(os.listdir(sdir)) if n not in class_set and not _is_tmp(n)]
    to_check: list[tuple[Path, Item]] = []
    to_write: list[Item] = []
    stale_tmp = 0
    for (split, cls), entries in planned.items():
        cdir = dst / split / cls
        try:
            existing = set(os.listdir(cdir))
        except FileNotFoundError:
            existing = set()
        except NotADirectoryError:
            raise PrepError(f"{cdir} exists and is not a folder. Use a new --dst.") from None
        for name, it in entries.items():
            if name in existing:
                to_check.append((cdir / name, it))
            else:
                to_write.append(it)
        for name in sorted(existing - entries.keys()):
            if _is_tmp(name):
                stale_tmp += 1
            else:
                foreign.append(str(cdir / name))
    if foreign:
        raise PrepError(
            f"--dst {dst} holds {len(foreign)} entr{'y' if len(foreign) == 1 else 'ies'} that are not "
            f"part of this split (first 5: {first(foreign)}); it was prepared with other settings or "
            "data. Use a new --dst."
        )
    wrong: list[str] = []
    conflict: str | None = None
    if to_check:
        with tqdm(to_check, desc=f"{tool}: checking", unit="img", leave=False) as bar:
            for dest, it in bar:
                found = it.source.entry_mode(dest)
                if found is not None and found != mode:
                    conflict = _mode_conflict(dst, found, mode, f"e.g. {dest} is a {_MODE_NOUN[found]}")
                    break
                if not it.source.matches(dest):
                    wrong.append(f"{dest} (expected {it.source.describe()})")
    if conflict:
        raise PrepError(conflict)
    if wrong:
        raise PrepError(
            f"{len(wrong)} existing destination entr{'y' if len(wrong) == 1 else 'ies'} do not match "
            f"the source (first 5: {first(wrong)}). Nothing was overwritten; remove those entries "
            "or use a new --dst."
        )
    if mode == "hardlink" and to_write and isinstance(to_write[0].source, FileSource):
        src_dev = os.stat(to_write[0].source.path).st_dev
        if src_dev != os.stat(_nearest_existing(dst)).st_dev:
            raise PrepError(
                f"--mode hardlink needs --src and --dst on the same filesystem, but {src} and {dst} "
                "are on different ones. Use --mode symlink or --mode copy."
            )

    # ---- write ----
    for split in SPLITS:
        for cls in classes:
            (dst / split / cls).mkdir(parents=True, exist_ok=True)
    to_write.sort(key=lambda it: (it.source.order, it.split, it.cls, it.name))
    for it in tqdm(to_write, desc=f"{tool}: writing", unit="img", disable=not to_write):
        _write_atomic(dst / it.split / it.cls / it.name, it.source, mode)
    wrote_tsv = tsv is not None and not names_path.exists()
    if wrote_tsv:
        _write_text_atomic(names_path, tsv)

    counts = {s: sum(len(planned[(s, c)]) for c in classes) for s in SPLITS}
    complete = old_info is not None and not to_write and not wrote_tsv
    if not complete:
        info = {
            "tool": tool,
            "source": str(src),
            "mode": info_mode or mode,
            "num_classes": len(classes),
            "images": counts,
            "class_names_file": NAMES_NAME if tsv is not None else None,
            "options": options or {},
            "created_utc": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        }
        _write_text_atomic(info_path, json.dumps(info, indent=2) + "\n")

    # ---- report ----
    if complete:
        print(f"{tool}: destination already complete, nothing changed.")
    elif old_info is not None or to_check:
        print(f"{tool}: completed an existing destination ({len(to_write)} entries added, {len(to_check)} already present).")
    else:
        print(f"{tool}: done ({len(to_write)} entries written).")
    if stale_tmp:
        print(f"  note: {stale_tmp} stale temporary file(s) ({TMP_SUFFIX}) from an interrupted run were left in place.")
    for split in SPLITS:
        empty = [c for c in classes if not planned[(split, c)]]
        if empty:
            print(f"warning: {len(empty)} class(es) have no {split} images (first 5: {first(empty)}).", file=sys.stderr)
    print(f"  classes:     {len(classes)}")
    print(f"  train:       {counts['train']} images")
    print(f"  val:         {counts['val']} images")
    print(f"  mode:        {info_mode or mode}")
    print(f"  destination: {dst}")
    return 0
