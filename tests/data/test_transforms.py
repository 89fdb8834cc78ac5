"""Transforms (datasets/transforms.py, normalize.py): the uint8 path (augment to uint8, then
normalise the whole batch on the device) is bitwise the float pipeline of the workers, for
every training and evaluation transform."""
from __future__ import annotations

import pytest
import torch

from datasets import transforms as tf
from datasets.cache import DecodedImages
from datasets.transforms import Uint8Normalize
from tests.helpers import DEVICES, mixed_image_folder

MEAN, STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)


@pytest.mark.parametrize("policy,interp,mean,std", [
    ("imagenet", "bilinear", MEAN, STD), ("cifar10", "bicubic", IMAGENET_MEAN, IMAGENET_STD)])
def test_new_path_is_bitwise_the_old_train_transform(tmp_path, policy, interp, mean, std):
    """Old: decode from disk, AutoAugment, crop, ToTensor, Normalize in the worker. New: the
    decoded cache, the same augmentation to uint8, normalised on the batch. Same seed, same
    tensor, bit for bit."""
    base, good = mixed_image_folder(tmp_path)
    cached = DecodedImages(base, good)
    old = tf.train_transform(24, policy, interp, mean, std)
    new = tf.train_transform(24, policy, interp, mean, std, output="uint8")
    norm = Uint8Normalize(mean, std)
    for seed in range(8):
        for i in good:
            torch.manual_seed(seed)
            want = old(base.load(i))
            torch.manual_seed(seed)
            got = new(cached.load(i))
            assert got.dtype == torch.uint8
            assert torch.equal(norm(got[None])[0], want), (seed, i)


@pytest.mark.parametrize("mode", tf.EVAL_MODES)
def test_new_path_is_bitwise_the_old_eval_transform(tmp_path, mode):
    base, good = mixed_image_folder(tmp_path)
    cached = DecodedImages(base, good)
    norm = Uint8Normalize(IMAGENET_MEAN, IMAGENET_STD)
    old = tf.eval_transform(24, mode, "bicubic", IMAGENET_MEAN, IMAGENET_STD)
    new = tf.eval_transform(24, mode, "bicubic", IMAGENET_MEAN, IMAGENET_STD, output="uint8")
    batch_old = torch.stack([old(base.load(i)) for i in good])
    batch_new = norm(torch.stack([new(cached.load(i)) for i in good]))
    assert torch.equal(batch_new, batch_old)


def test_tensor_transforms_of_the_synthetic_benchmark_are_bitwise_unchanged():
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    norm = Uint8Normalize(MEAN, STD)
    for make in (tf.tensor_train_transform, tf.tensor_eval_transform):
        old, new = make(16, MEAN, STD), make(16, MEAN, STD, output="uint8")
        for i, img in enumerate(images):
            torch.manual_seed(i)
            want = old(img)
            torch.manual_seed(i)
            assert torch.equal(norm(new(img)[None])[0], want)


@pytest.mark.parametrize("device", DEVICES)
def test_normalization_is_the_affine_map_and_keeps_shape(device):
    """uint8 batches are normalised where they arrive (on a GPU: on the GPU)."""
    norm = Uint8Normalize(IMAGENET_MEAN, IMAGENET_STD)
    x = torch.randint(0, 256, (2, 3, 5, 7), dtype=torch.uint8)
    on_device = norm(x.to(device))
    assert on_device.device.type == device
    y = on_device.cpu()
    assert y.shape == x.shape and y.dtype == torch.float32
    ref = (x.double() / 255 - torch.tensor(IMAGENET_MEAN, dtype=torch.double).view(3, 1, 1)) \
        / torch.tensor(IMAGENET_STD, dtype=torch.double).view(3, 1, 1)
    assert torch.allclose(y.double(), ref, atol=1e-6)
    with pytest.raises(TypeError):
        norm(x.float())
