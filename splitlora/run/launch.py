"""Launching a suite's runs: on this machine, or on a Slurm cluster through submitit.

Either way a run is one ``main.py`` command, its output appended to ``<run dir>/console.txt``
with a last line saying how it ended. Local runs end with this process, however it ends."""
import contextlib
import ctypes
import errno
import os
import shlex
import signal
import subprocess
import sys
import time
from collections import deque
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from .fileio import open_append_no_follow, read_json, write_json_atomic
from .rundir import LOCK, read_config, run_status

REPO = Path(__file__).resolve().parents[2]
EXIT_LINE = "[reproduce] main.py exited with status "
TO_RUN = ("missing", "stopped", "failed")


@dataclass
class Run:
    """One run of a suite: a setting, a method and a seed in ``out_dir``."""

    setting: str
    method: str
    seed: int
    config: Path
    out_dir: Path
    overrides: list[str]
    paper: dict = field(default_factory=dict)
    data_root: Optional[Path] = None
    gpus: int = 1  # data-parallel processes (GPUs) of the run
    status: str = "missing"
    detail: str = ""

    @property
    def name(self) -> str:
        return f"{self.setting}/{self.method}/seed{self.seed}"

    def command(self) -> list[str]:
        torchrun = ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                    str(self.gpus)] if self.gpus > 1 else []
        return [sys.executable, *torchrun, str(REPO / "main.py"), "--config", str(self.config),
                "--seed", str(self.seed), "--output", str(self.out_dir), "--no-progress",
                *[x for o in self.overrides for x in ("--set", o)]]


def is_running(run_dir: Path) -> bool:
    """Whether a live process holds the run directory's lock (nothing is created)."""
    import fcntl
    try:
        fd = os.open(Path(run_dir) / LOCK, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        return False
    except OSError as exc:
        return exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES)
    finally:
        os.close(fd)


def last_exit(run_dir: Path) -> Optional[int]:
    """The exit status the launcher recorded for the run's last session (None if none)."""
    try:
        with open(Path(run_dir) / "console.txt", "rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - 65536))
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines()
                     if ln.startswith(EXIT_LINE)]
    except OSError:
        return None
    return int(lines[-1][len(EXIT_LINE):].split()[0]) if lines else None


def update_states(plan: list[Run], queued: dict[str, str], slurm: Optional[Path] = None) -> None:
    """Each run's state from its directory: done, conflict, running (lock held), queued (Slurm),
    failed (``detail`` names the log that says why), stopped (resumable) or missing."""
    from .config import load_config
    jobs = read_json(slurm / "jobs.json") if slurm else {}
    for run in plan:
        cfg = load_config(run.config, run.overrides + [f"seed={run.seed}"])
        run.method, run.status = cfg.method.name, run_status(run.out_dir, cfg)
        run.detail = "holds complete results of another config" if run.status == "conflict" else ""
        if run.status != "missing":
            continue
        code, job = last_exit(run.out_dir), jobs.get(str(run.out_dir))
        job_log = slurm / job / f"{job}_0_log.out" if job else None
        text = job_log.read_text(errors="replace") if job_log and job_log.is_file() else ""
        if is_running(run.out_dir):
            run.status = "running"
        elif str(run.out_dir) in queued:
            run.status, run.detail = "queued", f"Slurm job {queued[str(run.out_dir)]}"
        elif code not in (None, 0, 130, -signal.SIGTERM, 128 + signal.SIGTERM):
            run.status, run.detail = "failed", f"exit {code}; see {run.out_dir / 'console.txt'}"
        elif NOT_REQUEUED in text or code is None and "Traceback" in text:
            run.status, run.detail = "failed", f"Slurm job {job} failed; see {job_log}"
        elif code is not None or read_config(run.out_dir / "config.yaml") is not None:
            run.status = "stopped"


