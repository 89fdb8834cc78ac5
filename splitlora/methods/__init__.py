"""The methods, one file each, registered by name (``method.name``).

A new method is a file here holding a :class:`splitlora.learner.Learner` subclass (its
hyper-parameters in a ``Params`` dataclass, the config section ``method.<name>``) and one line
in :data:`METHODS` (docs/extending.md walks through it)."""
from ..learner import Learner
from .inflora import InfLoRA
from .joint import Joint
from .linear_probe import LinearProbe
from .seq_lora import SequentialLoRA
from .splitlora import RandomA, SplitLoRA, ThresholdLoRA

METHODS: dict[str, type[Learner]] = {
    "splitlora": SplitLoRA,  # the paper
    "threshold": ThresholdLoRA,  # its ablations
    "random_a": RandomA,
    "inflora": InfLoRA,  # a same-protocol comparison
    "seq_lora": SequentialLoRA,  # baselines and bounds
    "joint": Joint,
    "linear_probe": LinearProbe,
}


def get_method(name: str) -> type[Learner]:
    """The learner class registered as ``name`` (KeyError listing the known ones otherwise)."""
    if name not in METHODS:
        raise KeyError(f"{name!r} is not a known method; known: {', '.join(sorted(METHODS))}")
    return METHODS[name]
