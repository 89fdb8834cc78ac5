"""Benchmarks, the folder layout, class order and task split, transforms, synthetic data."""
from .benchmarks import (BENCHMARKS, Benchmark, BenchmarkSpec, build_benchmark, check_folder_root,
                         class_order, register_benchmark, split_tasks)
from .folder import (BadImageError, BadSample, Batch, DataError, FolderImageSet, ImageSet, Repeated,
                     TaskDataset, skipping_collate)
from .synthetic import SyntheticImageSet, class_images
