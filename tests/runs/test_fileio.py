"""Files the project reads and writes (splitlora/run/fileio.py): atomic writes that leave the
old file on failure and never follow a link, reads of regular files only and of bounded size,
output paths refused before any work when they cannot be written."""
from __future__ import annotations

import os

import pytest

from splitlora.run.fileio import WriteError
from splitlora.run.fileio import (atomic_write_bytes, check_output_dir, open_append_no_follow,
                                  read_json, read_regular_file)


def test_output_names_too_long_for_a_file_system_are_refused(tmp_path):
    with pytest.raises(WriteError, match="256 characters long"):
        check_output_dir(tmp_path / ("o" * 256) / "run")
    check_output_dir(tmp_path / ("o" * 255))  # the longest allowed name


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "f.json"
    atomic_write_bytes(path, b"old")

    def full_disk():
        raise OSError(28, "No space left on device")
    with pytest.raises(WriteError, match="cannot write .*f.json: No space left on device"):
        atomic_write_bytes(path, b"new", before_replace=full_disk)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]


def test_an_atomic_write_replaces_a_link_instead_of_following_it(tmp_path):
    target = tmp_path / "outside.txt"
    target.write_text("keep")
    (tmp_path / "f.txt").symlink_to(target)
    atomic_write_bytes(tmp_path / "f.txt", b"mine")
    assert target.read_text() == "keep" and not (tmp_path / "f.txt").is_symlink()
    (tmp_path / "log.txt").symlink_to(target)
    with pytest.raises(WriteError, match="symbolic link"):
        open_append_no_follow(tmp_path / "log.txt")


def test_reads_accept_regular_files_of_bounded_size_only(tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="named pipe"):
        read_regular_file(fifo, "config", 100, ValueError)
    with pytest.raises(ValueError, match="is a directory"):
        read_regular_file(tmp_path, "config", 100, ValueError)
    (tmp_path / "big").write_bytes(b"x" * 101)
    with pytest.raises(ValueError, match="101 bytes, more than the 100"):
        read_regular_file(tmp_path / "big", "config", 100, ValueError)
    (tmp_path / "list.json").write_text("[1]")
    assert read_json(tmp_path / "list.json") == {} and read_json(tmp_path / "absent") == {}