def _die_with_parent() -> None:
    """In a child, before exec: SIGTERM when the parent dies, however it dies (Linux)."""
    with contextlib.suppress(OSError, AttributeError):  # elsewhere runs may outlive a killed parent
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def start(command: list[str], run_dir: Path, env: dict) -> tuple[subprocess.Popen, object]:
    """Start a run's main.py, its output appended to its console.txt (never through a link)."""
    run_dir.mkdir(parents=True, exist_ok=True)
    console = open_append_no_follow(run_dir / "console.txt")
    console.write(f"[reproduce] {time.strftime('%Y-%m-%dT%H:%M:%S')} start\n")
    console.flush()
    return subprocess.Popen(command, stdout=console, stderr=subprocess.STDOUT, env=env,
                            start_new_session=True, preexec_fn=_die_with_parent), console


def finish(console, code: int) -> None:
    console.write(f"{EXIT_LINE}{code}\n")
    console.close()


class SignalRelay:
    """While active, SIGINT, SIGTERM and SIGHUP are recorded, not stopping this process (unless
    ignored at start): the runs can be told and waited for."""

    def __init__(self) -> None:
        self.received: list[int] = []
        self._previous: dict[int, object] = {}

    def __enter__(self) -> "SignalRelay":
        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
            if signal.getsignal(sig) is not signal.SIG_IGN:  # e.g. under nohup
                self._previous[sig] = signal.signal(sig, lambda s, f: self.received.append(s))
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def cuda_visible(slot: str) -> str:
    """CUDA_VISIBLE_DEVICES for a run on ``slot``, through this process's own when set."""
    parent = os.environ.get("CUDA_VISIBLE_DEVICES")
    if parent is None:
        return slot
    entries = [e.strip() for e in parent.split(",")]
    return ",".join(entries[int(i)] if int(i) < len(entries) else i for i in slot.split(","))


def run_local(plan: list[Run], slots: list[str], relay: SignalRelay) -> Optional[int]:
    """Run the plan's runs to run, one per slot at a time; returns the stop signal (or None):
    the running runs get it (SIGHUP as SIGTERM), a second signal kills them."""
    todo = deque(r for r in plan if r.status in TO_RUN)
    live: dict[int, tuple[Run, subprocess.Popen, object, float]] = {}
    stopped_by: Optional[int] = None
    while todo or live:
        if relay.received and stopped_by is None:
            stopped_by = relay.received[0]
            for _, proc, _, _ in live.values():
                proc.send_signal(signal.SIGTERM if stopped_by == signal.SIGHUP else stopped_by)
            print(f"received {signal.Signals(stopped_by).name}: no new run starts; waiting for "
                  f"{len(live)} run(s) to stop (a second kills them)", file=sys.stderr, flush=True)
        elif len(relay.received) > 1:
            for _, proc, _, _ in live.values():
                proc.kill()
        for i in [i for i in range(len(slots)) if i not in live]:
            if not todo or stopped_by is not None:
                break
            run, env = todo.popleft(), dict(os.environ)
            if is_running(run.out_dir):  # e.g. another reproduce.py on the same output
                print(f"[running] {run.name} is held by another process; not started", flush=True)
                continue
            if slots[i] != "cpu":
                env["CUDA_VISIBLE_DEVICES"] = cuda_visible(slots[i])
            elif len(slots) > 1:  # share the cores between concurrent CPU runs
                env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // len(slots)))
            print(f"[start] {run.name} on {'cpu' if slots[i] == 'cpu' else 'cuda:' + slots[i]} "
                  f"-> {run.out_dir}", flush=True)
            live[i] = (run, *start(run.command(), run.out_dir, env), time.time())
        for i, (run, proc, console, t0) in list(live.items()):
            if proc.poll() is None:
                continue
            finish(console, proc.returncode)
            del live[i]
            done = proc.returncode == 0 and read_json(run.out_dir / "metrics.json").get("complete")
            run.status = "done" if done else "interrupted" if stopped_by else "failed"
            print(f"[{run.status}] {run.name} in {(time.time() - t0) / 60:.1f} min"
                  + ("" if done else " (resumes from its last completed task)" if stopped_by
                     else f" (exit {proc.returncode}; see {run.out_dir / 'console.txt'})"),
                  flush=True)
        time.sleep(0.1)
    return stopped_by


NOT_REQUEUED = "not requeued:"


