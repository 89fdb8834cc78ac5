"""Sequential LoRA (baseline ``seq_lora``): a fresh Kaiming A and a zero B for every task, B
trained and merged, nothing split. It is the lifecycle of :class:`splitlora.learner.Learner`
without changes."""
from ..learner import Learner


class SequentialLoRA(Learner):
    """Every task gets a fresh Kaiming-uniform A; no subspace is kept for the old tasks."""
