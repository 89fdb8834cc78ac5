"""Fabrication helpers for the tests of the dataset-preparation tools (tools/split_*.py).

Everything is built in the REAL on-disk formats (CIFAR-100 python pickles and tar.gz, an
imagenet-r folder and tar, a DomainNet tree with list files), only tiny.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import os
import pickle
import struct
import subprocess
import sys
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
HANG_GUARD_S = 3600  # a hang guard, not a speed limit (see conftest.py)


def run_tool(script: str, *args: object, env: dict | None = None, timeout: float = HANG_GUARD_S) -> subprocess.CompletedProcess:
    """Run ``tools/<script>`` as a user would, from the repository root."""
    full_env = dict(os.environ, PYTHONDONTWRITEBYTECODE="1", **(env or {}))
    return subprocess.run(
        [sys.executable, str(TOOLS / script), *map(str, args)],
        cwd=REPO, capture_output=True, text=True, timeout=timeout, env=full_env,
    )


def run_inprocess(script: str, *args: object) -> subprocess.CompletedProcess:
    """``tools/<script>``'s entry point called in this process (no interpreter start-up): the
    same arguments, exit status and output as :func:`run_tool`, for the many cheap checks."""
    saved = list(sys.path)
    sys.path.append(str(TOOLS))
    try:
        pc, tool = importlib.import_module("_prep_common"), importlib.import_module(script.removesuffix(".py"))
    finally:
        sys.path[:] = saved  # the tools put their folder first: keep it out of later imports
    out, err = io.StringIO(), io.StringIO()
    code: object = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            pc.run_main(tool.main, [str(a) for a in args])
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess([script, *map(str, args)], code, out.getvalue(), err.getvalue())


def error_text(stderr: str) -> str:
    """The ``error: ...`` message of a failed run (must start a line; progress bars may precede it)."""
    lines = stderr.replace("\r", "\n").split("\n")
    starts = [i for i, line in enumerate(lines) if line.startswith("error:")]
    assert starts, f"no line starting with 'error:' in stderr: {stderr!r}"
    return "\n".join(lines[starts[0]:])


def snapshot(root: Path) -> dict[str, tuple[int, int, int, bool]]:
    """relative path -> (mtime_ns, inode, size, is_symlink) for every entry under ``root`` (lstat)."""
    out: dict[str, tuple[int, int, int, bool]] = {}
    if not root.exists():
        return out
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = os.path.join(dirpath, name)
            st = os.lstat(p)
            out[os.path.relpath(p, root)] = (st.st_mtime_ns, st.st_ino, st.st_size, os.path.islink(p))
    return out


def tree(dst: Path) -> dict[str, dict[str, list[str]]]:
    """``{split: {class folder: sorted file names}}`` of a prepared destination."""
    out: dict[str, dict[str, list[str]]] = {}
    for split in ("train", "val"):
        sdir = dst / split
        out[split] = {c: sorted(os.listdir(sdir / c)) for c in sorted(os.listdir(sdir))} if sdir.is_dir() else {}
    return out


def count(dst: Path, split: str) -> int:
    """Number of images in one split of a prepared destination."""
    return sum(len(v) for v in tree(dst)[split].values())


# ------------------------------------------------------------------------------ CIFAR-100
@dataclass
class Cifar:
    folder: Path  # .../cifar-100-python (train, test, meta)
    targz: Path  # .../cifar-100-python.tar.gz
    train_data: np.ndarray
    train_labels: list[int]
    test_data: np.ndarray
    test_labels: list[int]
    names: list[str] = field(default_factory=list)


def _cifar_batch(rng: np.random.Generator, labels: list[int], name: str, cifar10: bool = False) -> dict:
    data = rng.integers(0, 256, size=(len(labels), 3072), dtype=np.uint8)
    d = {
        b"batch_label": name.encode(),
        b"filenames": [f"img_{i:05d}.png".encode() for i in range(len(labels))],
        b"data": data,
    }
    if cifar10:
        d[b"labels"] = labels
    else:
        d[b"fine_labels"] = labels
        d[b"coarse_labels"] = [lab // 5 for lab in labels]
    return d


class Py2Pickler(pickle._Pickler):  # type: ignore[name-defined]
    """Pickles as Python 2's cPickle wrote the real CIFAR files: str and bytes as 8-bit strings
    (SHORT_BINSTRING / BINSTRING), numpy's reconstructor named numpy.core.multiarray."""

    dispatch = dict(pickle._Pickler.dispatch)  # type: ignore[attr-defined]

    def save_str8(self, obj: str | bytes) -> None:
        data = obj.encode("latin1") if isinstance(obj, str) else obj
        head = pickle.SHORT_BINSTRING + bytes([len(data)]) if len(data) < 256 else \
            pickle.BINSTRING + struct.pack("<i", len(data))
        self.write(head + data)
        self.memoize(obj)

    dispatch[str] = dispatch[bytes] = save_str8

    def save_global(self, obj: object, name: str | None = None) -> None:
        if getattr(obj, "__name__", "") == "_reconstruct":
            self.write(pickle.GLOBAL + b"numpy.core.multiarray\n_reconstruct\n")
            self.memoize(obj)
        else:
            super().save_global(obj, name)


