"""The ROOT/train/<class>/, ROOT/val/<class>/ layout (datasets/folder.py, benchmarks.py):
which entries are classes and images, and a prepared dataset whose links point to a source
that has moved, refused when the data is checked rather than at the first read."""
from __future__ import annotations

import pytest
from PIL import Image

from datasets import DataError, build_benchmark
from datasets.folder import list_class_dirs, list_images
from tests.helpers import make_config


def test_hidden_folders_are_not_classes_and_folders_are_not_images(tmp_path):
    split = tmp_path / "train"
    for name in ("cat", "dog", ".ipynb_checkpoints", ".hidden"):
        (split / name).mkdir(parents=True)
    Image.new("RGB", (8, 8)).save(split / "cat" / "0.jpg")
    (split / "cat" / "dir.jpg").mkdir()  # a folder with an image's name
    (split / "cat" / ".1.jpg").write_bytes(b"hidden")
    (split / "cat" / "notes.txt").write_text("not an image")
    (split / "cat" / "gone.jpg").symlink_to(tmp_path / "moved.jpg")  # broken: validation reports it
    assert list_class_dirs(split) == ["cat", "dog"]
    assert list_images(split / "cat") == ["0.jpg", "gone.jpg"]


def test_dataset_linking_to_a_moved_source_is_refused_at_validation(tmp_path):
    source, root = tmp_path / "source", tmp_path / "prepared"
    for split in ("train", "val"):
        for c in ("a", "b"):
            (source / split / c).mkdir(parents=True)
            (root / split / c).mkdir(parents=True)
            for i in range(2):
                Image.new("RGB", (8, 8), (60 * i, 90, 30)).save(source / split / c / f"{i}.png")
                (root / split / c / f"{i}.png").symlink_to(source / split / c / f"{i}.png")
    cfg = make_config({"dataset": {"name": "folder", "root": str(root), "num_tasks": 1}}).dataset
    assert build_benchmark(cfg, 16).num_classes == 2
    source.rename(tmp_path / "moved")
    with pytest.raises(DataError) as err:
        build_benchmark(cfg, 16)
    for w in ("4 symbolic link(s) in train/", "train/a/0.png ->", "moved or been deleted"):
        assert w in str(err.value), w
    link = tmp_path / "link_root"  # the root itself a link to a folder that moved
    link.symlink_to(tmp_path / "source")
    cfg = make_config({"dataset": {"name": "folder", "root": str(link), "num_tasks": 1}}).dataset
    with pytest.raises(DataError, match="symbolic link to .*source, which does not exist"):
        build_benchmark(cfg, 16)


def test_class_ids_follow_the_sorted_folder_names(tmp_path):
    for split in ("train", "val"):
        for c in ("zebra", "ant", "Moth"):
            (tmp_path / split / c).mkdir(parents=True)
            Image.new("RGB", (8, 8)).save(tmp_path / split / c / "0.png")
    cfg = make_config({"dataset": {"name": "folder", "root": str(tmp_path), "num_tasks": 1,
                                   "shuffle_classes": False}}).dataset
    with pytest.raises(DataError, match="leaves 1 class per task|at most"):
        build_benchmark(make_config({"dataset": {"name": "folder", "root": str(tmp_path),
                                                 "num_tasks": 3}}).dataset, 16)
    bench = build_benchmark(cfg, 16)
    assert bench.classes == sorted(["zebra", "ant", "Moth"])
    assert bench.identity(bench.tasks(1, 0, False))["task_classes"] == [bench.classes]