class MainJob:
    """A Slurm job's body: one ``main.py`` command. :meth:`checkpoint` (time limit, preemption)
    requeues it unless three attempts in a row completed no task; a failed run raises."""

    def __init__(self, idle_attempts: int = 0) -> None:
        self.idle_attempts = idle_attempts

    @staticmethod
    def _tasks_done(run_dir: str) -> int:
        return int(read_json(Path(run_dir) / "metrics.json").get("tasks_done") or 0)

    def __call__(self, command: list[str], run_dir: str) -> int:
        self.tasks_at_start = self._tasks_done(run_dir)
        env = dict(os.environ)
        if os.environ.get("SLURM_CPUS_PER_TASK"):
            env.setdefault("OMP_NUM_THREADS", os.environ["SLURM_CPUS_PER_TASK"])
        # Slurm signals every process of the job: main.py must not die of submitit's SIGUSR2
        old = signal.signal(signal.SIGUSR2, signal.SIG_IGN)
        proc, console = start(command, Path(run_dir), env)
        signal.signal(signal.SIGUSR2, old)
        try:
            proc.wait()
        finally:  # a requeue exits this process: main.py stops cleanly first (SIGTERM)
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout=120)
                except subprocess.TimeoutExpired:
                    proc.kill()
            finish(console, proc.wait())
        if proc.returncode != 0:
            raise RuntimeError(f"main.py exited with status {proc.returncode}; see "
                               f"{run_dir}/console.txt")
        return 0

    def checkpoint(self, command: list[str], run_dir: str):
        import submitit
        idle = 0 if self._tasks_done(run_dir) > self.tasks_at_start else self.idle_attempts + 1
        if idle >= 3:
            print(f"{NOT_REQUEUED} three attempts in a row completed no task of {run_dir} (is the "
                  "time limit shorter than one task?)", file=sys.stderr, flush=True)
            return None
        return submitit.helpers.DelayedSubmission(MainJob(idle), command, run_dir)


def slurm_minutes(text: str) -> int:
    """Minutes (>= 1) of a Slurm time (M, M:S, H:M:S, D-H, D-H:M, D-H:M:S); else ValueError."""
    days, dash, rest = text.partition("-") if "-" in text else ("0", "", text)
    parts = [int(p) for p in rest.split(":")]
    if len(parts) > 3 or min(parts + [int(days)]) < 0:
        raise ValueError(text)
    if dash:  # D-H[:M[:S]]
        h, m, s = (parts + [0, 0])[:3]
    else:  # M, M:S or H:M:S
        h, m, s = parts if len(parts) == 3 else (0, *(parts + [0])[:2])
    return max(1, int(days) * 1440 + h * 60 + m + (s + 59) // 60)


def submit_slurm(plan: list[Run], folder: Path, options: dict) -> dict[str, str]:
    """One job array of the runs to run; {run dir: job id}, also merged into ``jobs.json``."""
    import submitit
    todo = [r for r in plan if r.status in TO_RUN]
    executor = submitit.SlurmExecutor(folder=folder / "%j", max_num_timeout=1000)
    path = os.pathsep.join(p for p in (str(REPO), os.environ.get("PYTHONPATH")) if p)
    executor.update_parameters(setup=[f"export PYTHONPATH={shlex.quote(path)}"], **options)
    jobs = executor.map_array(MainJob(), [r.command() for r in todo],
                              [str(r.out_dir) for r in todo]) if todo else []
    ids = {str(r.out_dir): j.job_id for r, j in zip(todo, jobs)}
    write_json_atomic(folder / "jobs.json", dict(read_json(folder / "jobs.json"), **ids))
    return ids


def slurm_queue(folder: Path) -> dict[str, str]:
    """{run dir: job id} of this output's jobs that Slurm still holds (pending or running)."""
    jobs = read_json(folder / "jobs.json")
    try:
        out = subprocess.run(["squeue", "-h", "-r", "-o", "%i", "-j", ",".join(set(jobs.values()))],
                             capture_output=True, text=True, timeout=60).stdout.split() if jobs else []
    except (OSError, subprocess.SubprocessError):
        return {}
    return {d: j for d, j in jobs.items() if j in out}
