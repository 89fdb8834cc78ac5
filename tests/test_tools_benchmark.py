"""tools/benchmark.py refuses bad arguments up front: one ``error:`` line on stderr, exit
status 2, no traceback, nothing measured (no output on stdout) and nothing written."""
from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import subprocess
from pathlib import Path

import pytest
import torch

from tests.conftest import REPO


def _bench(args: list[str]) -> subprocess.CompletedProcess:
    """benchmark.py's main() in this process (its torch import is most of a subprocess)."""
    spec = importlib.util.spec_from_file_location("bench_tool_args", REPO / "tools" / "benchmark.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            code = module.main(args)
        except SystemExit as exc:
            code = exc.code
    return subprocess.CompletedProcess(args, code, out.getvalue(), err.getvalue())


def _tree(folder: Path) -> dict[str, bytes | None]:
    return {str(p.relative_to(folder)): (p.read_bytes() if p.is_file() else None)
            for p in sorted(folder.rglob("*"))}


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
