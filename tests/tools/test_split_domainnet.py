"""Tests of tools/split_domainnet.py on a fabricated DomainNet tree and list files."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from tests import helpers as fab

SCRIPT = "split_domainnet.py"


@pytest.fixture(scope="module")
def dn(tmp_path_factory: pytest.TempPathFactory) -> fab.DomainNet:
    """Shared DomainNet tree and lists -- never written by the tests."""
    return fab.make_domainnet(tmp_path_factory.mktemp("dn") / "domainnet")


def test_subset_lists(dn: fab.DomainNet, tmp_path: Path) -> None:
    before = fab.lstat_snapshot(dn.root.parent)
    dst = tmp_path / "out"
    r = fab.run_tool(SCRIPT, "--src", dn.root, "--dst", dst, "--train-list", dn.subset_train, "--val-list", dn.subset_val)
    assert r.returncode == 0, r.stderr
    t = fab.prepared_tree(dst)
    assert list(t["train"]) == ["000", "001", "002"] == list(t["val"])
    per = len(fab.DN_DOMAINS)
    assert all(len(v) == 3 * per for v in t["train"].values()) and all(len(v) == 2 * per for v in t["val"].values())
    assert (dst / "class_names.tsv").read_text() == "000\tpickup_truck\n001\tcat\n002\tzebra\n"
    # label 1 = cat: file names keep the domain prefix or get one (quickdraw's bare numbers)
    ci = fab.DN_CLASSES.index("cat")
    assert f"clipart_{ci + 1:03d}_000000.jpg" in t["train"]["001"]
    qd = fab.dn_file_name("quickdraw", ci, 0)
    assert f"quickdraw_{qd}" in t["train"]["001"]
    link = dst / "train" / "001" / f"quickdraw_{qd}"
    assert link.is_symlink() and os.readlink(link) == str(dn.root / "quickdraw" / "cat" / qd)
    info = json.loads((dst / "prepare_info.json").read_text())
    assert info["tool"] == "split_domainnet" and info["num_classes"] == 3
    assert info["images"] == {"train": 9 * per, "val": 6 * per} and info["mode"] == "symlink"
    assert "classes:     3" in r.stdout and f"train:       {9 * per} images" in r.stdout
    assert fab.lstat_snapshot(dn.root.parent) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_official_per_domain_lists_are_concatenated(dn: fab.DomainNet, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    r = fab.run_inprocess(SCRIPT, "--src", dn.root, "--dst", dst, "--train-list", *dn.official_train, "--val-list", *dn.official_test)
    assert r.returncode == 0, r.stderr
    t = fab.prepared_tree(dst)
    folders = [f"{i:03d}" for i in range(len(fab.DN_CLASSES))]
    assert list(t["train"]) == folders == list(t["val"])
    n_dom = len(fab.DN_DOMAINS)
    assert fab.count(dst, "train") == 3 * n_dom * len(folders) and fab.count(dst, "val") == 2 * n_dom * len(folders)
    assert (dst / "class_names.tsv").read_text() == "".join(f"{i:03d}\t{c}\n" for i, c in enumerate(fab.DN_CLASSES))
    for name in t["val"]["004"]:  # zebra, every domain present, names unique
        assert name.split("_")[0] in fab.DN_DOMAINS


@pytest.mark.parametrize("mode", ["symlink", "hardlink", "copy"])
def test_modes(dn: fab.DomainNet, tmp_path: Path, mode: str) -> None:
    dst = tmp_path / "out"
    r = fab.run_inprocess(SCRIPT, "--src", dn.root, "--dst", dst, "--mode", mode,
                    "--train-list", dn.subset_train, "--val-list", dn.subset_val)
    assert r.returncode == 0, r.stderr
    checked = 0
    for lst, split in ((dn.subset_train, "train"), (dn.subset_val, "val")):
        for line in lst.read_text().splitlines():
            rel, label = line.split()
            domain, _, name = rel.split("/")
            out = dst / split / f"{int(label):03d}" / (name if name.startswith(domain) else f"{domain}_{name}")
            src = dn.root / rel
            if mode == "symlink":
                assert out.is_symlink() and os.readlink(out) == str(src)
            elif mode == "hardlink":
                assert not out.is_symlink() and os.stat(out).st_ino == os.stat(src).st_ino
            else:
                assert not out.is_symlink() and os.stat(out).st_ino != os.stat(src).st_ino
            assert out.read_bytes() == src.read_bytes()
            checked += 1
    assert checked == fab.count(dst, "train") + fab.count(dst, "val")
    assert json.loads((dst / "prepare_info.json").read_text())["mode"] == mode


@pytest.mark.parametrize("mode", ["symlink", "copy"])
def test_idempotent_and_resumes(dn: fab.DomainNet, tmp_path: Path, mode: str) -> None:
    dst = tmp_path / "out"
    args = ["--src", dn.root, "--dst", dst, "--mode", mode, "--train-list", dn.subset_train, "--val-list", dn.subset_val]
    assert fab.run_inprocess(SCRIPT, *args).returncode == 0
    snap = fab.lstat_snapshot(dst)
    r = fab.run_inprocess(SCRIPT, *args)
    assert r.returncode == 0 and "already complete" in r.stdout
    assert fab.lstat_snapshot(dst) == snap
    gone = [dst / "train" / "000" / sorted(os.listdir(dst / "train" / "000"))[0],
            dst / "val" / "002" / sorted(os.listdir(dst / "val" / "002"))[-1],
            dst / "train" / "002" / sorted(os.listdir(dst / "train" / "002"))[2]]
    for p in gone + [dst / "prepare_info.json", dst / "class_names.tsv"]:
        p.unlink()
    r = fab.run_inprocess(SCRIPT, *args)
    assert r.returncode == 0 and "3 entries added" in r.stdout
    after = fab.lstat_snapshot(dst)
    assert set(after) == set(snap)
    for rel in snap:
        if not os.path.isdir(dst / rel) and rel not in ("prepare_info.json", "class_names.tsv") and dst / rel not in gone:
            assert after[rel] == snap[rel], rel
    assert (dst / "class_names.tsv").read_text() == "000\tpickup_truck\n001\tcat\n002\tzebra\n"


def test_existing_different_copy_is_an_error(dn: fab.DomainNet, tmp_path: Path) -> None:
    dst = tmp_path / "out"
    args = ["--src", dn.root, "--dst", dst, "--mode", "copy", "--train-list", dn.subset_train, "--val-list", dn.subset_val]
    assert fab.run_inprocess(SCRIPT, *args).returncode == 0
    victim = dst / "val" / "001" / sorted(os.listdir(dst / "val" / "001"))[0]
    victim.write_bytes(b"different size")
    (dst / "prepare_info.json").unlink()
    snap = fab.lstat_snapshot(tmp_path)
    r = fab.run_inprocess(SCRIPT, *args)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(victim) in fab.error_text(r.stderr)
    assert fab.lstat_snapshot(tmp_path) == snap


def test_mode_change_on_a_prepared_destination_is_refused(dn: fab.DomainNet, tmp_path: Path) -> None:
    """--mode copy over a destination of symlinks (with or without its prepare_info.json) and
    --mode symlink over copies are refused, nothing changed; the old mode completes it."""
    dst = tmp_path / "out"
    lists = ["--train-list", dn.subset_train, "--val-list", dn.subset_val]
    assert fab.run_inprocess(SCRIPT, "--src", dn.root, "--dst", dst, *lists).returncode == 0
    victim = dst / "train" / "000" / sorted(os.listdir(dst / "train" / "000"))[0]
    for evidence in ("prepare_info.json", "symbolic link"):
        if evidence == "symbolic link":
            (dst / "prepare_info.json").unlink()
            victim.unlink()  # an interrupted run: one entry and the info file missing
        snap = fab.lstat_snapshot(tmp_path)
        r = fab.run_inprocess(SCRIPT, "--src", dn.root, "--dst", dst, "--mode", "copy", *lists)
        assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
        msg = fab.error_text(r.stderr)
        for w in ("--mode symlink", "--mode copy", evidence, "new --dst"):
            assert w in msg, (w, msg)
        assert fab.lstat_snapshot(tmp_path) == snap
    assert fab.run_inprocess(SCRIPT, "--src", dn.root, "--dst", dst, *lists).returncode == 0
    assert victim.is_symlink() and json.loads((dst / "prepare_info.json").read_text())["mode"] == "symlink"
    copies = tmp_path / "copies"
    assert fab.run_inprocess(SCRIPT, "--src", dn.root, "--dst", copies, "--mode", "copy", *lists).returncode == 0
    (copies / "prepare_info.json").unlink()
    r = fab.run_inprocess(SCRIPT, "--src", dn.root, "--dst", copies, *lists)
    assert r.returncode == 2 and "--mode copy" in r.stderr and "separate copy" in r.stderr


# ---------------------------------------------------------------------------- bad inputs
def _pair(t: Path, train: list[str], val: list[str] | None = None) -> list[object]:
    val = val if val is not None else ["real/zebra/" + fab.dn_file_name("real", 4, 4) + " 2"]
    return ["--train-list", fab.write_lines(t / "train.txt", train), "--val-list", fab.write_lines(t / "val.txt", val)]


def _ok(domain: str, cls: str, j: int, label: int) -> str:
    return f"{domain}/{cls}/{fab.dn_file_name(domain, fab.DN_CLASSES.index(cls), j)} {label}"


def _no_domains(t: Path) -> Path:
    (t / "root" / "photos").mkdir(parents=True)
    return t / "root"


def _colliding(t: Path, dn: fab.DomainNet) -> Path:
    root = t / "collide"
    (root / "clipart" / "cat").mkdir(parents=True)
    (root / "clipart" / "cat" / "clipart_7.jpg").write_bytes(b"a")
    (root / "clipart" / "cat" / "7.jpg").write_bytes(b"b")
    (root / "clipart" / "cat" / "clipart_8.jpg").write_bytes(b"c")
    return root


BAD = {  # id -> (args builder (tmp, dn) -> [...], expected words)
    "src-missing": (lambda t, d: ["--src", t / "gone", "--dst", t / "out", *_pair(t, [_ok("real", "cat", 0, 1)])],
                    ["source not found", "gone"]),
    "root-without-domains": (lambda t, d: ["--src", _no_domains(t), "--dst", t / "out", *_pair(t, [_ok("real", "cat", 0, 1)])],
                             ["none of the DomainNet domain folders", "clipart"]),
    "list-missing": (lambda t, d: ["--src", d.root, "--dst", t / "out", "--train-list", d.subset_train, t / "more.txt",
                                   "--val-list", d.subset_val], ["list file not found", "more.txt"]),
    "line-without-label": (lambda t, d: ["--src", d.root, "--dst", t / "out",
                                         *_pair(t, [_ok("real", "cat", 0, 1), "real/cat/x.jpg"])], ["malformed line 2", "train.txt"]),
    "label-not-int": (lambda t, d: ["--src", d.root, "--dst", t / "out", *_pair(t, ["", _ok("real", "cat", 0, 1)[:-1] + "one"])],
                      ["malformed line 2", "not a non-negative integer"]),
    "path-depth": (lambda t, d: ["--src", d.root, "--dst", t / "out", *_pair(t, [_ok("real", "cat", 0, 1)], ["real/x.jpg 0"])],
                   ["malformed line 1", "val.txt", "three parts"]),
    "unknown-domain": (lambda t, d: ["--src", d.root, "--dst", t / "out", *_pair(t, ["photo/cat/a.jpg 1"])],
                       ["malformed line 1", "unknown domain 'photo'"]),
    "absent-files": (lambda t, d: ["--src", d.root, "--dst", t / "out",
                                   *_pair(t, [f"sketch/cat/sketch_{i}.jpg 1" for i in range(6)] + [_ok("real", "cat", 0, 1)])],
                     ["6 file(s)", "absent", "sketch/cat/sketch_0.jpg", "sketch/cat/sketch_4.jpg"]),
    "lists-overlap": (lambda t, d: ["--src", d.root, "--dst", t / "out", "--train-list", *d.official_train,
                                    "--val-list", d.official_test[0], d.official_train[1]], ["both the train and the val lists", "quickdraw_train.txt:1"]),
    "label-two-names": (lambda t, d: ["--src", d.root, "--dst", t / "out",
                                      *_pair(t, [_ok("real", "cat", 0, 1), _ok("real", "bee", 0, 1)])],
                        ["label 1 goes with two class names", "'cat'", "'bee'", "train.txt:2"]),
    "mixed-numberings": (lambda t, d: ["--src", d.root, "--dst", t / "out", "--train-list", d.subset_train, *d.official_train,
                                       "--val-list", d.subset_val], ["goes with two class names"]),
    "name-two-labels": (lambda t, d: ["--src", d.root, "--dst", t / "out", *_pair(t, [_ok("real", "cat", 0, 1), _ok("real", "cat", 1, 3)])],
                        ["class 'cat' has two labels"]),
    "same-destination": (lambda t, d: ["--src", _colliding(t, d), "--dst", t / "out",
                                       *_pair(t, ["clipart/cat/clipart_7.jpg 0", "clipart/cat/7.jpg 0"], ["clipart/cat/clipart_8.jpg 0"])],
                         ["same destination train/000/clipart_7.jpg", "train.txt:1", "train.txt:2"]),
    "non-image-file": (lambda t, d: ["--src", d.root, "--dst", t / "out", *_pair(t, [_ok("real", "cat", 0, 1), "real/cat/notes.txt 1"])],
                       ["malformed line 2", "train.txt", "'notes.txt' is not an image file"]),
    "hidden-file": (lambda t, d: ["--src", d.root, "--dst", t / "out", *_pair(t, [_ok("real", "cat", 0, 1), "real/cat/.x.jpg 1"])],
                    ["malformed line 2", "hidden file"]),
    "hidden-class-folder": (lambda t, d: ["--src", d.root, "--dst", t / "out", *_pair(t, [_ok("real", "cat", 0, 1)], ["real/.cat/x.jpg 1"])],
                            ["malformed line 1", "val.txt", "hidden"]),
    "dst-inside-src": (lambda t, d: ["--src", d.root, "--dst", d.root / "real" / "prepared", "--train-list", d.subset_train,
                                     "--val-list", d.subset_val], ["inside --src"]),
    "dst-equals-src": (lambda t, d: ["--src", d.root, "--dst", d.root, "--train-list", d.subset_train,
                                     "--val-list", d.subset_val], ["same as --src"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs(dn: fab.DomainNet, tmp_path: Path, case: str) -> None:
    build, words = BAD[case]
    args = build(tmp_path, dn)
    before_tmp, before_src = fab.lstat_snapshot(tmp_path), fab.lstat_snapshot(dn.root.parent)
    r = fab.run_inprocess(SCRIPT, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    msg = fab.error_text(r.stderr)
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr
    for w in words:
        assert w in msg, (w, msg)
    assert fab.lstat_snapshot(tmp_path) == before_tmp and fab.lstat_snapshot(dn.root.parent) == before_src


# ---------------------------------------------------------------------------- reference lists
@pytest.mark.skipif(fab.reference_dir() is None, reason="set SPLITLORA_REFERENCE_SPLITS to the folder with the published split lists")
def test_reference_lists(tmp_path: Path) -> None:
    ref = fab.reference_dir()
    assert ref is not None
    lists = [ref / "sdomain_train.txt", ref / "sdomain_val.txt"]
    fab.touch_listed(tmp_path / "domainnet", lists)
    start = time.perf_counter()
    r = fab.run_tool(SCRIPT, "--src", tmp_path / "domainnet", "--dst", tmp_path / "out", "--mode", "symlink",
                    "--train-list", lists[0], "--val-list", lists[1])
    elapsed = time.perf_counter() - start
    assert r.returncode == 0, r.stderr
    t = fab.prepared_tree(tmp_path / "out")
    assert len(t["train"]) == 200 == len(t["val"])
    assert fab.count(tmp_path / "out", "train") == 47532 and fab.count(tmp_path / "out", "val") == 20450
    info = json.loads((tmp_path / "out" / "prepare_info.json").read_text())
    assert info["num_classes"] == 200 and info["images"] == {"train": 47532, "val": 20450}
    print(f"DomainNet reference lists: 200 classes, 47532/20450 images, tool wall time {elapsed:.1f} s")
