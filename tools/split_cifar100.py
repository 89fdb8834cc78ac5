#!/usr/bin/env python3
"""Prepare CIFAR-100 (official python version) as DST/train/<label>/<index>.png + DST/val/...

Reads the pickles ``train`` (to DST/train), ``test`` (to DST/val) and ``meta`` from
``cifar-100-python.tar.gz`` (nothing extracted to disk) or the extracted ``cifar-100-python/``
folder. Class folders are the fine label as two digits (``07``), file names the row index in the
pickle (``123.png``); ``class_names.tsv`` comes from meta's fine_label_names. The unpickler builds
only dicts, lists, strings, numbers and numpy arrays: a pickle referring to anything else
(os.system, ...) is refused, never run.
"""
from __future__ import annotations

import argparse
import io
import os
import pickle
import stat
import sys
from pathlib import Path
from typing import Sequence

import numpy as np
from PIL import Image

sys.dont_write_bytecode = True  # keep the repository clean: nothing written outside --dst
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _prep_common import (  # noqa: E402
    Item, PrepError, Source, add_common_args, check_src_dst, kind, materialize, open_tar, run_main, tar_members,
)

TOOL = "split_cifar100"
PICKLES = ("train", "test", "meta")
HINT = ("Point --src at cifar-100-python.tar.gz or at the extracted cifar-100-python/ folder "
        "(the 'CIFAR-100 python version' from https://www.cs.toronto.edu/~kriz/cifar.html).")


class Refused(Exception):
    """A pickle referred to something the unpickler does not load."""


def _latin1(text: object, encoding: object) -> bytes:
    """``_codecs.encode`` as Python 3 uses it for bytes in protocol-2 pickles: latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise Refused(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# All that CIFAR-100 pickles refer to: numpy's array reconstructor (under its numpy 1 and 2 names)
# and, in pickles written by Python 3 at protocol 2, the encoder making bytes. Nothing is imported.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT, ("numpy._core.multiarray", "_reconstruct"):
           _RECONSTRUCT, ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1}


class CifarUnpickler(pickle.Unpickler):
    """Builds only builtins (dicts, lists, bytes, str, numbers) and the globals in ALLOWED."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED:
            raise Refused(f"{module}.{name}")
        return ALLOWED[(module, name)]


class PngSource(Source):
    """One 32x32 RGB CIFAR image, written as a PNG file."""

    def __init__(self, rgb: np.ndarray, where: str) -> None:
        self.rgb, self.where = rgb, where  # (32, 32, 3) uint8 view

    def write(self, tmp: Path, mode: str) -> None:
        Image.fromarray(np.ascontiguousarray(self.rgb), mode="RGB").save(tmp, format="PNG")

    def state(self, dest: Path, st: os.stat_result) -> tuple[str, bool]:
        if not stat.S_ISREG(st.st_mode):
            return "symlink", False
        try:
            with Image.open(dest) as im:
                return "copy", im.size == (32, 32) and bool(np.array_equal(np.asarray(im.convert("RGB")), self.rgb))
        except Exception:  # unreadable / not an image: does not match
            return "copy", False


def _decode(value: object) -> object:
    return value.decode("latin1") if isinstance(value, bytes) else value


def unpickle(data: bytes, where: str) -> dict:
    """One CIFAR pickle as a dict with str keys, read by :class:`CifarUnpickler`."""
    try:
        obj = CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except Refused as exc:
        raise PrepError(f"{where} is not a CIFAR-100 pickle (it refers to {exc}, which is never loaded). {HINT}") from None
    except Exception as exc:  # any unpickling failure means: not a CIFAR pickle
        raise PrepError(f"{where} is not a readable pickle ({type(exc).__name__}: {exc}). {HINT}") from None
    if not isinstance(obj, dict):
        raise PrepError(f"{where} does not hold a dict as CIFAR-100 pickles do. {HINT}")
    return {_decode(k): v for k, v in obj.items()}


