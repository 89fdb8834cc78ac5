"""tools/benchmark.py refuses bad arguments up front: one ``error:`` line on stderr, exit
status 2, no traceback, nothing measured (no output on stdout) and nothing written."""
from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.test_bad_input import _benchmark_inprocess, _tree


def _bench(args: list[str]) -> subprocess.CompletedProcess:
    return _benchmark_inprocess(args, Path.cwd())


BAD = {  # case -> (arguments (tmp -> list), words the error line must contain)
    "kwargs_not_json": (lambda t: ["--model-kwargs", "{bad"], ["--model-kwargs '{bad'", "not valid JSON"]),
    "kwargs_not_an_object": (lambda t: ["--model-kwargs", "[1]"], ["--model-kwargs", "JSON object", "list"]),
    "kwargs_rejected": (lambda t: ["--model-kwargs", '{"foo": 1}'], ["rejects", "foo", "--model-kwargs"]),
    "kwargs_sets_img_size": (lambda t: ["--model-kwargs", '{"img_size": 32}'], ["img_size", "--img-size"]),
    "device_banana": (lambda t: ["--device", "banana"], ["--device 'banana'", "cpu, cuda or cuda:N"]),
    "device_not_cpu_or_cuda": (lambda t: ["--device", "meta"], ["--device 'meta'", "cpu or cuda"]),
    "img_size_too_small": (lambda t: ["--img-size", "7"], ["7x7", "--img-size"]),
    "img_size_not_a_patch_multiple": (lambda t: ["--img-size", "24"],
                                      ["--img-size 24 is not a multiple of the patch size 16"]),
    "json_is_a_folder": (lambda t: ["--json", t / "run"], ["--json", "run is a folder"]),
    "json_under_a_file": (lambda t: ["--json", t / "file.txt" / "x.json"],
                          ["--json", "lies under", "file.txt, which is a file"]),
    "data_sizes_malformed": (lambda t: ["--data-only", "--data-sizes", "foo"],
                             ["--data-sizes entry 'foo'", "WxH.ext"]),
    "data_sizes_format": (lambda t: ["--data-only", "--data-sizes", "8x8.png,8x8.gif"],
                          ["'8x8.gif'", "jpg, jpeg, png"]),
    "data_only_and_skip_data": (lambda t: ["--data-only", "--skip-data"], ["contradict"]),
}
if not torch.cuda.is_available():
    BAD["device_cuda_absent"] = (lambda t: ["--device", "cuda"], ["CUDA is not available"])


@pytest.mark.parametrize("case", list(BAD))
def test_bad_argument_is_one_error_line_before_measuring(tmp_path, case):
    make_args, words = BAD[case]
    (tmp_path / "file.txt").write_text("a file\n")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("must survive\n")
    before = _tree(tmp_path)
    proc = _bench([str(a) for a in make_args(tmp_path)])
    assert proc.returncode == 2, (proc.returncode, proc.stderr[-3000:])
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), proc.stderr[-3000:]
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert proc.stdout == ""  # nothing was measured or printed
    assert _tree(tmp_path) == before


def test_json_into_a_missing_folder_is_created_at_the_end(tmp_path):
    """The up-front check accepts a --json path whose folders do not exist yet; they are made
    when the figures are written."""
    out = tmp_path / "new" / "sub" / "r.json"
    proc = _bench(["--data-only", "--data-sizes", "8x8.png", "--data-images", "2", "--data-steps", "1",
                   "--img-size", "8", "--device", "cpu", "--json", str(out)])
    assert proc.returncode == 0, proc.stderr[-3000:]
    data = json.loads(out.read_text())["data"]
    assert list(data) == ["8x8.png"] and data["8x8.png"]["images"] == 2 and data["8x8.png"]["size"] == [8, 8]
