"""Class order and task split (docs/protocol.md)."""

import numpy as np


def class_order(num_classes: int, seed: int, shuffle: bool = True) -> list[int]:
    """Sorted class ids 0..C-1, permuted by ``numpy.random.Generator(PCG64(seed))``."""
    ids = np.arange(num_classes)
    if shuffle:
        ids = np.random.Generator(np.random.PCG64(seed)).permutation(ids)
    return [int(i) for i in ids]


def split_tasks(order: list[int], num_tasks: int) -> list[list[int]]:
    """Cut the class order into ``num_tasks`` equal consecutive chunks; the class at position j
    of task t gets the global label ``t * classes_per_task + j``."""
    if num_tasks < 1 or len(order) % num_tasks:
        raise ValueError(f"{len(order)} classes cannot be split into {num_tasks} equal tasks "
                         "(dataset.num_tasks must divide the class count)")
    per = len(order) // num_tasks
    return [list(order[t * per:(t + 1) * per]) for t in range(num_tasks)]
