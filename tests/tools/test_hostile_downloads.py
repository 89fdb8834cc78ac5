"""Hostile inputs to the dataset-preparation tools (tools/split_*.py).

Each test builds the input (a pickle that would run code, tar members escaping the destination
or being links and devices, list entries leading out of --src, links planted in an existing
--dst, FIFOs where files are read) and checks that the tool refused it with one ``error:`` line
(exit 2) or skipped what is no image, that nothing ran, that nothing was written outside --dst
and that no FIFO was opened (those runs are subprocesses with a timeout).
"""
from __future__ import annotations

import importlib
import os
import pickle
import stat
import sys
import tarfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests import helpers as fab

FIFO_GUARD_S = 120  # a run that opens a FIFO blocks forever: fail after this long instead
WNID = "n01443537"


def refused(r: object, *words: str) -> str:
    """The one-line error of a refused run, checked to contain ``words``."""
    assert r.returncode == 2, (r.stdout, r.stderr)  # type: ignore[attr-defined]
    msg = fab.error_text(r.stderr)  # type: ignore[attr-defined]
    assert len(msg.strip().splitlines()) == 1 and "Traceback" not in r.stderr, r.stderr  # type: ignore[attr-defined]
    for w in words:
        assert w in msg, (w, msg)
    return msg


def regular_files_only(dst: Path) -> None:
    """Every entry under ``dst`` is a folder, a regular file or a link; no leftover staging folder."""
    for dirpath, dirnames, filenames in os.walk(dst):
        assert not [d for d in dirnames if d.startswith(".extract-")], dirpath
        for name in filenames:
            mode = os.lstat(os.path.join(dirpath, name)).st_mode
            assert stat.S_ISREG(mode) or stat.S_ISLNK(mode), os.path.join(dirpath, name)


