#!/usr/bin/env python3
"""Prepare CIFAR-100 (official python version) as DST/train/<label>/<index>.png + DST/val/...

Reads the pickles ``train``, ``test`` and ``meta`` either from ``cifar-100-python.tar.gz``
(straight out of the archive, nothing extracted to disk) or from the extracted
``cifar-100-python/`` folder. ``train`` goes to DST/train, ``test`` to DST/val; the class folder
is the fine label as two digits (``07``) and the file name is the row index in the pickle
(``123.png``). ``class_names.tsv`` comes from ``meta``'s fine_label_names.
"""
from __future__ import annotations

import sys

sys.dont_write_bytecode = True  # keep the repository clean: nothing written outside --dst

import argparse  # noqa: E402
import io  # noqa: E402
import os  # noqa: E402
import pickle  # noqa: E402
import tarfile  # noqa: E402
import zlib  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import IO, Sequence  # noqa: E402

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _prep_common import (  # noqa: E402
    Item, PrepError, Source, add_common_args, check_src_dst, materialize, open_tar, run_main,
)

TOOL = "split_cifar100"
PICKLES = ("train", "test", "meta")
SPLIT_OF = {"train": "train", "test": "val"}
HINT = (
    "Point --src at cifar-100-python.tar.gz or at the extracted cifar-100-python/ folder "
    "(the 'CIFAR-100 python version' from https://www.cs.toronto.edu/~kriz/cifar.html)."
)


class PngSource(Source):
    """One 32x32 RGB CIFAR image, written as a PNG file."""

    __slots__ = ("rgb", "where")

    def __init__(self, rgb, where: str) -> None:
        self.rgb = rgb  # (32, 32, 3) uint8 view
        self.where = where

    def describe(self) -> str:
        return self.where

    def write(self, tmp: Path, mode: str) -> None:
        import numpy as np
        from PIL import Image

        Image.fromarray(np.ascontiguousarray(self.rgb), mode="RGB").save(tmp, format="PNG")

    def matches(self, dest: Path) -> bool:
        import numpy as np
        from PIL import Image

        try:
            with Image.open(dest) as im:
                if im.size != (32, 32):
                    return False
                return bool(np.array_equal(np.asarray(im.convert("RGB")), self.rgb))
        except Exception:  # unreadable / not an image: does not match
            return False


def _decode(value: object) -> object:
    return value.decode("latin1") if isinstance(value, bytes) else value


def _unpickle(stream: IO[bytes], where: str) -> dict:
    try:
        obj = pickle.load(stream, encoding="bytes")
    except OSError:
        raise
    except Exception as exc:  # any unpickling failure means: not a CIFAR pickle
        raise PrepError(f"{where} is not a readable pickle ({type(exc).__name__}: {exc}). {HINT}") from None
    if not isinstance(obj, dict):
        raise PrepError(f"{where} does not hold a dict as CIFAR-100 pickles do. {HINT}")
    return {_decode(k): v for k, v in obj.items()}


def _load_folder(src: Path) -> dict[str, dict]:
    missing = [n for n in PICKLES if not (src / n).is_file()]
    if missing:
        extra = ""
        if (src / "data_batch_1").exists() or (src / "batches.meta").exists():
            extra = " It looks like CIFAR-10 (data_batch_1 / batches.meta); this tool needs CIFAR-100."
        elif (src / "cifar-100-python").is_dir():
            extra = f" Did you mean --src {src / 'cifar-100-python'}?"
        raise PrepError(f"{src} lacks the CIFAR-100 pickle(s) {', '.join(missing)}.{extra} {HINT}")
    out = {}
    for name in PICKLES:
        with open(src / name, "rb") as f:
            out[name] = _unpickle(f, str(src / name))
    return out