def make_cifar100(root: Path, num_classes: int = 100, train_per_class: int = 2, test_per_class: int = 1,
                  seed: int = 0, cifar10: bool = False, py2: bool = False) -> Cifar:
    """A CIFAR-100-format folder and tar.gz (python pickles, protocol 2, bytes keys), written by
    Python 3's pickle or (``py2``) in the byte format of the real files (Python 2's cPickle)."""
    rng = np.random.default_rng(seed)
    train_labels = [int(x) for x in rng.permutation(np.repeat(np.arange(num_classes), train_per_class))]
    test_labels = [int(x) for x in rng.permutation(np.repeat(np.arange(num_classes), test_per_class))]
    train = _cifar_batch(rng, train_labels, "training batch 1 of 1", cifar10)
    test = _cifar_batch(rng, test_labels, "testing batch 1 of 1", cifar10)
    names = [f"name_{i:02d}" for i in range(num_classes)]
    meta = {b"fine_label_names": [n.encode() for n in names],
            b"coarse_label_names": [f"super_{i}".encode() for i in range(max(1, num_classes // 5))]}
    if cifar10:
        meta = {b"label_names": [n.encode() for n in names]}
    folder = root / "cifar-100-python"
    folder.mkdir(parents=True)
    for name, obj in (("train", train), ("test", test), ("meta", meta)):
        with open(folder / name, "wb") as f:
            if py2:
                Py2Pickler(f, protocol=2).dump(obj)
            else:
                pickle.dump(obj, f, protocol=2)
    targz = root / "cifar-100-python.tar.gz"
    with tarfile.open(targz, "w:gz") as tar:
        tar.add(folder, arcname="cifar-100-python")
    return Cifar(folder, targz, train[b"data"], train_labels, test[b"data"], test_labels, names)


def cifar_rgb(row: np.ndarray) -> np.ndarray:
    """(32, 32, 3) image of one CIFAR data row."""
    return row.reshape(3, 32, 32).transpose(1, 2, 0)


# ------------------------------------------------------------------------------ ImageNet-R
INR_CLASSES = {  # wnid -> (name, number of images)
    "n01443537": ("goldfish", 7),
    "n01484850": ("great_white_shark", 5),
    "n01494475": ("hammerhead", 2),
    "n01498041": ("stingray", 10),
}
INR_RENDITIONS = ("art", "cartoon", "sketch", "toy")


def tiny_jpeg(path: Path, seed: int) -> None:
    """Write a small JPEG whose content depends on ``seed``."""
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, size=(6, 5, 3), dtype=np.uint8)).save(path, format="JPEG")


def make_imagenet_r(root: Path, classes: dict[str, tuple[str, int]] | None = None, readme: bool = True) -> tuple[Path, Path]:
    """An ``imagenet-r`` folder (wnid folders of tiny JPEGs, README.txt) and ``imagenet-r.tar``."""
    classes = classes or INR_CLASSES
    folder = root / "imagenet-r"
    folder.mkdir(parents=True)
    k = 0
    for wnid, (_, n) in classes.items():
        (folder / wnid).mkdir()
        for i in range(n):
            tiny_jpeg(folder / wnid / f"{INR_RENDITIONS[i % 4]}_{i}.jpg", k)
            k += 1
    if readme:
        lines = ["ImageNet-R: 200 ImageNet classes, renditions.", "", "wnid class name:"]
        lines += [f"{w} {name}" for w, (name, _) in classes.items()]
        (folder / "README.txt").write_text("\n".join(lines) + "\n")
    tar_path = root / "imagenet-r.tar"
    with tarfile.open(tar_path, "w") as tar:
        tar.add(folder, arcname="imagenet-r")
    return folder, tar_path


def inr_files(folder: Path) -> list[str]:
    """All ``wnid/file`` paths of a fabricated imagenet-r folder, sorted."""
    return sorted(f"{w}/{f}" for w in os.listdir(folder) if (folder / w).is_dir() for f in os.listdir(folder / w))


def write_lines(path: Path, lines: list[str]) -> Path:
    """Write a list file."""
    path.write_text("".join(f"{x}\n" for x in lines))
    return path


# ------------------------------------------------------------------------------ DomainNet
DN_CLASSES = ["aircraft_carrier", "bee", "cat", "pickup_truck", "zebra"]  # official label = index
DN_DOMAINS = ["clipart", "quickdraw", "real"]
DN_PER_CLASS = 5  # files per domain and class; the first 3 are "train"
DN_SUBSET = ["pickup_truck", "cat", "zebra"]  # 200-class-subset style: relabelled 0..2


@dataclass
class DomainNet:
    root: Path
    official_train: list[Path]  # <domain>_train.txt, labels = index in DN_CLASSES
    official_test: list[Path]
    subset_train: Path  # mixed domains, labels 0..len(DN_SUBSET)-1
    subset_val: Path


def dn_file_name(domain: str, ci: int, j: int) -> str:
    """DomainNet-like file names; quickdraw's are bare numbers as in the real release."""
    if domain == "quickdraw":
        return f"{5000000000000000 + ci * 1000 + j}.png"
    return f"{domain}_{ci + 1:03d}_{j:06d}.jpg"


def make_domainnet(root: Path) -> DomainNet:
    """A DomainNet tree plus official per-domain lists and a class-subset list pair."""
    root.mkdir(parents=True)
    lists = root.parent / "lists"
    lists.mkdir(exist_ok=True)
    official_train, official_test = [], []
    for domain in DN_DOMAINS:
        tr, te = [], []
        for ci, cls in enumerate(DN_CLASSES):
            d = root / domain / cls
            d.mkdir(parents=True)
            for j in range(DN_PER_CLASS):
                name = dn_file_name(domain, ci, j)
                (d / name).write_bytes(f"{domain}/{cls}/{name}".encode() * (j + 1))
                (tr if j < 3 else te).append(f"{domain}/{cls}/{name} {ci}")
        official_train.append(write_lines(lists / f"{domain}_train.txt", tr))
        official_test.append(write_lines(lists / f"{domain}_test.txt", te))
    sub_tr, sub_va = [], []
    for label, cls in enumerate(DN_SUBSET):
        ci = DN_CLASSES.index(cls)
        for domain in DN_DOMAINS:
            for j in range(DN_PER_CLASS):
                (sub_tr if j < 3 else sub_va).append(f"{domain}/{cls}/{dn_file_name(domain, ci, j)} {label}")
    return DomainNet(root, official_train, official_test,
                     write_lines(lists / "subset_train.txt", sub_tr), write_lines(lists / "subset_val.txt", sub_va))


def garbage(path: Path, data: bytes = b"this is not an archive\n") -> Path:
    """Write a file with arbitrary content."""
    path.write_bytes(data)
    return path


def tar_of(path: Path, members: dict[str, bytes | tuple[bytes, str]], mode: str = "w") -> Path:
    """A tar with the given members: name -> content (a regular file) or -> (type, link name),
    the type one of tarfile's SYMTYPE, LNKTYPE, FIFOTYPE, CHRTYPE, ..."""
    with tarfile.open(path, mode) as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            if isinstance(data, tuple):
                info.type, info.linkname = data
                tar.addfile(info)
            else:
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
    return path


def reference_dir() -> Path | None:
    """$SPLITLORA_REFERENCE_SPLITS when it holds the four published split lists, else None."""
    value = os.environ.get("SPLITLORA_REFERENCE_SPLITS")
    if not value:
        return None
    d = Path(value)
    names = ("imagenet_r_train.txt", "imagenet_r_val.txt", "sdomain_train.txt", "sdomain_val.txt")
    return d if all((d / n).is_file() for n in names) else None


def touch_listed(root: Path, lists: list[Path]) -> None:
    """Create a small file for every path named in the lists (first column) under ``root``."""
    made: set[str] = set()
    for lst in lists:
        for line in lst.read_text().splitlines():
            line = line.strip()
            if not line:
                continue
            rel = line.split()[0]
            parent = os.path.dirname(rel)
            if parent not in made:
                (root / parent).mkdir(parents=True, exist_ok=True)
                made.add(parent)
            with open(root / rel, "wb") as f:
                f.write(b"x")
