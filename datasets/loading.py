"""How batches reach the model: worker counts, multi-epoch loading, normalisation on the device.
Without workers the transforms draw from the main process's RNG; with workers each has its own
stream (seeded from the loader's generator), so results depend on the worker count: a run
repeats bitwise with the same count (recorded in ``env.json``)."""

import os
from typing import Callable, Iterator, Optional, Union

import torch
from torch.utils.data import BatchSampler, DataLoader, Dataset, RandomSampler, Sampler

from .folder import skipping_collate


def usable_cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def processes_on_this_machine() -> int:
    """Processes of this job on this machine (torchrun's LOCAL_WORLD_SIZE, else 1)."""
    return max(1, int(os.environ.get("LOCAL_WORLD_SIZE", "1")))


def resolve_workers(value: Union[int, str]) -> int:
    auto = max(0, usable_cpus() // processes_on_this_machine() - 1)
    return auto if value == "auto" else int(value)


class _EpochsBatchSampler(Sampler[list]):
    """The batches of ``epochs`` epochs of ``sampler``, calling its ``set_epoch`` before each."""

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
    """``epochs`` epochs through one DataLoader iteration (workers keep preparing across epochs);
    each ``iter()`` yields the next epoch, first skipping the rest of an unfinished one. Shuffles
    with ``sampler`` (hidden: its ``set_epoch`` is called here) or a RandomSampler from ``seed``."""

    sampler = None

    def __init__(self, dataset: Dataset, batch_size: int, num_workers: int, epochs: int,
                 device: torch.device, seed: int = 0, sampler: Optional[Sampler] = None,
                 drop_last: bool = False, collate_fn: Optional[Callable] = None) -> None:
        gen = torch.Generator().manual_seed(seed)
        base = sampler if sampler is not None else RandomSampler(dataset, generator=gen)
        self.batch_sampler = _EpochsBatchSampler(base, batch_size, drop_last, epochs)
        self.per_epoch, self.epochs = len(self.batch_sampler.batches), epochs
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
    """``(images, labels)`` of ``loader``, the images on ``device`` (uint8 ones normalised there:
    a quarter of float32's bytes, bitwise the same values). Iteration n calls a sampler's
    ``set_epoch(n)``. ``bad_images``: a set for the paths ``skipping_collate`` drops."""

    def __init__(self, loader, device: torch.device, normalize: Optional[Callable] = None,
                 bad_images: Optional[set] = None) -> None:
        self.loader, self.device, self.normalize = loader, device, normalize
        self.bad_images, self.epoch = bad_images, 0
        self.sampler = getattr(loader, "sampler", None)

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
                sampler: Optional[Sampler] = None,
                collate_fn: Optional[Callable] = None) -> DataLoader:
    return DataLoader(dataset, batch_size=batch_size, shuffle=shuffle if sampler is None else False,
                      sampler=sampler, num_workers=num_workers, pin_memory=device.type == "cuda",
                      drop_last=drop_last, generator=torch.Generator().manual_seed(seed),
                      collate_fn=collate_fn, persistent_workers=False)


def batches(dataset: Dataset, batch_size: int, device: torch.device, workers: int,
            shuffle: bool = True, seed: int = 0, sampler: Optional[Sampler] = None,
            epochs: int = 1, normalize: Optional[Callable] = None,
            bad_images: Optional[set] = None) -> DeviceBatches:
    """One epoch of ``dataset``'s batches on ``device`` per ``iter()`` (several epochs with
    workers: one :class:`EpochStream`); see :class:`DeviceBatches` for ``bad_images``."""
    collate = skipping_collate if bad_images is not None else None
    if workers > 0 and epochs > 1 and shuffle:
        loader = EpochStream(dataset, batch_size, workers, epochs, device, seed, sampler,
                             collate_fn=collate)
    else:
        loader = make_loader(dataset, batch_size, shuffle, workers, device, seed,
                             sampler=sampler, collate_fn=collate)
    return DeviceBatches(loader, device, normalize, bad_images)
