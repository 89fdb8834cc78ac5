"""How batches reach the model: worker counts, multi-epoch loading, normalisation on the device.
Randomness: with ``num_workers: 0`` the transforms draw from the main process's RNG; with
workers, each worker has its own stream (PyTorch's seeding from the loader's generator), so
augmentations, and hence results, depend on the number of workers: a run is repeated bitwise
with the same worker count (recorded in ``env.json``)."""
from __future__ import annotations

import os
from typing import Callable, Iterator, Optional, Union

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from .folder import skipping_collate


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask where the OS has one)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def processes_on_this_machine() -> int:
    """Processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE, else 1)."""
    try:
        return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))
    except ValueError:
        return 1


def resolve_workers(value: Union[int, str]) -> int:
    """``auto`` -> usable CPUs / processes on this machine - 1 (at least 0); an int as is."""
    return max(0, usable_cpus() // processes_on_this_machine() - 1) if value == "auto" else int(value)


class _EpochsBatchSampler(Sampler[list]):
    """The batches of ``epochs`` consecutive epochs of ``sampler`` (``set_epoch`` called
    before each, for a DistributedSampler)."""

    def __init__(self, sampler: Sampler, batch_size: int, drop_last: bool, epochs: int) -> None:
        self.sampler, self.epochs = sampler, epochs
        self.batches = BatchSampler(sampler, batch_size, drop_last)
        self.first_epoch = 0  # epoch number of the next iteration's first epoch

    def __iter__(self) -> Iterator[list]:
        for epoch in range(self.first_epoch, self.first_epoch + self.epochs):
            if hasattr(self.sampler, "set_epoch"):
                self.sampler.set_epoch(epoch)
            yield from self.batches

    def __len__(self) -> int:
        return self.epochs * len(self.batches)


class EpochStream:
    """``epochs`` epochs of a dataset read through one multi-worker DataLoader iteration, so
    the workers keep preparing batches across epoch boundaries. Each ``iter()`` yields the next
    epoch's batches (``len()`` of them); an epoch left unfinished is skipped to its end first,
    so epochs never mix; past ``epochs`` epochs a new iteration of ``epochs`` more starts.
    Shuffling: ``sampler`` if given (e.g. a DistributedSampler), else a RandomSampler drawing
    from ``seed``. ``sampler`` is hidden (None) from callers: this class calls ``set_epoch``
    itself, with the running epoch number."""

    sampler = None

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int, epochs: int,
                 device: torch.device, seed: int = 0, sampler: Optional[Sampler] = None,
                 drop_last: bool = False, collate_fn: Optional[Callable] = None) -> None:
        gen = torch.Generator().manual_seed(seed)
        base = sampler if sampler is not None else RandomSampler(dataset, generator=gen)
        self.batch_sampler = _EpochsBatchSampler(base, batch_size, drop_last, epochs)
        self.per_epoch = len(self.batch_sampler.batches)
        self.epochs = epochs
        self.loader = DataLoader(dataset, batch_sampler=self.batch_sampler, num_workers=num_workers,
                                 pin_memory=device.type == "cuda", generator=gen,
                                 collate_fn=collate_fn)
        self._it: Optional[Iterator] = None
        self._left = self._served = 0  # batches of the current epoch not yet taken; epochs begun

    def __len__(self) -> int:
        return self.per_epoch

    def __iter__(self) -> Iterator:
        if self._it is not None:
            for _ in range(self._left):  # an unfinished epoch: skip its rest
                next(self._it)
        if self._it is None or self._served % self.epochs == 0:
            self.batch_sampler.first_epoch = self._served
            self._it = iter(self.loader)
        self._served += 1
        self._left = self.per_epoch
        return self._epoch()

    def _epoch(self) -> Iterator:
        while self._left > 0:
            batch = next(self._it)
            self._left -= 1
            yield batch
        if self._served % self.epochs == 0:
            self._it = None  # this iteration's last epoch is done: let the workers go


class DeviceBatches:
    """Iterate ``(images, labels)`` of ``loader`` with the images on ``device``, normalised there
    by ``normalize`` when they arrive as uint8 (a quarter of the bytes of float32; bitwise the
    float pipeline's values); labels stay where they are. The n-th iteration first calls
    ``set_epoch(n)`` on a sampler that has it (a DistributedSampler). With ``bad_images`` (a
    set), ``loader`` collates with ``skipping_collate``: dropped unreadable images go there."""

    def __init__(self, loader, device: torch.device, normalize: Optional[Callable] = None,
                 bad_images: Optional[set] = None) -> None:
        self.loader, self.device = loader, device
        self.normalize, self.bad_images = normalize, bad_images
        self.sampler = getattr(loader, "sampler", None)
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self) -> Iterator:
        if hasattr(self.sampler, "set_epoch"):
            self.sampler.set_epoch(self.epoch)
        self.epoch += 1
        for batch in self.loader:
            if self.bad_images is not None:  # a Batch of skipping_collate
                images, labels, bad = batch
                self.bad_images.update(bad)
                if images is None:
                    continue
            else:
                images, labels = batch
            images = images.to(self.device, non_blocking=True)
            if self.normalize is not None and images.dtype == torch.uint8:
                images = self.normalize(images)
            yield images, labels


def make_loader(dataset: Dataset, batch_size: int, shuffle: bool, num_workers: int,
                device: torch.device, seed: int = 0, drop_last: bool = False,
                sampler: Optional[Sampler] = None, collate_fn: Optional[Callable] = None) -> DataLoader:
    """A DataLoader whose shuffling and worker seeds derive from ``seed``."""
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=num_workers, pin_memory=device.type == "cuda",
                      drop_last=drop_last, generator=torch.Generator().manual_seed(seed),
                      collate_fn=collate_fn, persistent_workers=False)


def batches(dataset: Dataset, batch_size: int, device: torch.device, workers: int,
            shuffle: bool = True, seed: int = 0, sampler: Optional[Sampler] = None,
            epochs: int = 1, normalize: Optional[Callable] = None,
            bad_images: Optional[set] = None) -> DeviceBatches:
    """The batches of ``dataset`` on ``device`` (normalised there when uint8): one epoch per
    ``iter()``; with workers and several epochs one :class:`EpochStream` serves them all. With
    ``bad_images`` (a set), unreadable images are dropped and their paths recorded there."""
    collate = skipping_collate if bad_images is not None else None
    if workers > 0 and epochs > 1 and shuffle:
        loader = EpochStream(dataset, batch_size, workers, epochs, device, seed, sampler,
                             collate_fn=collate)
    else:
        loader = make_loader(dataset, batch_size, shuffle, workers, device, seed,
                             sampler=sampler, collate_fn=collate)
    return DeviceBatches(loader, device, normalize, bad_images)
