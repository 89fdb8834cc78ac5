"""InfLoRA (Liang & Li, CVPR 2024) as a learner of this project: ``method.name: inflora``.

Same adapters as SplitLoRA (A frozen, B trained, on the ``lora.targets`` slices of qkv,
merged after each task); only the choice of A differs:

    before_task(t)  no-grad pass over task t's training data with the model as it is: this
                    task's input second moment C_t per block; A_t = top-r left singular
                    vectors of C_t with the old subspace projected out, / sqrt(3)
    after_task(t)   merge; a second pass (the trained model, task t alone) extends the
                    old-task basis DualGPM-style with threshold lamb + (lame - lamb) t / T

The mathematics is in :mod:`splitlora.inflora`; docs/inflora.md says what is InfLoRA's own
and what follows this project's protocol.
"""
from __future__ import annotations

import logging
from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader

from models import ContinualViT

from . import engine
from .config import Config
from .covariance import CovarianceAccumulator
from .distributed import DistInfo
from .run.errors import NumericalError
from .inflora import REMOVE, design_A, first_basis, old_dims, threshold_schedule, update_basis
from .learner import Learner, register_method

log = logging.getLogger(__name__)


@register_method("inflora")
class InfLoRA(Learner):
    """A of every task designed from the task's own inputs, outside the old tasks' subspace.

    State: per block an orthonormal basis (float32, CPU) and its kind (``remove``: it spans
    the old tasks' subspace; ``retain``: its complement), as DualGPM keeps them.
    """

    reads = frozenset({"split.cov_pass", "split.cov_dtype", "split.cov_amp",
                       "method.inflora_lamb", "method.inflora_lame"})

    def __init__(self, cfg: Config, model: ContinualViT, device: torch.device,
                 dist_info: DistInfo = DistInfo()) -> None:
        super().__init__(cfg, model, device, dist_info)
        self.bases: list[Optional[Tensor]] = [None] * len(model.adapters)
        self.kinds: list[str] = [REMOVE] * len(model.adapters)
        self._designed: list[Tensor] = []

    def _task_covariance(self, task: int, make_loader: Callable[[], DataLoader], desc: str,
                         progress: bool) -> list[Tensor]:
        """One no-grad pass over a task's data: per block its (d, d) second moment (CPU,
        float64), summed over the processes under torchrun."""
        adapters = self.model.adapters
        dtype = {"float32": torch.float32, "float64": torch.float64}[self.cfg.split.cov_dtype]
        acc = CovarianceAccumulator(len(adapters), adapters[0].in_features, dtype, self.device)
        cov_amp = self.amp_dtype if self.cfg.split.cov_amp else None
        engine.covariance_pass(self.model, adapters, make_loader(), acc, self.device, cov_amp,
                               desc, progress)
        acc.all_reduce()
        covs = []
        for layer in range(acc.num_layers):
            c = acc.covariance(layer).to(torch.float64).cpu()
            if not torch.isfinite(c).all():
                raise NumericalError(f"the input second moment of block {layer} holds non-finite "
                                     f"values ({desc}); the run stops (the checkpoint of the "
                                     "previous task is kept). Check the data and train.amp.")
            covs.append(c)
        return covs

    # ----------------------------------------------------------------- lifecycle
    def before_task(self, task: int, num_classes: int,
                    make_cov_loader: Optional[Callable[[], DataLoader]] = None,
                    progress: bool = True) -> None:
        if make_cov_loader is None:
            raise ValueError("InfLoRA designs A from the task's data: before_task needs "
                             "make_cov_loader")
        self.seed_task(task)  # the pass's random transforms (single process) derive from the task
        covs = self._task_covariance(task, make_cov_loader, f"task {task} input (A design)",
                                     progress)
        self._designed = [design_A(c, self.cfg.lora.rank, b, k)
                          for c, b, k in zip(covs, self.bases, self.kinds)]
        try:
            super().before_task(task, num_classes, make_cov_loader, progress)
        finally:
            self._designed = []

    def init_A(self, task: int, layer: int, dim: int, generator: torch.Generator) -> Tensor:
        """The designed A (the same for every target slice, as InfLoRA's k and v share it)."""
        return self._designed[layer]

    def after_task(self, task: int, make_cov_loader: Callable[[], DataLoader],
                   last: bool = False, progress: bool = True) -> None:
        self.model.merge_adapters()
        self.interference.append(None)
        if last:  # no task follows: the basis would never be used
            self.split_dims.append(None)
            return
        covs = self._task_covariance(task, make_cov_loader, f"task {task} input (DualGPM)",
                                     progress)
        threshold = threshold_schedule(task, self.cfg.dataset.num_tasks,
                                       self.cfg.method.inflora_lamb, self.cfg.method.inflora_lame)
        for layer, c in enumerate(covs):
            if self.bases[layer] is None:
                basis, kind = first_basis(c, threshold)
            else:
                basis, kind, _ = update_basis(c, self.bases[layer], self.kinds[layer], threshold)
            self.bases[layer] = basis.to(torch.float32).contiguous()
            self.kinds[layer] = kind
        dims = [old_dims(b, k) for b, k in zip(self.bases, self.kinds)]
        self.split_dims.append(dims)
        log.info("task %d DualGPM (threshold %.4f): old-task dims per block %s of %d (%s)", task,
                 threshold, dims, self.bases[0].shape[0],
                 ", ".join(k[:3] for k in self.kinds))

    # ----------------------------------------------------------------- state
    def state_dict(self) -> dict:
        state = super().state_dict()
        state["bases"] = [None if b is None else b.detach().cpu().clone() for b in self.bases]
        state["kinds"] = list(self.kinds)
        return state

    def load_state_dict(self, state: dict) -> None:
        super().load_state_dict(state)
        if len(state["bases"]) != len(self.bases):
            raise ValueError(f"InfLoRA state has {len(state['bases'])} blocks, the model "
                             f"{len(self.bases)}")
        self.bases = [None if b is None else b.to(torch.float32).cpu() for b in state["bases"]]
        self.kinds = [str(k) for k in state["kinds"]]
