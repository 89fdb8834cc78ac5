"""Linear probing (lower bound ``linear_probe``): the backbone stays frozen and only each
task's head trains (no adapters)."""
from ..learner import Learner, Task


class LinearProbe(Learner):
    """Only the task's head trains; the adapters stay inactive."""

    def before_task(self, task: Task) -> None:
        self.seed_task(task.index)
        self.model.heads.add_head(task.num_classes, self.head_init).to(self.device)

    def trainable(self, task: int) -> tuple[list, list]:
        return [], list(self.model.heads.heads[task].parameters())