def load_pickles(src: Path) -> dict[str, dict]:
    """The pickles of the extracted folder or of the archive (read from its members, not extracted)."""
    raw: dict[str, tuple[str, bytes]] = {}
    if src.is_dir():
        for n in PICKLES:
            what = kind(src / n)
            if what not in (None, "a regular file"):
                raise PrepError(f"{src / n} is {what}, not a pickle file. {HINT}")
            if what:
                raw[n] = (str(src / n), (src / n).read_bytes())
    else:
        with open_tar(src, HINT) as tar:
            for parts, m in tar_members(tar, src, HINT):  # one sequential pass: fast for .tar.gz
                if m.isfile() and 1 <= len(parts) <= 2 and parts[-1] in PICKLES and parts[-1] not in raw:
                    raw[parts[-1]] = (f"{src}:{m.name}", tar.extractfile(m).read())  # type: ignore[union-attr]
    missing = [n for n in PICKLES if n not in raw]
    if missing and not src.is_dir():
        raise PrepError(f"{src} lacks the CIFAR-100 member(s) {', '.join('cifar-100-python/' + n for n in missing)}. {HINT}")
    if missing:
        extra = ""
        if (src / "data_batch_1").exists() or (src / "batches.meta").exists():
            extra = " It looks like CIFAR-10 (data_batch_1 / batches.meta); this tool needs CIFAR-100."
        elif (src / "cifar-100-python").is_dir():
            extra = f" Did you mean --src {src / 'cifar-100-python'}?"
        raise PrepError(f"{src} lacks the CIFAR-100 pickle(s) {', '.join(missing)}.{extra} {HINT}")
    return {n: unpickle(raw[n][1], raw[n][0]) for n in PICKLES}


def check_batch(batch: dict, where: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """(N, 32, 32, 3) images and N fine labels of one pickle."""
    if "fine_labels" not in batch:
        hint = " (CIFAR-10 pickles have only 'labels')" if "labels" in batch else ""
        raise PrepError(f"{where} is not a CIFAR-100 pickle: it has no fine_labels{hint}. {HINT}")
    data = batch.get("data")
    if not isinstance(data, np.ndarray):
        raise PrepError(f"{where} is not a CIFAR-100 pickle: it has no data array. {HINT}")
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise PrepError(f"{where} has a data array of shape {data.shape} / dtype {data.dtype}; CIFAR-100 needs "
                        f"N x 3072 uint8. {HINT}")
    try:
        labels = [int(x) for x in batch["fine_labels"]]
    except (TypeError, ValueError):
        raise PrepError(f"{where} has fine_labels that are not a list of integers. {HINT}") from None
    if len(labels) != len(data):
        raise PrepError(f"{where} has {len(data)} images but {len(labels)} fine_labels. {HINT}")
    bad = [(i, lab) for i, lab in enumerate(labels) if not 0 <= lab < num_classes]
    if bad:
        raise PrepError(f"{where} has {len(bad)} fine label(s) outside 0..{num_classes - 1} (first: row {bad[0][0]} "
                        f"= {bad[0][1]}); meta and data do not belong together. {HINT}")
    return data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1), labels


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog="Images are written as PNG files, decoded from the pickles (there is no "
                                     "--mode: nothing to link to).")
    add_common_args(parser, "cifar-100-python.tar.gz or the extracted cifar-100-python/ folder (train, test, meta)",
                    with_mode=False)
    args = parser.parse_args(argv)
    src, dst = check_src_dst(args.src, args.dst)
    pickles = load_pickles(src)
    names = pickles["meta"].get("fine_label_names")
    if not isinstance(names, list) or not names:
        raise PrepError(f"meta of {src} has no fine_label_names; it is not CIFAR-100's meta. {HINT}")
    width = max(2, len(str(len(names) - 1)))
    folders = [f"{i:0{width}d}" for i in range(len(names))]
    items: list[Item] = []
    for key, split in (("train", "train"), ("test", "val")):
        images, labels = check_batch(pickles[key], f"{src} ({key})", len(names))
        items += [Item(split, folders[lab], f"{i}.png", PngSource(images[i], f"{key}[{i}]"), f"{key}[{i}]")
                  for i, lab in enumerate(labels)]
    return materialize(tool=TOOL, src=src, dst=dst, mode="copy", items=items, classes=folders,
                       class_names={f: str(_decode(n)) for f, n in zip(folders, names)}, info_mode="png")


if __name__ == "__main__":
    run_main(main)
