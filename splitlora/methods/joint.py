"""Joint training (upper bound ``joint``): every class in one task, trained with the same LoRA
placement and per-image budget (epochs x expand_times) and one head."""
from ..learner import Learner


class Joint(Learner):
    """Sequential LoRA over a single task holding every class (the run reads ``single_task``)."""

    single_task = True
