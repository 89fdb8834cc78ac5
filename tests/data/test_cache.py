"""The decode-once cache (datasets/cache.py): the same pixels, sizes and errors as reading
from disk, one task held at a time, and a fall-back to disk when it would not fit in memory."""
from __future__ import annotations

import numpy as np
import pytest

from datasets.cache import DecodedImages, TaskImageCache
from datasets.folder import BadImageError
from tests.helpers import mixed_image_folder


def test_decoded_images_give_the_same_pixels_sizes_and_errors(tmp_path):
    base, good = mixed_image_folder(tmp_path)
    cached = DecodedImages(base, range(len(base)), threads=2)
    for i in good:
        a, b = base.load(i), cached.load(i)
        assert b.mode == a.mode == "RGB" and b.size == a.size
        assert np.array_equal(np.asarray(a), np.asarray(b))
    # the memory is exactly the RGB pixels of the readable images
    assert cached.nbytes == sum(3 * base.load(i).size[0] * base.load(i).size[1] for i in good)
    with pytest.raises(BadImageError) as from_disk:
        base.load(5)
    with pytest.raises(BadImageError) as from_cache:
        cached.load(5)
    assert str(from_cache.value) == str(from_disk.value) and "f.jpg" in str(from_cache.value)
    assert "BufferedReader" not in str(from_disk.value)  # the file named, not a descriptor


def test_task_cache_holds_one_task_and_falls_back_when_too_large(tmp_path, monkeypatch):
    base, _ = mixed_image_folder(tmp_path)
    cache = TaskImageCache("on", threads=1)
    first = cache.for_classes(base, [0])
    assert isinstance(first, DecodedImages) and cache.for_classes(base, [0]) is first
    assert TaskImageCache("off").for_classes(base, [0]) is base
    import datasets.cache as cache_mod
    monkeypatch.setattr(cache_mod, "available_memory", lambda: 2 * 1000)  # 1000-byte budget
    assert TaskImageCache("auto").for_classes(base, [0]) is base
    monkeypatch.setattr(cache_mod, "available_memory", lambda: 2**40)
    assert isinstance(TaskImageCache("auto").for_classes(base, [0]), DecodedImages)