def _load_tar(src: Path) -> dict[str, dict]:
    tar = open_tar(src, HINT)
    raw: dict[str, tuple[str, bytes]] = {}
    with tar:
        try:  # one sequential pass: fast for .tar.gz
            for m in tar:
                parts = [p for p in m.name.split("/") if p not in ("", ".")]
                if m.isfile() and 1 <= len(parts) <= 2 and parts[-1] in PICKLES and parts[-1] not in raw:
                    raw[parts[-1]] = (m.name, tar.extractfile(m).read())  # type: ignore[union-attr]
        except (tarfile.TarError, EOFError, OSError, ValueError, zlib.error) as exc:
            raise PrepError(f"{src} is not a readable tar archive or is damaged ({exc}). {HINT}") from None
    missing = [n for n in PICKLES if n not in raw]
    if missing:
        raise PrepError(
            f"{src} lacks the CIFAR-100 member(s) {', '.join('cifar-100-python/' + n for n in missing)}. {HINT}"
        )
    out = {name: _unpickle(io.BytesIO(raw[name][1]), f"{src}:{raw[name][0]}") for name in PICKLES}
    return out


def _check_batch(batch: dict, where: str, num_classes: int):
    import numpy as np

    if "fine_labels" not in batch:
        hint = " (CIFAR-10 pickles have only 'labels')" if "labels" in batch else ""
        raise PrepError(f"{where} is not a CIFAR-100 pickle: it has no fine_labels{hint}. {HINT}")
    if "data" not in batch:
        raise PrepError(f"{where} is not a CIFAR-100 pickle: it has no data array. {HINT}")
    data = np.asarray(batch["data"])
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        raise PrepError(
            f"{where} has a data array of shape {data.shape} / dtype {data.dtype}; CIFAR-100 needs "
            f"N x 3072 uint8. {HINT}"
        )
    labels = [int(x) for x in batch["fine_labels"]]
    if len(labels) != len(data):
        raise PrepError(f"{where} has {len(data)} images but {len(labels)} fine_labels. {HINT}")
    bad = [(i, lab) for i, lab in enumerate(labels) if not 0 <= lab < num_classes]
    if bad:
        raise PrepError(
            f"{where} has {len(bad)} fine label(s) outside 0..{num_classes - 1} (first: row {bad[0][0]} = "
            f"{bad[0][1]}); meta and data do not belong together. {HINT}"
        )
    images = data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1)
    return images, labels


def build_parser() -> argparse.ArgumentParser:
    """The command-line interface."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Images are written as PNG files, decoded from the pickles (there is no --mode: "
        "nothing to link to).",
    )
    add_common_args(
        parser,
        src_help="cifar-100-python.tar.gz or the extracted cifar-100-python/ folder (train, test, meta)",
        with_mode=False,
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit code."""
    args = build_parser().parse_args(argv)
    src, dst = check_src_dst(args.src, args.dst)
    pickles = _load_folder(src) if src.is_dir() else _load_tar(src)
    meta = pickles["meta"]
    if "fine_label_names" not in meta:
        raise PrepError(f"meta of {src} has no fine_label_names; it is not CIFAR-100's meta. {HINT}")
    names = [str(_decode(n)) for n in meta["fine_label_names"]]
    if not names:
        raise PrepError(f"meta of {src} lists no classes. {HINT}")
    width = max(2, len(str(len(names) - 1)))
    folders = [f"{i:0{width}d}" for i in range(len(names))]
    items: list[Item] = []
    for key, split in SPLIT_OF.items():
        images, labels = _check_batch(pickles[key], f"{src} ({key})", len(names))
        for i, lab in enumerate(labels):
            items.append(Item(split, folders[lab], f"{i}.png", PngSource(images[i], f"{key}[{i}]"), f"{key}[{i}]"))
    return materialize(
        tool=TOOL, src=src, dst=dst, mode="copy", items=items, classes=folders,
        class_names=dict(zip(folders, names)), info_mode="png",
    )


if __name__ == "__main__":
    run_main(main)
