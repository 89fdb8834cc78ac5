"""Class-incremental metrics from per-task correct/total counts (docs/protocol.md). R[t, j] =
accuracy (%) on task j's val set after task t; Acc_t = sample-weighted accuracy over tasks 0..t;
final = Acc_{T-1}; average incremental = mean_t Acc_t; forgetting: see :func:`forgetting`."""

from typing import Optional

import numpy as np


class AccuracyTracker:
    """Accumulates correct / total counts per (trained task t, evaluated task j)."""

    def __init__(self, num_tasks: int) -> None:
        self.num_tasks = num_tasks
        self.correct = np.full((num_tasks, num_tasks), -1, dtype=np.int64)
        self.total = np.full((num_tasks, num_tasks), -1, dtype=np.int64)

    def update(self, t: int, j: int, correct: int, total: int) -> None:
        if j > t:
            raise ValueError(f"task {j} cannot be evaluated after training only up to task {t}")
        self.correct[t, j], self.total[t, j] = correct, total

    def tasks_done(self) -> int:
        """Number of leading rows fully evaluated."""
        return next((t for t in range(self.num_tasks) if (self.total[t, : t + 1] < 0).any()),
                    self.num_tasks)

    def acc_matrix(self) -> list[list[Optional[float]]]:
        """T x T accuracy in percent, None above the diagonal and for rows not reached."""
        n = self.num_tasks
        return [[None if j > t or self.total[t, j] <= 0
                 else 100.0 * self.correct[t, j] / self.total[t, j] for j in range(n)]
                for t in range(n)]

    def acc_after_task(self) -> list[float]:
        """Acc_t (sample-weighted over tasks 0..t) for every completed t, percent."""
        return [100.0 * self.correct[t, : t + 1].sum() / max(self.total[t, : t + 1].sum(), 1)
                for t in range(self.tasks_done())]

    def summary(self) -> dict:
        """Metrics after the last completed task (final = Acc of that task)."""
        accs = self.acc_after_task()  # one per completed task
        return {"acc_matrix": self.acc_matrix(), "acc_per_task": accs,
                "final_acc": accs[-1] if accs else None,
                "avg_inc_acc": float(np.mean(accs)) if accs else None,
                "forgetting": forgetting(self.acc_matrix(), len(accs) - 1) if accs else None,
                "eval_counts": self.state_dict()}

    def state_dict(self) -> dict:
        return {"correct": self.correct.tolist(), "total": self.total.tolist()}

    def load_state_dict(self, state: dict) -> None:
        self.correct = np.asarray(state["correct"], dtype=np.int64)
        self.total = np.asarray(state["total"], dtype=np.int64)


def forgetting(matrix: list[list[Optional[float]]], last: int) -> Optional[float]:
    """Mean over j < last of max_{t in [j, last]} R[t][j] - R[last][j]; None when ``last`` is 0."""
    if last <= 0:
        return None
    drops = [max(matrix[t][j] for t in range(j, last + 1)) - matrix[last][j] for j in range(last)]
    return float(np.mean(drops))


def format_matrix(matrix: list[list[Optional[float]]]) -> str:
    """The accuracy matrix as aligned text (rows: after task t, columns: task j)."""
    lines = ["after \\ task " + " ".join(f"{j:>6d}" for j in range(len(matrix)))]
    for t, row in enumerate(matrix):
        cells = " ".join(f"{v:6.2f}" if v is not None else "     -" for v in row)
        lines.append(f"{t:>12d} {cells}")
    return "\n".join(lines)
