"""Tests of tools/split_cifar100.py on fabricated CIFAR-100 pickles (folder and tar.gz)."""
from __future__ import annotations

import json
import os
import pickle
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import helpers as fab

SCRIPT = "split_cifar100.py"


@pytest.fixture(scope="module")
def cifar(tmp_path_factory: pytest.TempPathFactory) -> fab.Cifar:
    return fab.make_cifar100(tmp_path_factory.mktemp("cifar"))


def _check_output(dst: Path, c: fab.Cifar) -> None:
    t = fab.prepared_tree(dst)
    folders = [f"{i:02d}" for i in range(100)]
    assert list(t["train"]) == folders and list(t["val"]) == folders
    assert fab.count(dst, "train") == 200 and fab.count(dst, "val") == 100
    for split, data, labels in (("train", c.train_data, c.train_labels), ("val", c.test_data, c.test_labels)):
        for i in (0, 1, 57, len(labels) - 1):
            path = dst / split / f"{labels[i]:02d}" / f"{i}.png"
            assert path.is_file() and not path.is_symlink()
            with Image.open(path) as im:
                assert im.size == (32, 32) and im.mode == "RGB"
                assert np.array_equal(np.asarray(im), fab.cifar_rgb(data[i]))
        for i, lab in enumerate(labels):  # every row at its label
            assert f"{i}.png" in t[split][f"{lab:02d}"]
    names = (dst / "class_names.tsv").read_text().splitlines()
    assert len(names) == 100 and names[7] == "07\tname_07"
    info = json.loads((dst / "prepare_info.json").read_text())
    assert info["tool"] == "split_cifar100" and info["num_classes"] == 100
    assert info["images"] == {"train": 200, "val": 100} and info["mode"] == "png"
    assert info["created_utc"].endswith("Z")


