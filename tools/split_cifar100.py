#!/usr/bin/env python3
"""Prepare CIFAR-100 (python version) as DST/train/<label>/<row>.png + DST/val/<label>/<row>.png.

The pickles train (to DST/train), test (to DST/val) and meta are read from cifar-100-python.tar.gz
or the extracted cifar-100-python/ folder; labels are the fine labels as two digits (07), names in
class_names.tsv. Images are PNG files decoded from the pickles (no --mode: nothing to link to). The
unpickler builds only dicts, lists, strings, numbers and numpy arrays; anything else is refused."""
import io
import os
import pickle
import stat
import sys
from pathlib import Path

import numpy as np
from PIL import Image

sys.dont_write_bytecode = True  # keep the repository clean: nothing written outside --dst
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _prep_common import (  # noqa: E402
    Item, PrepError, Source, kind, materialize, open_tar, parse_args, run_main, tar_members)

PICKLES = ("train", "test", "meta")
MAX_PICKLE = 1 << 30  # the train pickle is 155 MB
HINT = "Point --src at cifar-100-python.tar.gz or its extracted cifar-100-python/ folder (the python version)."


def _latin1(text: object, encoding: object) -> bytes:
    """``_codecs.encode`` as Python 3 uses it for bytes in protocol-2 pickles: latin-1 text only."""
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise PrepError(f"_codecs.encode with encoding {encoding!r}")
    return text.encode("latin1")


# All that CIFAR-100 pickles refer to: numpy's array reconstructor (numpy 1 and 2 names) and, in pickles
# written by Python 3 at protocol 2, the encoder making bytes. Nothing is imported.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
ALLOWED = {("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT, ("numpy._core.multiarray", "_reconstruct"):
           _RECONSTRUCT, ("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype, ("_codecs", "encode"): _latin1}


class CifarUnpickler(pickle.Unpickler):
    """Builds only builtins (dicts, lists, bytes, str, numbers) and the globals in ALLOWED."""

    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in ALLOWED:
            raise PrepError(f"{module}.{name}")
        return ALLOWED[(module, name)]


class PngSource(Source):
    def __init__(self, rgb: np.ndarray, where: str) -> None:
        self.rgb, self.where = rgb, where  # (32, 32, 3) uint8 view

    def write(self, tmp: Path, mode: str) -> None:
        Image.fromarray(np.ascontiguousarray(self.rgb), mode="RGB").save(tmp, format="PNG")

    def state(self, dest: Path, st: os.stat_result) -> tuple[str, bool]:
        if not stat.S_ISREG(st.st_mode):  # a link is not what this tool writes (and might lead to a FIFO)
            return "png", False
        try:
            with Image.open(dest) as im:
                return "png", im.size == (32, 32) and bool(np.array_equal(np.asarray(im.convert("RGB")), self.rgb))
        except Exception:  # unreadable / not an image: does not match
            return "png", False


def unpickle(data: bytes, where: str) -> dict:
    try:
        obj = CifarUnpickler(io.BytesIO(data), encoding="bytes").load()
    except PrepError as exc:
        raise PrepError(f"{where} is not a CIFAR-100 pickle (it refers to {exc}, which is never loaded).") from None
    except Exception as exc:  # any unpickling failure means: not a CIFAR pickle
        raise PrepError(f"{where} is not a readable pickle ({type(exc).__name__}: {exc}). {HINT}") from None
    if not isinstance(obj, dict):
        raise PrepError(f"{where} does not hold a dict as CIFAR-100 pickles do. {HINT}")
    return {(k.decode("latin1") if isinstance(k, bytes) else k): v for k, v in obj.items()}


def load_pickles(src: Path) -> dict[str, dict]:
    raw: dict[str, tuple[str, bytes]] = {}
    if src.is_dir():
        for n, what in ((n, kind(src / n)) for n in PICKLES):
            if what not in (None, "a regular file"):
                raise PrepError(f"{src / n} is {what}, not a pickle file. {HINT}")
            if what:
                with open(src / n, "rb") as f:
                    raw[n] = (str(src / n), f.read(MAX_PICKLE + 1))
    else:
        with open_tar(src, HINT) as tar:
            for parts, m in tar_members(tar, src, HINT):  # one sequential pass: fast for .tar.gz
                if m.isfile() and 1 <= len(parts) <= 2 and parts[-1] in PICKLES and parts[-1] not in raw:
                    raw[parts[-1]] = (f"{src}:{m.name}", tar.extractfile(m).read(MAX_PICKLE + 1))  # type: ignore
    for where in (w for w, data in raw.values() if len(data) > MAX_PICKLE):
        raise PrepError(f"{where} is over {MAX_PICKLE >> 20} MiB, not a CIFAR-100 pickle (read no further). {HINT}")
    missing = [("" if src.is_dir() else "cifar-100-python/") + n for n in PICKLES if n not in raw]
    if missing:
        near = f" Did you mean --src {src / 'cifar-100-python'}?" if (src / "cifar-100-python").is_dir() else ""
        raise PrepError(f"{src} lacks the CIFAR-100 pickle(s) {', '.join(missing)}.{near} {HINT}")
    return {n: unpickle(raw[n][1], raw[n][0]) for n in PICKLES}


def check_batch(batch: dict, where: str, num_classes: int) -> tuple[np.ndarray, list[int]]:
    """(N, 32, 32, 3) images and N fine labels of one pickle."""
    data = batch.get("data")
    try:
        labels = [int(x) for x in batch["fine_labels"]]
        shaped = isinstance(data, np.ndarray) and data.dtype == np.uint8 and data.shape == (len(labels), 3072)
    except (KeyError, TypeError, ValueError):
        shaped = False
    if not shaped:
        c10 = " (it looks like CIFAR-10: 'labels', no 'fine_labels')" if "labels" in batch else ""
        raise PrepError(f"{where} is not a CIFAR-100 pickle: it needs an N x 3072 uint8 'data' array and N integer "
                        f"'fine_labels'{c10}. {HINT}")
    bad = [(i, lab) for i, lab in enumerate(labels) if not 0 <= lab < num_classes]
    if bad:
        raise PrepError(f"{where} has {len(bad)} fine label(s) outside 0..{num_classes - 1} (first: row {bad[0][0]} "
                        f"= {bad[0][1]}); meta and data do not belong together. {HINT}")
    return data.reshape(len(data), 3, 32, 32).transpose(0, 2, 3, 1), labels


def main(argv: list[str] | None = None) -> int:
    _, src, dst = parse_args(__doc__, argv, "cifar-100-python.tar.gz or the extracted cifar-100-python/ folder",
                             with_mode=False)
    pickles = load_pickles(src)
    names = pickles["meta"].get("fine_label_names")
    if not isinstance(names, list) or not names:
        raise PrepError(f"meta of {src} has no fine_label_names; it is not CIFAR-100's meta. {HINT}")
    names = [n.decode("latin1") if isinstance(n, bytes) else str(n) for n in names]
    folders = [f"{i:0{max(2, len(str(len(names) - 1)))}d}" for i in range(len(names))]
    items = []
    for key, split in (("train", "train"), ("test", "val")):
        images, labels = check_batch(pickles[key], f"{src} ({key})", len(names))
        items += [Item(split, folders[lab], f"{i}.png", PngSource(images[i], f"{key}[{i}]"), f"{key}[{i}]")
                  for i, lab in enumerate(labels)]
    return materialize("split_cifar100", src, dst, "png", items, dict(zip(folders, names)), {})


if __name__ == "__main__":
    run_main(main)
