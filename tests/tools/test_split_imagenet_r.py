"""Tests of tools/split_imagenet_r.py on a fabricated imagenet-r folder and tar."""
from __future__ import annotations

import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

from tests import helpers as fab

SCRIPT = "split_imagenet_r.py"
WNIDS = sorted(fab.INR_CLASSES)


@pytest.fixture(scope="module")
def inr(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """(imagenet-r folder, imagenet-r.tar) -- shared, never written by the tests."""
    return fab.make_imagenet_r(tmp_path_factory.mktemp("inr"))


def expected_seeded(folder: Path, seed: int, fraction: float) -> dict[str, set[str]]:
    """The documented split: one PCG64 generator, wnids sorted, names sorted, first k of a permutation."""
    rng = np.random.Generator(np.random.PCG64(seed))
    out: dict[str, set[str]] = {"train": set(), "val": set()}
    for wnid in sorted(os.listdir(folder)):
        if not (folder / wnid).is_dir():
            continue
        names = sorted(os.listdir(folder / wnid))
        n = len(names)
        k = min(max(round(fraction * n), 1), n - 1) if n >= 2 else round(fraction * n)
        val = {names[i] for i in rng.permutation(n)[:k]}
        for name in names:
            out["val" if name in val else "train"].add(f"{wnid}/{name}")
    return out


def split_sets(dst: Path) -> dict[str, set[str]]:
    t = fab.prepared_tree(dst)
    return {s: {f"{c}/{f}" for c, files in t[s].items() for f in files} for s in ("train", "val")}


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_seeded_split(inr: tuple[Path, Path], tmp_path: Path, kind: str) -> None:
    folder, tar = inr
    src = folder if kind == "folder" else tar
    before = fab.lstat_snapshot(folder.parent)
    r = fab.run_tool(SCRIPT, "--src", src, "--dst", tmp_path / "out", "--seed", 3)
    assert r.returncode == 0, r.stderr
    dst = tmp_path / "out"
    t = fab.prepared_tree(dst)
    assert list(t["train"]) == WNIDS == list(t["val"])
    for wnid, (_, n) in fab.INR_CLASSES.items():
        k = len(t["val"][wnid])
        assert k == max(1, round(0.2 * n)) and len(t["train"][wnid]) == n - k
    sets = split_sets(dst)
    assert sets == expected_seeded(folder, 3, 0.2)
    assert not sets["train"] & sets["val"] and sets["train"] | sets["val"] == set(fab.inr_files(folder))
    assert (dst / "class_names.tsv").read_text() == "".join(
        f"{w}\t{fab.INR_CLASSES[w][0]}\n" for w in WNIDS)
    info = json.loads((dst / "prepare_info.json").read_text())
    assert info["tool"] == "split_imagenet_r" and info["num_classes"] == 4
    assert info["images"] == {"train": 19, "val": 5} and info["options"] == {"seed": 3, "val_fraction": 0.2}
    assert info["mode"] == ("symlink" if kind == "folder" else "copy")
    assert "train:       19 images" in r.stdout and "val:         5 images" in r.stdout
    if kind == "tar":  # copy semantics: regular files with the member bytes
        f = dst / "train" / sorted(t["train"])[0] / t["train"][sorted(t["train"])[0]][0]
        assert f.is_file() and not f.is_symlink()
        assert f.read_bytes() == (folder / f.parent.name / f.name).read_bytes()
    assert fab.lstat_snapshot(folder.parent) == before
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_seeded_split_is_deterministic_and_seed_dependent(inr: tuple[Path, Path], tmp_path: Path) -> None:
    folder, tar = inr
    for name, src, seed in (("a", folder, 0), ("b", tar, 0), ("c", folder, 1)):
        assert fab.run_inprocess(SCRIPT, "--src", src, "--dst", tmp_path / name, "--seed", seed).returncode == 0
    a, b, c = (split_sets(tmp_path / n) for n in "abc")
    assert a == b == expected_seeded(folder, 0, 0.2)
    assert a != c
    r = fab.run_inprocess(SCRIPT, "--src", folder, "--dst", tmp_path / "d", "--val-fraction", 0.5)
    d = fab.prepared_tree(tmp_path / "d")
    assert r.returncode == 0 and {w: len(v) for w, v in d["val"].items()} == {
        "n01443537": 4, "n01484850": 2, "n01494475": 1, "n01498041": 5}  # round(3.5)=4, round(2.5)=2


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_lists_are_used_exactly(inr: tuple[Path, Path], tmp_path: Path, kind: str) -> None:
    folder, tar = inr
    files = fab.inr_files(folder)
    train, val = files[::3], [f for i, f in enumerate(files) if i % 3]
    tl = fab.write_lines(tmp_path / "train.txt", ["", *train[:3], "   ", *[f"imagenet-r/{x}" for x in train[3:]]])
    vl = fab.write_lines(tmp_path / "val.txt", val + [""])
    r = fab.run_inprocess(SCRIPT, "--src", folder if kind == "folder" else tar, "--dst", tmp_path / "out",
                    "--train-list", tl, "--val-list", vl)
    assert r.returncode == 0, r.stderr
    assert split_sets(tmp_path / "out") == {"train": set(train), "val": set(val)}
    info = json.loads((tmp_path / "out" / "prepare_info.json").read_text())
    assert info["images"] == {"train": len(train), "val": len(val)}


@pytest.mark.parametrize("mode", ["symlink", "hardlink", "copy"])
def test_modes(inr: tuple[Path, Path], tmp_path: Path, mode: str) -> None:
    folder, _ = inr
    dst = tmp_path / "out"
    r = fab.run_inprocess(SCRIPT, "--src", folder, "--dst", dst, "--mode", mode)
    assert r.returncode == 0, r.stderr
    sets = split_sets(dst)
    assert len(sets["train"]) + len(sets["val"]) == 24
    for split, rels in sets.items():
        for rel in rels:
            out, src = dst / split / rel, folder / rel
            if mode == "symlink":
                assert out.is_symlink() and os.path.isabs(os.readlink(out))
                assert Path(os.readlink(out)) == src
            elif mode == "hardlink":
                assert not out.is_symlink() and os.stat(out).st_ino == os.stat(src).st_ino
            else:
                assert not out.is_symlink() and os.stat(out).st_ino != os.stat(src).st_ino
            assert out.read_bytes() == src.read_bytes()


def test_no_readme_no_class_names(tmp_path: Path) -> None:
    folder, _ = fab.make_imagenet_r(tmp_path / "src", readme=False)
    r = fab.run_inprocess(SCRIPT, "--src", folder, "--dst", tmp_path / "out")
    assert r.returncode == 0, r.stderr
    assert not (tmp_path / "out" / "class_names.tsv").exists()
    assert json.loads((tmp_path / "out" / "prepare_info.json").read_text())["class_names_file"] is None


@pytest.mark.parametrize("kind", ["folder", "tar"])
def test_idempotent_and_resumes(inr: tuple[Path, Path], tmp_path: Path, kind: str) -> None:
    folder, tar = inr
    src = folder if kind == "folder" else tar
    dst = tmp_path / "out"
    assert fab.run_inprocess(SCRIPT, "--src", src, "--dst", dst).returncode == 0
    snap = fab.lstat_snapshot(dst)
    r = fab.run_inprocess(SCRIPT, "--src", src, "--dst", dst)
    assert r.returncode == 0, r.stderr
    assert "already complete" in r.stdout and fab.lstat_snapshot(dst) == snap
    t = fab.prepared_tree(dst)
    gone = [dst / "train" / WNIDS[0] / t["train"][WNIDS[0]][0], dst / "val" / WNIDS[3] / t["val"][WNIDS[3]][1]]
    for p in gone + [dst / "prepare_info.json"]:
        p.unlink()
    r = fab.run_inprocess(SCRIPT, "--src", src, "--dst", dst)
    assert r.returncode == 0, r.stderr
    assert "2 entries added" in r.stdout
    after = fab.lstat_snapshot(dst)
    assert set(after) == set(snap)
    for rel in snap:
        if not os.path.isdir(dst / rel) and rel != "prepare_info.json" and dst / rel not in gone:
            assert after[rel] == snap[rel], rel


def test_existing_wrong_link_is_an_error(inr: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = inr
    dst = tmp_path / "out"
    assert fab.run_inprocess(SCRIPT, "--src", folder, "--dst", dst).returncode == 0
    link = dst / "val" / WNIDS[0] / os.listdir(dst / "val" / WNIDS[0])[0]
    link.unlink()
    os.symlink(str(tmp_path / "elsewhere.jpg"), link)
    snap = fab.lstat_snapshot(tmp_path)
    r = fab.run_inprocess(SCRIPT, "--src", folder, "--dst", dst)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert str(link) in fab.error_text(r.stderr) and "do not match" in r.stderr
    assert fab.lstat_snapshot(tmp_path) == snap


def test_other_seed_into_same_destination_is_refused(inr: tuple[Path, Path], tmp_path: Path) -> None:
    folder, _ = inr
    dst = tmp_path / "out"
    assert fab.run_inprocess(SCRIPT, "--src", folder, "--dst", dst, "--seed", 0).returncode == 0
    snap = fab.lstat_snapshot(tmp_path)
    r = fab.run_inprocess(SCRIPT, "--src", folder, "--dst", dst, "--seed", 1)
    assert r.returncode == 2 and "not part of this split" in fab.error_text(r.stderr)
    assert fab.lstat_snapshot(tmp_path) == snap


def test_image_extensions_agree_with_the_main_loader() -> None:
    """The tools mirror datasets/folder.py's list (importing it would import torch)."""
    sys.path.insert(0, str(fab.TOOLS))
    try:
        import _prep_common as pc
    finally:
        sys.path.remove(str(fab.TOOLS))
    from datasets.folder import IMAGE_EXTENSIONS, list_images

    assert pc.IMAGE_EXTENSIONS == IMAGE_EXTENSIONS
    names = ["a.jpg", "B.JPEG", "c.png", "d.webp", "notes.txt", "Thumbs.db", ".DS_Store", "._e.jpg", "f.jpg.txt"]
    assert [n for n in sorted(names) if pc.image_name_problem(n) is None] == ["B.JPEG", "a.jpg", "c.png", "d.webp"]
    # the same names as main.py's own listing of a folder holding them
    assert sorted(n for n in names if pc.image_name_problem(n) is None) == sorted(
        list_images(_touched(Path(tempfile.mkdtemp()), names)))


def _touched(folder: Path, names: list[str]) -> Path:
    for n in names:
        (folder / n).write_bytes(b"x")
    return folder


def test_non_image_and_hidden_files_are_not_counted(tmp_path: Path) -> None:
    """notes.txt, .DS_Store, ._x.jpg and a hidden folder in a class folder change nothing: not
    linked, not counted, no effect on which images the seeded split sends to val."""
    clean, _ = fab.make_imagenet_r(tmp_path / "clean")
    junk, _ = fab.make_imagenet_r(tmp_path / "junk")
    for wnid in fab.INR_CLASSES:
        for name in ("notes.txt", ".DS_Store", "._art_0.jpg", "Thumbs.db"):
            (junk / wnid / name).write_bytes(b"not an image")
        (junk / wnid / ".thumbnails").mkdir()
        (junk / wnid / ".thumbnails" / "a.jpg").write_bytes(b"x")
    junk_tar = tmp_path / "junk" / "imagenet-r.tar"
    junk_tar.unlink()
    fab.tar_of(junk_tar, {f"imagenet-r/{p.relative_to(junk)}": p.read_bytes()
                         for p in sorted(junk.rglob("*")) if p.is_file()})
    runs = {}
    for name, src in (("clean", clean), ("junk", junk), ("junk_tar", junk_tar)):
        r = fab.run_inprocess(SCRIPT, "--src", src, "--dst", tmp_path / f"out_{name}", "--seed", 5)
        assert r.returncode == 0, r.stderr
        runs[name] = (split_sets(tmp_path / f"out_{name}"),
                      json.loads((tmp_path / f"out_{name}" / "prepare_info.json").read_text())["images"])
    assert runs["junk"] == runs["clean"] == runs["junk_tar"]
    assert runs["clean"][1] == {"train": 19, "val": 5}


def test_mode_change_on_a_prepared_destination_is_refused(inr: tuple[Path, Path], tmp_path: Path) -> None:
    """A destination of symlinks is not silently left as links by --mode copy (a user who then
    deletes the source would lose the data): refused, naming both modes and the fix."""
    folder, tar = inr
    dst = tmp_path / "out"
    assert fab.run_inprocess(SCRIPT, "--src", folder, "--dst", dst).returncode == 0
    for evidence in ("prepare_info.json", "the entries"):
        if evidence == "the entries":  # an interrupted run: no prepare_info.json yet
            (dst / "prepare_info.json").unlink()
        snap = fab.lstat_snapshot(tmp_path)
        for args in (["--src", folder, "--mode", "copy" if evidence == "the entries" else "hardlink"], ["--src", tar]):
            r = fab.run_inprocess(SCRIPT, *args, "--dst", dst)
            assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr
            msg = fab.error_text(r.stderr)
            new = "hardlink" if "hardlink" in args else "copy"
            for w in ("--mode symlink", f"--mode {new}", "new --dst", str(dst)):
                assert w in msg, (w, msg)
            assert (evidence in msg) if evidence == "prepare_info.json" else "symbolic link" in msg
            assert fab.lstat_snapshot(tmp_path) == snap
    # the same mode still completes it
    r = fab.run_inprocess(SCRIPT, "--src", folder, "--dst", dst)
    assert r.returncode == 0 and json.loads((dst / "prepare_info.json").read_text())["mode"] == "symlink"


# ---------------------------------------------------------------------------- bad inputs
def _lists(t: Path, folder: Path, train: list[str] | None = None, val: list[str] | None = None) -> list[object]:
    files = fab.inr_files(folder)
    train = files[:12] if train is None else train
    val = files[12:] if val is None else val
    return ["--train-list", fab.write_lines(t / "train.txt", train), "--val-list", fab.write_lines(t / "val.txt", val)]


def _no_wnids(t: Path) -> Path:
    (t / "imagenet-r" / "not_a_wnid").mkdir(parents=True)
    (t / "imagenet-r" / "README.txt").write_text("n01443537 goldfish\n")
    return t / "imagenet-r"


BAD = {  # id -> (args builder (tmp, folder, tar) -> [--src .. --dst .. ...], expected words)
    "src-missing": (lambda t, f, a: ["--src", t / "missing" / "imagenet-r", "--dst", t / "out"], ["source not found", "missing"]),
    "folder-without-wnids": (lambda t, f, a: ["--src", _no_wnids(t), "--dst", t / "out"], ["no wnid folders"]),
    "tar-unreadable": (lambda t, f, a: ["--src", fab.garbage(t / "imagenet-r.tar"), "--dst", t / "out"], ["not a readable tar"]),
    "tar-lacks-members": (lambda t, f, a: ["--src", fab.tar_of(t / "imagenet-r.tar", {"other/n01443537/a.jpg": b"x"}),
                                           "--dst", t / "out"], ["no members", "imagenet-r/<wnid>/<image>"]),
    "only-train-list": (lambda t, f, a: ["--src", f, "--dst", t / "out", "--train-list", fab.write_lines(t / "l.txt", ["n01443537/art_0.jpg"])],
                        ["only one of --train-list / --val-list"]),
    "list-missing": (lambda t, f, a: ["--src", f, "--dst", t / "out", "--train-list", t / "nope.txt",
                                      "--val-list", fab.write_lines(t / "v.txt", ["n01443537/art_0.jpg"])], ["list file not found", "nope.txt"]),
    "malformed-line": (lambda t, f, a: ["--src", f, "--dst", t / "out", *_lists(t, f, val=["n01443537/art_0.jpg", "art_1.jpg"])],
                       ["malformed line 2", "val.txt", "art_1.jpg"]),
    "malformed-traversal": (lambda t, f, a: ["--src", f, "--dst", t / "out", *_lists(t, f, train=["n01443537/.."])],
                            ["malformed line 1", "train.txt"]),
    "absent-files": (lambda t, f, a: ["--src", f, "--dst", t / "out",
                                      *_lists(t, f, train=[f"n01443537/ghost_{i}.jpg" for i in range(7)] + ["n01443537/art_0.jpg"])],
                     ["7 file(s)", "absent", "ghost_0.jpg", "ghost_4.jpg"]),
    "absent-files-tar": (lambda t, f, a: ["--src", a, "--dst", t / "out", *_lists(t, f, train=["n09999999/x.jpg"])],
                         ["1 file(s)", "absent", "n09999999/x.jpg"]),
    "lists-overlap": (lambda t, f, a: ["--src", f, "--dst", t / "out",
                                       *_lists(t, f, val=fab.inr_files(f)[10:] + ["imagenet-r/" + fab.inr_files(f)[0]])],
                      ["3 file(s) are in both the train and the val list", "val.txt:15"]),
    "duplicate-in-list": (lambda t, f, a: ["--src", f, "--dst", t / "out", *_lists(t, f, train=fab.inr_files(f)[::2] + fab.inr_files(f)[:1],
                                                                                    val=fab.inr_files(f)[1::2])],
                          ["same destination", "train.txt:1", "train.txt:13"]),
    "val-list-leaves-a-class-empty": (lambda t, f, a: ["--src", f, "--dst", t / "out", *_lists(
        t, f, train=fab.inr_files(f)[::2], val=[x for x in fab.inr_files(f)[1::2] if not x.startswith("n01494475/")])],
        ["1 class(es) have train images but no val images", "n01494475", "val.txt", "Fix the lists"]),
    "list-names-a-non-image": (lambda t, f, a: ["--src", f, "--dst", t / "out", *_lists(t, f, train=["n01443537/notes.txt"])],
                               ["line 1", "train.txt", "'notes.txt' is not an image file", ".jpg"]),
    "list-names-a-hidden-file": (lambda t, f, a: ["--src", f, "--dst", t / "out", *_lists(t, f, val=["n01443537/._art_0.jpg"])],
                                 ["line 1", "val.txt", "hidden file"]),
    "val-fraction": (lambda t, f, a: ["--src", f, "--dst", t / "out", "--val-fraction", 1.5], ["--val-fraction"]),
    "dst-inside-src": (lambda t, f, a: ["--src", f, "--dst", f / "prepared"], ["inside --src"]),
    "dst-equals-src": (lambda t, f, a: ["--src", f, "--dst", f], ["same as --src"]),
    "dst-is-a-file": (lambda t, f, a: ["--src", f, "--dst", fab.garbage(t / "out.txt")], ["not a folder"]),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_inputs(inr: tuple[Path, Path], tmp_path: Path, case: str) -> None:
    folder, tar = inr
    build, words = BAD[case]
    args = build(tmp_path, folder, tar)
    before_tmp, before_src = fab.lstat_snapshot(tmp_path), fab.lstat_snapshot(folder.parent)
    r = fab.run_inprocess(SCRIPT, *args)
    assert r.returncode == 2, (r.stdout, r.stderr)
    msg = fab.error_text(r.stderr)
    assert r.stderr.startswith("error:") and "Traceback" not in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1, r.stderr  # one line, e.g. no tarfile per-method list
    for w in words:
        assert w in msg, (w, msg)
    assert fab.lstat_snapshot(tmp_path) == before_tmp and fab.lstat_snapshot(folder.parent) == before_src


# ---------------------------------------------------------------------------- reference lists
@pytest.mark.skipif(fab.reference_dir() is None, reason="set SPLITLORA_REFERENCE_SPLITS to the folder with the published split lists")
def test_reference_lists(tmp_path: Path) -> None:
    ref = fab.reference_dir()
    assert ref is not None
    lists = [ref / "imagenet_r_train.txt", ref / "imagenet_r_val.txt"]
    fab.touch_listed(tmp_path / "imagenet-r", lists)
    start = time.perf_counter()
    r = fab.run_tool(SCRIPT, "--src", tmp_path / "imagenet-r", "--dst", tmp_path / "out", "--mode", "symlink",
                    "--train-list", lists[0], "--val-list", lists[1])
    elapsed = time.perf_counter() - start
    assert r.returncode == 0, r.stderr
    t = fab.prepared_tree(tmp_path / "out")
    assert len(t["train"]) == 200 == len(t["val"])
    assert fab.count(tmp_path / "out", "train") == 24000 and fab.count(tmp_path / "out", "val") == 6000
    info = json.loads((tmp_path / "out" / "prepare_info.json").read_text())
    assert info["num_classes"] == 200 and info["images"] == {"train": 24000, "val": 6000}
    print(f"ImageNet-R reference lists: 200 classes, 24000/6000 images, tool wall time {elapsed:.1f} s")