def tool_module(name: str) -> object:
    saved = list(sys.path)
    sys.path.append(str(fab.TOOLS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path[:] = saved


# ---------------------------------------------------------------------------- CIFAR-100 pickles
class Call:
    """Pickles to a call of ``func(*args)``: what a crafted pickle runs on loading."""

    def __init__(self, func: object, *args: object) -> None:
        self.func, self.args = func, args

    def __reduce__(self) -> tuple:
        return self.func, self.args


@pytest.mark.parametrize("kind", ["folder", "targz"])
def test_cifar_pickle_that_would_run_code_is_refused(tmp_path: Path, kind: str) -> None:
    c = fab.make_cifar100(tmp_path / "src", num_classes=3)
    marker = tmp_path / "marker"
    call = Call(os.system, f"touch {marker}") if kind == "folder" else Call(open, str(marker), "w")
    crafted = pickle.dumps({b"data": call, b"fine_labels": [0]}, protocol=2)
    pickle.loads(crafted)  # the input is really hostile: plain pickle runs it ...
    assert marker.exists()
    marker.unlink()  # ... and the tool must not
    (c.folder / "train").write_bytes(crafted)
    src = c.folder
    if kind == "targz":
        src = fab.tar_of(tmp_path / "hostile.tar.gz", {f"cifar-100-python/{n}": (c.folder / n).read_bytes()
                                                      for n in ("train", "test", "meta")}, "w:gz")
    before = fab.lstat_snapshot(tmp_path)
    r = fab.run_inprocess("split_cifar100.py", "--src", src, "--dst", tmp_path / "out")
    refused(r, "is not a CIFAR-100 pickle", "which is never loaded", "system" if kind == "folder" else "open", "train")
    assert not marker.exists() and fab.lstat_snapshot(tmp_path) == before


@pytest.mark.parametrize("kind", ["folder", "targz"])
def test_a_cifar_member_too_big_to_be_a_pickle_is_refused_unread(tmp_path: Path, kind: str,
                                                                 monkeypatch) -> None:
    c = fab.make_cifar100(tmp_path / "src", num_classes=3)
    (c.folder / "train").write_bytes(bytes(4096))  # a decompression bomb, 4 KiB of it
    src = c.folder if kind == "folder" else fab.tar_of(
        tmp_path / "bomb.tar.gz", {f"cifar-100-python/{n}": (c.folder / n).read_bytes()
                                   for n in ("train", "test", "meta")}, "w:gz")
    monkeypatch.setattr(tool_module("split_cifar100"), "MAX_PICKLE", 1024)  # (1 GiB for real)
    r = fab.run_inprocess("split_cifar100.py", "--src", src, "--dst", tmp_path / "out")
    refused(r, "is over 0 MiB, not a CIFAR-100 pickle")
    assert not (tmp_path / "out").exists()


def test_cifar_unpickler_admits_only_array_reconstruction() -> None:
    cifar = tool_module("split_cifar100")
    pc = tool_module("_prep_common")
    array = np.arange(6, dtype=np.uint8).reshape(2, 3)
    got = cifar.unpickle(pickle.dumps({b"data": array, b"fine_labels": [1, 2]}, protocol=2), "x")
    assert np.array_equal(got["data"], array) and got["fine_labels"] == [1, 2]
    for crafted, words in (
        (b"\x80\x02c_codecs\nencode\nX\x01\x00\x00\x00xX\x05\x00\x00\x00rot13\x86R.", "encoding 'rot13'"),
        (pickle.dumps(Call(eval, "1"), protocol=4), "builtins.eval"),
        (pickle.dumps(Call(np.load, "x.npy"), protocol=4), "numpy.load"),
    ):
        with pytest.raises(pc.PrepError, match="never loaded") as exc:
            cifar.unpickle(crafted, "x")
        assert words in str(exc.value)


def test_cifar_pickles_in_the_real_python2_format_load(tmp_path: Path) -> None:
    """The real files were written by Python 2's cPickle (8-bit strings, numpy.core.multiarray)."""
    c = fab.make_cifar100(tmp_path / "src", num_classes=3, train_per_class=2, test_per_class=1, py2=True)
    raw = (c.folder / "train").read_bytes()
    assert b"cnumpy.core.multiarray\n_reconstruct" in raw and b"_codecs" not in raw
    for src in (c.folder, c.targz):
        dst = tmp_path / f"out_{src.name}"
        r = fab.run_inprocess("split_cifar100.py", "--src", src, "--dst", dst)
        assert r.returncode == 0, r.stderr
        with Image.open(dst / "train" / f"{c.train_labels[1]:02d}" / "1.png") as im:
            assert np.array_equal(np.asarray(im), fab.cifar_rgb(c.train_data[1]))
        assert (dst / "class_names.tsv").read_text().splitlines()[2] == "02\tname_02"


# ---------------------------------------------------------------------------- ImageNet-R tar members
def _hostile_tar(tmp_path: Path, extra: dict) -> Path:
    """The fabricated imagenet-r.tar with ``extra`` members appended."""
    _, tar = fab.make_imagenet_r(tmp_path / "src")
    return fab.tar_of(tar, extra, "a")


def test_tar_members_that_are_not_images_are_not_extracted(tmp_path: Path) -> None:
    """'..', absolute names, symbolic links (out of the archive and inside), a FIFO and a device:
    none is an image, none is extracted, nothing appears outside --dst."""
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(b"secret")
    tar = _hostile_tar(tmp_path, {
        "imagenet-r/../escape_dotdot.jpg": b"x",
        f"imagenet-r/{WNID}/../../../escape_up.jpg": b"x",
        str(tmp_path / "escape_abs.jpg"): b"x",
        f"imagenet-r/{WNID}/sym_abs.jpg": (tarfile.SYMTYPE, str(secret)),
        f"imagenet-r/{WNID}/sym_up.jpg": (tarfile.SYMTYPE, "../../../secret.jpg"),
        f"imagenet-r/{WNID}/fifo.jpg": (tarfile.FIFOTYPE, ""),
        f"imagenet-r/{WNID}/chr.jpg": (tarfile.CHRTYPE, ""),
    })
    before = fab.lstat_snapshot(tmp_path)
    dst = tmp_path / "out"
    r = fab.run_inprocess("split_imagenet_r.py", "--src", tar, "--dst", dst, "--seed", 3)
    assert r.returncode == 0, r.stderr
    assert "skipped 4 image-named entries" in r.stderr and f"{WNID}/fifo.jpg is a special file" in r.stderr
    assert json_images(dst) == {"train": 19, "val": 5}
    regular_files_only(dst)
    for name in ("escape_dotdot.jpg", "escape_up.jpg", "escape_abs.jpg"):
        assert not list(tmp_path.rglob(name))
    after = fab.lstat_snapshot(tmp_path)
    assert {k: v for k, v in after.items() if not k.startswith("out")} == before and secret.read_bytes() == b"secret"


def json_images(dst: Path) -> dict:
    import json

    return json.loads((dst / "prepare_info.json").read_text())["images"]


@pytest.mark.parametrize("member,words", [("sym_abs.jpg", "symbolic link"), ("fifo.jpg", "special file"),
                                          ("chr.jpg", "special file")])
def test_tar_member_listed_that_is_no_regular_file_is_refused(tmp_path: Path, member: str, words: str) -> None:
    tar = _hostile_tar(tmp_path, {f"imagenet-r/{WNID}/sym_abs.jpg": (tarfile.SYMTYPE, "/etc/passwd"),
                                  f"imagenet-r/{WNID}/fifo.jpg": (tarfile.FIFOTYPE, ""),
                                  f"imagenet-r/{WNID}/chr.jpg": (tarfile.CHRTYPE, "")})
    files = fab.inr_files(tmp_path / "src" / "imagenet-r")
    tl = fab.write_lines(tmp_path / "train.txt", files[::2] + [f"{WNID}/{member}"])
    vl = fab.write_lines(tmp_path / "val.txt", files[1::2])
    before = fab.lstat_snapshot(tmp_path)
    r = fab.run_inprocess("split_imagenet_r.py", "--src", tar, "--dst", tmp_path / "out", "--train-list", tl,
                         "--val-list", vl)
    refused(r, f"{WNID}/{member}", f"train.txt:{len(files[::2]) + 1}", words, "not a regular file")
    assert fab.lstat_snapshot(tmp_path) == before


@pytest.mark.parametrize("link,words", [("../../../outside.jpg", "outside the destination"),
                                        ("/etc/hostname", "absolute path")])
def test_tar_hard_link_out_of_the_destination_is_refused_by_the_filter(tmp_path: Path, link: str, words: str) -> None:
    tar = _hostile_tar(tmp_path, {f"imagenet-r/{WNID}/hard.jpg": (tarfile.LNKTYPE, link)})
    before = fab.lstat_snapshot(tmp_path)
    r = fab.run_inprocess("split_imagenet_r.py", "--src", tar, "--dst", tmp_path / "out")
    refused(r, "safety filter", f"imagenet-r/{WNID}/hard.jpg", words)
    assert fab.lstat_snapshot(tmp_path) == before  # refused before anything was written: no --dst either


def test_tar_hard_link_to_a_fifo_member_never_lands_in_dst(tmp_path: Path) -> None:
    tar = _hostile_tar(tmp_path, {f"imagenet-r/{WNID}/fifo.jpg": (tarfile.FIFOTYPE, ""),
                                  f"imagenet-r/{WNID}/zz_link.jpg": (tarfile.LNKTYPE, f"imagenet-r/{WNID}/fifo.jpg")})
    r = fab.run_tool("split_imagenet_r.py", "--src", tar, "--dst", tmp_path / "out", timeout=FIFO_GUARD_S)
    refused(r, f"imagenet-r/{WNID}/zz_link.jpg")
    regular_files_only(tmp_path / "out")


def test_tar_hard_link_to_an_image_member_is_an_image(tmp_path: Path) -> None:
    """What tar makes of two equal files; extracted with the target's bytes, complete on a re-run."""
    tar = _hostile_tar(tmp_path, {f"imagenet-r/{WNID}/zz_dup.jpg": (tarfile.LNKTYPE, f"imagenet-r/{WNID}/art_0.jpg")})
    dst = tmp_path / "out"
    tl = fab.write_lines(tmp_path / "train.txt", [f"{WNID}/zz_dup.jpg", f"{WNID}/art_0.jpg"])
    vl = fab.write_lines(tmp_path / "val.txt", [f"{WNID}/cartoon_1.jpg"])
    args = ("--src", tar, "--dst", dst, "--train-list", tl, "--val-list", vl)
    assert fab.run_inprocess("split_imagenet_r.py", *args).returncode == 0
    out = dst / "train" / WNID / "zz_dup.jpg"
    assert out.read_bytes() == (tmp_path / "src" / "imagenet-r" / WNID / "art_0.jpg").read_bytes()
    r = fab.run_inprocess("split_imagenet_r.py", *args)
    assert r.returncode == 0 and "already complete" in r.stdout


def test_tar_filter_is_the_guarantee_even_for_a_planned_member(tmp_path: Path) -> None:
    """Extraction itself refuses what planning should never let through."""
    inr = tool_module("split_imagenet_r")
    pc = tool_module("_prep_common")
    tar_path = fab.tar_of(tmp_path / "evil.tar", {"imagenet-r/../../evil.jpg": b"evil",
                                                 f"imagenet-r/{WNID}/s.jpg": (tarfile.SYMTYPE, "/etc/passwd")})
    cdir = tmp_path / "dst" / "train" / WNID
    cdir.mkdir(parents=True)
    with tarfile.open(tar_path) as tar:
        for member in tar.getmembers():
            source = inr.TarMemberSource(tar, member, member.size, tar_path)
            with pytest.raises(pc.PrepError, match="safety filter") as exc:
                source.write(cdir / ".x.prep-tmp", "copy")
            assert member.name in str(exc.value)
    assert not list(tmp_path.rglob("evil.jpg")) and os.listdir(cdir) == []


# ---------------------------------------------------------------------------- list entries leaving --src
@pytest.fixture()
def inr_with_links(tmp_path: Path) -> tuple[Path, Path]:
    """An imagenet-r folder with a wnid folder and an image that are links out of it, and a link inside."""
    folder, _ = fab.make_imagenet_r(tmp_path / "src")
    outside = tmp_path / "outside"
    (outside / "n09999999").mkdir(parents=True)
    for i in range(3):
        fab.tiny_jpeg(outside / "n09999999" / f"x_{i}.jpg", 100 + i)
    fab.tiny_jpeg(outside / "secret.jpg", 99)
    os.symlink(outside / "n09999999", folder / "n09999999")
    os.symlink(outside / "secret.jpg", folder / WNID / "evil.jpg")
    os.symlink("art_0.jpg", folder / WNID / "alias.jpg")  # stays inside: an image like any other
    return folder, outside


@pytest.mark.parametrize("entry", ["n09999999/x_0.jpg", f"{WNID}/evil.jpg"])
def test_list_entry_through_a_link_out_of_src_is_refused(inr_with_links: tuple[Path, Path], tmp_path: Path,
                                                         entry: str) -> None:
    folder, outside = inr_with_links
    files = [f for f in fab.inr_files(folder) if not f.startswith("n09999999") and "evil" not in f]
    tl = fab.write_lines(tmp_path / "train.txt", files[::2])
    vl = fab.write_lines(tmp_path / "val.txt", files[1::2] + [entry])
    before = fab.lstat_snapshot(tmp_path)
    r = fab.run_inprocess("split_imagenet_r.py", "--src", folder, "--dst", tmp_path / "out", "--train-list", tl,
                         "--val-list", vl, "--mode", "copy")
    refused(r, entry, f"val.txt:{len(files[1::2]) + 1}", "leads outside --src", os.path.realpath(outside))
    assert fab.lstat_snapshot(tmp_path) == before


def test_seeded_split_skips_links_out_of_src(inr_with_links: tuple[Path, Path], tmp_path: Path) -> None:
    folder, outside = inr_with_links
    dst = tmp_path / "out"
    r = fab.run_inprocess("split_imagenet_r.py", "--src", folder, "--dst", dst)
    assert r.returncode == 0, r.stderr
    assert "skipped 4 image-named entries" in r.stderr and "leads outside --src" in r.stderr
    assert sorted(os.listdir(dst / "train")) == sorted(fab.INR_CLASSES)  # no n09999999
    assert json_images(dst) == {"train": 19, "val": 6}  # alias.jpg counts: 8 images in n01443537, 2 to val
    for link in (p for p in dst.rglob("*") if p.is_symlink()):
        assert Path(os.path.realpath(link)).is_relative_to(os.path.realpath(folder)), link


@pytest.mark.parametrize("line", ["../n01443537/art_0.jpg", "/etc/passwd.jpg", f"{WNID}/../../outside/secret.jpg",
                                  f"imagenet-r/../{WNID}/art_0.jpg"])
def test_list_entry_with_dots_or_absolute_path_is_malformed(inr_with_links: tuple[Path, Path], tmp_path: Path,
                                                            line: str) -> None:
    folder, _ = inr_with_links
    tl = fab.write_lines(tmp_path / "train.txt", [f"{WNID}/art_0.jpg", line])
    vl = fab.write_lines(tmp_path / "val.txt", [f"{WNID}/cartoon_1.jpg"])
    r = fab.run_inprocess("split_imagenet_r.py", "--src", folder, "--dst", tmp_path / "out", "--train-list", tl,
                         "--val-list", vl)
    refused(r, "malformed line 2", "train.txt")


@pytest.mark.parametrize("link", ["domain", "class", "file"])
def test_domainnet_entry_through_a_link_out_of_src_is_refused(tmp_path: Path, link: str) -> None:
    dn = fab.make_domainnet(tmp_path / "dn" / "domainnet")
    outside = tmp_path / "outside"
    outside.mkdir()
    name = fab.dn_file_name("clipart", 1, 0)
    if link == "domain":  # sketch -> outside/sketch
        (outside / "sketch" / "bee").mkdir(parents=True)
        (outside / "sketch" / "bee" / name).write_bytes(b"x")
        os.symlink(outside / "sketch", dn.root / "sketch")
        entry = f"sketch/bee/{name}"
    elif link == "class":  # real/owl -> outside/owl
        (outside / "owl").mkdir()
        (outside / "owl" / name).write_bytes(b"x")
        os.symlink(outside / "owl", dn.root / "real" / "owl")
        entry = f"real/owl/{name}"
    else:
        (outside / name).write_bytes(b"x")
        os.symlink(outside / name, dn.root / "real" / "bee" / "evil.jpg")
        entry = "real/bee/evil.jpg"
    label = 9 if link == "class" else 1
    tl = fab.write_lines(tmp_path / "train.txt", [f"clipart/bee/{name} 1", f"{entry} {label}"])
    vl = fab.write_lines(tmp_path / "val.txt", [f"real/bee/{fab.dn_file_name('real', 1, 4)} 1"])
    before = fab.lstat_snapshot(tmp_path)
    r = fab.run_inprocess("split_domainnet.py", "--src", dn.root, "--dst", tmp_path / "out", "--train-list", tl,
                         "--val-list", vl)
    refused(r, entry, "train.txt:2", "leads outside --src")
    assert fab.lstat_snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- links planted in --dst
@pytest.mark.parametrize("planted", ["train", "val", "class", "class_names.tsv", "prepare_info.json"])
def test_links_in_an_existing_dst_are_refused(tmp_path: Path, planted: str) -> None:
    dn = fab.make_domainnet(tmp_path / "dn" / "domainnet")
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "precious.txt").write_text("keep me\n")
    dst = tmp_path / "out"
    dst.mkdir()
    if planted in ("train", "val"):
        os.symlink(outside, dst / planted)
    elif planted == "class":
        (dst / "train").mkdir()
        os.symlink(outside, dst / "train" / "001")
    else:
        os.symlink(outside / "precious.txt", dst / planted)
    before = fab.lstat_snapshot(tmp_path)
    r = fab.run_inprocess("split_domainnet.py", "--src", dn.root, "--dst", dst, "--train-list", dn.subset_train,
                         "--val-list", dn.subset_val, "--mode", "copy")
    refused(r, "is a symbolic link", "nothing is written through links")
    assert fab.lstat_snapshot(tmp_path) == before and (outside / "precious.txt").read_text() == "keep me\n"


@pytest.mark.parametrize("planted", ["prepare_info.json", "class_names.tsv", "entry"])
def test_fifos_in_an_existing_dst_are_refused_without_reading_them(tmp_path: Path, planted: str) -> None:
    c = fab.make_cifar100(tmp_path / "src", num_classes=3)
    dst = tmp_path / "out"
    (dst / "train" / "00").mkdir(parents=True)
    fifo = dst / planted if planted != "entry" else dst / "train" / f"{c.train_labels[0]:02d}" / "0.png"
    fifo.parent.mkdir(parents=True, exist_ok=True)
    os.mkfifo(fifo)
    before = fab.lstat_snapshot(tmp_path)
    r = fab.run_tool("split_cifar100.py", "--src", c.folder, "--dst", dst, timeout=FIFO_GUARD_S)
    refused(r, str(fifo), "FIFO")
    assert fab.lstat_snapshot(tmp_path) == before


# ---------------------------------------------------------------------------- FIFOs and folders in the source
def test_fifo_among_imagenet_r_images_is_skipped_in_copy_mode(tmp_path: Path) -> None:
    folder, _ = fab.make_imagenet_r(tmp_path / "src")
    os.mkfifo(folder / WNID / "fifo.jpg")
    dst = tmp_path / "out"
    r = fab.run_tool("split_imagenet_r.py", "--src", folder, "--dst", dst, "--mode", "copy", timeout=FIFO_GUARD_S)
    assert r.returncode == 0, r.stderr
    assert f"{WNID}/fifo.jpg is a FIFO (named pipe) in --src, not a regular file" in r.stderr
    assert json_images(dst) == {"train": 19, "val": 5}
    regular_files_only(dst)


def test_listed_fifo_is_refused(tmp_path: Path) -> None:
    folder, _ = fab.make_imagenet_r(tmp_path / "src")
    os.mkfifo(folder / WNID / "fifo.jpg")
    tl = fab.write_lines(tmp_path / "train.txt", [f"{WNID}/art_0.jpg", f"{WNID}/fifo.jpg"])
    vl = fab.write_lines(tmp_path / "val.txt", [f"{WNID}/cartoon_1.jpg"])
    r = fab.run_inprocess("split_imagenet_r.py", "--src", folder, "--dst", tmp_path / "out", "--train-list", tl,
                         "--val-list", vl, "--mode", "copy")
    refused(r, f"{WNID}/fifo.jpg", "train.txt:2", "is a FIFO (named pipe)", "not a regular file")
    dn = fab.make_domainnet(tmp_path / "dn" / "domainnet")
    os.mkfifo(dn.root / "real" / "cat" / "real_fifo.jpg")
    tl = fab.write_lines(tmp_path / "dn_train.txt", ["real/cat/real_fifo.jpg 2"])
    r = fab.run_tool("split_domainnet.py", "--src", dn.root, "--dst", tmp_path / "out", "--mode", "copy",
                    "--train-list", tl, "--val-list", dn.official_test[0], timeout=FIFO_GUARD_S)
    refused(r, "real/cat/real_fifo.jpg", "dn_train.txt:1", "FIFO")
    assert not (tmp_path / "out").exists()


def test_cifar_pickle_that_is_a_fifo_is_refused(tmp_path: Path) -> None:
    c = fab.make_cifar100(tmp_path / "src", num_classes=3)
    (c.folder / "test").unlink()
    os.mkfifo(c.folder / "test")
    r = fab.run_tool("split_cifar100.py", "--src", c.folder, "--dst", tmp_path / "out", timeout=FIFO_GUARD_S)
    refused(r, str(c.folder / "test"), "is a FIFO (named pipe), not a pickle file")


@pytest.mark.parametrize("what", ["src-fifo", "src-file-for-domainnet", "list-folder", "list-fifo"])
def test_src_or_list_of_the_wrong_kind(tmp_path: Path, what: str) -> None:
    dn = fab.make_domainnet(tmp_path / "dn" / "domainnet")
    src, lists = dn.root, [dn.subset_train, dn.subset_val]
    if what == "src-fifo":
        src = tmp_path / "pipe"
        os.mkfifo(src)
        words = ["--src", "is a FIFO (named pipe), not a folder or an archive file"]
    elif what == "src-file-for-domainnet":
        src = dn.subset_train
        words = ["--src", "is not a folder"]
    elif what == "list-folder":
        lists[0] = dn.root / "real"
        words = ["list file", "real is a folder, not a text file"]
    else:
        lists[1] = tmp_path / "val_pipe.txt"
        os.mkfifo(lists[1])
        words = ["list file", "val_pipe.txt is a FIFO (named pipe), not a text file"]
    r = fab.run_tool("split_domainnet.py", "--src", src, "--dst", tmp_path / "out", "--train-list", lists[0],
                    "--val-list", lists[1], timeout=FIFO_GUARD_S)
    refused(r, *words)
    assert not (tmp_path / "out").exists()
