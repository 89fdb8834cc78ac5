"""tools/gpu_check.py in its --dry form: every part's code path at tiny scale on the CPU, the
projection computed from the measured figures, one failing part reported while the rest run."""
from __future__ import annotations

import json
import os
import time

import pytest

from tools import gpu_check


@pytest.fixture(scope="module")
def dry(tmp_path_factory):
    work = tmp_path_factory.mktemp("gpu_check")
    out = work / "dry.json"
    code = gpu_check.main(["--dry", "--in-process", "--out", str(out), "--workdir", str(work / "w")])
    return code, json.loads(out.read_text())


def test_dry_run_runs_every_part_and_writes_their_figures(dry):
    code, r = dry
    failed = {n: r[n].get("error") for n in gpu_check.PART_NAMES if r[n]["status"] != "ok"}
    assert code == 0 and not failed, failed
    assert r["nccl"]["backend"] == "gloo" and r["nccl"]["world_size"] == 1
    paths = r["cuda_paths"]
    assert paths["normalize_on_device"]["bitwise_equal"]
    assert paths["passes"] == {"eval_total": 40, "cov_images": 40, "ok": True}
    assert paths["covariance"]["tokens"] == paths["covariance"]["rows_ref"] == 3 * 8 * 17
    for name in ("bench_fp16", "bench_bf16", "bench_tf32", "bench_fp16_compile"):
        assert set(r[name]["img_per_s"]) == set("abcd") and r[name]["batch_size"] == 2
    assert r["bench_bf16"]["amp"] == "bf16" and r["bench_fp16_compile"]["compile"] is True
    # the decode cache of the data part holds exactly the pixels of its 2 x 4 images
    assert r["data"]["500x375.jpg"]["cache_on"]["cache_bytes"] == 2 * 4 * 500 * 375 * 3
    assert r["data"]["500x375.jpg"]["cache_off"]["train_images"] == 2 * 4 * 2 * 2  # x expand x epochs
    run = r["main_run"]
    assert len(run["task_seconds"]) == 2 and run["train_images"] == 2 * (20 * 2)  # 2 tasks, 2 epochs
    assert run["data_loading"]["train_workers"] == 1


def test_projection_is_the_published_work_at_the_measured_rates(dry):
    _, r = dry
    row = r["projection"]["imagenet_r_10"]
    # ImageNet-R 10 tasks: 24,000 training images x 10 copies x 10 epochs; covariance after 9
    # of 10 tasks on 10 copies; 6,000 val images evaluated after each task on the seen ones
    assert (row["train_samples"], row["cov_samples"], row["eval_samples"]) == (2_400_000, 216_000, 33_000)
    train_rate = min(r["bench_fp16"]["img_per_s"]["b"],
                     r["data"]["500x375.jpg"]["cache_on"]["train_img_per_s"])
    cov_rate = min(r["bench_tf32"]["img_per_s"]["c"],
                   r["data"]["500x375.jpg"]["cache_on"]["train_img_per_s"])
    eval_rate = min(r["bench_fp16"]["img_per_s"]["d"],
                    r["data"]["500x375.jpg"]["cache_on"]["eval_img_per_s"])
    overhead = sum(r["main_run"]["overhead_s_per_task"]) / 2 * 10
    want = (2_400_000 / train_rate + 216_000 / cov_rate + 33_000 / eval_rate + overhead) / 60
    assert row["projected_min"] == pytest.approx(want, rel=1e-9)
    cifar = r["projection"]["cifar100_10"]
    assert (cifar["train_samples"], cifar["cov_samples"], cifar["eval_samples"]) == (5_000_000, 450_000, 55_000)
    assert r["projection"]["domainnet_5"]["cov_samples"] == 380_256
    loader = r["data"]["500x375.jpg"]["cache_on"]["train_img_per_s"]
    assert r["bound"]["500x375.jpg"]["bound"] == ("data" if loader < r["bench_fp16"]["img_per_s"]["b"]
                                                 else "GPU")


def test_a_failing_part_is_reported_and_the_others_still_run(tmp_path, monkeypatch):
    monkeypatch.setenv(gpu_check.FAIL_ENV, "cuda_paths")
    out = tmp_path / "r.json"
    code = gpu_check.main(["--dry", "--in-process", "--parts", "env,cuda_paths,data", "--out",
                           str(out), "--workdir", str(tmp_path / "w")])
    r = json.loads(out.read_text())
    assert code == 1
    assert r["cuda_paths"]["status"] == "error" and "injected" in r["cuda_paths"]["error"]
    assert r["env"]["status"] == "ok" and r["data"]["status"] == "ok"
    # nothing measured for the projection: each setting names what is missing
    assert "gpu train" in r["projection"]["imagenet_r_10"]["unmeasured"]


def test_parts_run_in_their_own_process_and_overruns_are_killed(tmp_path):
    part = {p.name: p for p in gpu_check.PARTS}["env"]
    ctx = gpu_check.Context(True, "cpu", tmp_path, budget=120)
    r = gpu_check.run_part(part, ctx, in_process=False)  # a child process, as on the GPU
    assert r["status"] == "ok" and r["device"] == "cpu" and r["cpus_usable"] >= 1
    # a command past its time is killed with its whole process group (children included)
    pid_file = tmp_path / "pid"
    with pytest.raises(TimeoutError):
        gpu_check._run(["sh", "-c", f"sleep 600 & echo $! > {pid_file}; wait"], timeout=2.0)
    pid = int(pid_file.read_text())
    for _ in range(100):  # SIGKILL lands asynchronously
        if not _running(pid):
            break
        time.sleep(0.1)
    assert not _running(pid)


def _running(pid: int) -> bool:
    """True while ``pid`` exists and is not a zombie waiting to be reaped."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.mark.parametrize("case", ["out_is_a_folder", "out_under_a_file", "time_limit_negative",
                                  "time_limit_zero", "time_limit_below_one_part"])
def test_bad_out_or_time_limit_is_refused_before_any_part_runs(tmp_path, capsys, case):
    (tmp_path / "file.txt").write_text("a file\n")
    (tmp_path / "folder").mkdir()
    args, words = {
        "out_is_a_folder": (["--out", str(tmp_path / "folder")], ["--out", "folder is a folder"]),
        "out_under_a_file": (["--out", str(tmp_path / "file.txt" / "x.json")],
                             ["--out", "lies under", "file.txt, which is a file"]),
        "time_limit_negative": (["--time-limit", "-5"], ["--time-limit", "got -5"]),
        "time_limit_zero": (["--time-limit", "0"], ["--time-limit", "got 0"]),
        "time_limit_below_one_part": (["--time-limit", "12"], ["at least 13 seconds", "got 12"]),
    }[case]
    out = [] if "--out" in args else ["--out", str(tmp_path / "r.json")]
    code = gpu_check.main(["--dry", "--in-process", "--parts", "env", "--workdir",
                           str(tmp_path / "w"), *args, *out])
    captured = capsys.readouterr()
    assert code == 2
    lines = captured.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error:"), captured.err
    for w in words:
        assert w in lines[0], (w, lines[0])
    assert captured.out == ""  # no part ran
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file.txt", "folder"]
    assert not any((tmp_path / "folder").iterdir())