@pytest.mark.parametrize("kind", ["folder", "targz"])
def test_prepares_layout(cifar: fab.Cifar, tmp_path: Path, kind: str) -> None:
    src = cifar.folder if kind == "folder" else cifar.targz
    before = fab.lstat_snapshot(src.parent)
    r = fab.run_tool(SCRIPT, "--src", src, "--dst", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert "classes:     100" in r.stdout and "train:       200" in r.stdout and "val:         100" in r.stdout
    _check_output(tmp_path / "out", cifar)
    assert fab.lstat_snapshot(src.parent) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_class_count_comes_from_pickles(tmp_path: Path) -> None:
    c = fab.make_cifar100(tmp_path / "src", num_classes=3, train_per_class=4, test_per_class=2)
    r = fab.run_inprocess(SCRIPT, "--src", c.targz, "--dst", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    t = fab.prepared_tree(tmp_path / "out")
    assert list(t["train"]) == ["00", "01", "02"] == list(t["val"])
    assert fab.count(tmp_path / "out", "train") == 12 and fab.count(tmp_path / "out", "val") == 6


def test_images_are_png_files_and_mode_is_refused(cifar: fab.Cifar, tmp_path: Path) -> None:
    r = fab.run_inprocess(SCRIPT, "--src", cifar.folder, "--dst", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    f = tmp_path / "out" / "train" / f"{cifar.train_labels[3]:02d}" / "3.png"
    assert f.is_file() and not f.is_symlink() and os.stat(f).st_nlink == 1
    # --mode has no meaning here (the pixels come from pickles): refused, not ignored
    r = fab.run_inprocess(SCRIPT, "--src", cifar.folder, "--dst", tmp_path / "out2", "--mode", "symlink")
    assert r.returncode == 2 and "--mode" in r.stderr and not (tmp_path / "out2").exists()


def test_help_says_png() -> None:
    r = fab.run_tool(SCRIPT, "--help")
    assert r.returncode == 0 and "PNG" in r.stdout


def test_idempotent_and_resumes(cifar: fab.Cifar, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    assert fab.run_inprocess(SCRIPT, "--src", cifar.targz, "--dst", dst).returncode == 0
    snap = fab.lstat_snapshot(dst)
    r = fab.run_inprocess(SCRIPT, "--src", cifar.targz, "--dst", dst)
    assert r.returncode == 0, r.stderr
    assert "already complete" in r.stdout
    assert fab.lstat_snapshot(dst) == snap
    # the folder source holds the same pickles: also complete
    r = fab.run_inprocess(SCRIPT, "--src", cifar.folder, "--dst", dst)
    assert r.returncode == 0 and "already complete" in r.stdout and fab.lstat_snapshot(dst) == snap
    # a half-written destination is completed
    gone = [dst / "train" / f"{cifar.train_labels[5]:02d}" / "5.png", dst / "val" / f"{cifar.test_labels[9]:02d}" / "9.png"]
    for p in gone + [dst / "prepare_info.json"]:
        p.unlink()
    r = fab.run_inprocess(SCRIPT, "--src", cifar.targz, "--dst", dst)
    assert r.returncode == 0, r.stderr
    assert "completed" in r.stdout and "2 entries added" in r.stdout
    _check_output(dst, cifar)
    after = fab.lstat_snapshot(dst)
    for rel, value in snap.items():
        if not any(rel == os.path.relpath(p, dst) for p in gone) and rel != "prepare_info.json" and not os.path.isdir(dst / rel):
            assert after[rel] == value, rel


def test_wrong_existing_file_is_not_overwritten(cifar: fab.Cifar, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    assert fab.run_inprocess(SCRIPT, "--src", cifar.folder, "--dst", dst).returncode == 0
    bad = dst / "train" / f"{cifar.train_labels[4]:02d}" / "4.png"
    Image.new("RGB", (32, 32), (1, 2, 3)).save(bad)
    (dst / "prepare_info.json").unlink()
    snap = fab.lstat_snapshot(dst)
    r = fab.run_inprocess(SCRIPT, "--src", cifar.folder, "--dst", dst)
    assert r.returncode == 2
    assert str(bad) in fab.error_text(r.stderr) and "Traceback" not in r.stderr
    assert fab.lstat_snapshot(dst) == snap


def _folder_without(c: fab.Cifar, tmp: Path, name: str) -> Path:
    d = tmp / "cifar-100-python"
    shutil.copytree(c.folder, d)
    (d / name).unlink()
    return d


def _cifar10(c: fab.Cifar, tmp: Path) -> Path:
    return fab.make_cifar100(tmp / "c10", num_classes=10, cifar10=True).folder


def _bad_pickle(c: fab.Cifar, tmp: Path) -> Path:
    d = _folder_without(c, tmp, "test")
    fab.garbage(d / "test")
    return d


def _not_a_dict(c: fab.Cifar, tmp: Path) -> Path:
    d = _folder_without(c, tmp, "train")
    (d / "train").write_bytes(pickle.dumps([1, 2, 3], protocol=2))
    return d


def _tar_lacking(c: fab.Cifar, tmp: Path) -> Path:
    return fab.tar_of(tmp / "cifar-100-python.tar.gz", {"cifar-100-python/train": (c.folder / "train").read_bytes(),
                                                       "cifar-100-python/meta": (c.folder / "meta").read_bytes()}, "w:gz")


BAD = {  # id -> (make src, dst relative to tmp or None for src-relative, expected words)
    "src-missing": (lambda c, t: t / "nowhere" / "cifar-100-python.tar.gz", None, ["source not found", "nowhere"]),
    "folder-without-pickles": (lambda c, t: (t / "empty").mkdir() or t / "empty", None, ["lacks", "train", "meta"]),
    "folder-missing-meta": (lambda c, t: _folder_without(c, t, "meta"), None, ["lacks", "meta"]),
    "cifar10-no-fine-labels": (_cifar10, None, ["CIFAR-10"]),
    "not-a-pickle": (_bad_pickle, None, ["not a readable pickle", "test"]),
    "pickle-not-a-dict": (_not_a_dict, None, ["dict", "train"]),
    "tar-unreadable": (lambda c, t: fab.garbage(t / "cifar-100-python.tar.gz"), None,
                       ["not a readable tar", "cifar-100-python.tar.gz", "expected a .tar, .tar.gz"]),
    "tar-lacks-members": (_tar_lacking, None, ["lacks", "cifar-100-python/test"]),
    "dst-inside-src": (lambda c, t: shutil.copytree(c.folder, t / "c"), "inside", ["inside --src"]),
    "dst-equals-src": (lambda c, t: shutil.copytree(c.folder, t / "c"), "same", ["same as --src"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs(cifar: fab.Cifar, tmp_path: Path, case: str) -> None:
    make_src, dst_kind, words = BAD[case]
    src = make_src(cifar, tmp_path)
    dst = {None: tmp_path / "out", "inside": src / "out", "same": src}[dst_kind]
    before = fab.lstat_snapshot(tmp_path)
    r = fab.run_inprocess(SCRIPT, "--src", src, "--dst", dst)
    assert r.returncode == 2, (r.stdout, r.stderr)
    assert r.stderr.startswith("error:"), r.stderr
    assert "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # e.g. not tarfile's list of methods tried
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    assert fab.lstat_snapshot(tmp_path) == before  # nothing written anywhere, dst not created


def test_interrupt_and_oserror_are_reported_without_traceback(capsys: pytest.CaptureFixture) -> None:
    sys.dont_write_bytecode = True
    sys.path.insert(0, str(fab.TOOLS))
    try:
        import _prep_common as pc
    finally:
        sys.path.remove(str(fab.TOOLS))

    def interrupted(argv: object) -> int:
        raise KeyboardInterrupt

    def disk_full(argv: object) -> int:
        raise OSError(28, "No space left on device", "/some/dst/train/07/1.png")

    with pytest.raises(SystemExit) as exc:
        pc.run_main(interrupted)
    assert exc.value.code == 130 and "error: interrupted" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exc:
        pc.run_main(disk_full)
    err = capsys.readouterr().err
    assert exc.value.code == 1 and err.startswith("error: No space left on device") and "/some/dst/train/07/1.png" in err
