"""Reading images (datasets/folder.py): high-bit-depth images with their real brightness,
every 8-bit mode exactly as Pillow converts it, unreadable files named with their split."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from datasets.folder import BadImageError, FolderImageSet
from tests.helpers import png16


def _load_all(root: Path) -> dict[str, np.ndarray]:
    images = FolderImageSet(root, ["c"], "train")
    return {Path(p).name: np.asarray(images.load(i)) for i, p in enumerate(images.paths)}


def test_16bit_images_read_like_their_8bit_version(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (9, 11)).astype(np.uint16)
    rgb = rng.integers(0, 256, (9, 11, 3)).astype(np.uint16)
    noise = rng.integers(-128, 129, gray.shape)  # |noise| / 257 < 0.5: rounds back to gray
    folder = tmp_path / "c"
    folder.mkdir()
    Image.fromarray(gray.astype(np.uint8)).save(folder / "gray8.png")
    Image.fromarray(gray * 257).save(folder / "gray16.png")  # Pillow: mode I;16
    Image.fromarray(np.clip(gray * 257 + noise, 0, 65535).astype(np.uint16)).save(
        folder / "gray16_noisy.png")
    Image.fromarray((gray * 257).astype(np.int32)).save(folder / "gray32.tif")  # mode I
    Image.fromarray((gray / 255).astype(np.float32)).save(folder / "grayf.tif")  # mode F, [0, 1]
    Image.fromarray(rgb.astype(np.uint8)).save(folder / "rgb8.png")
    (folder / "rgb16.png").write_bytes(png16(rgb * 257))
    with Image.open(folder / "gray16.png") as img:
        assert img.mode.startswith("I;16")  # what the conversion is about
    loaded = _load_all(tmp_path)
    expected_gray = np.repeat(gray.astype(np.uint8)[..., None], 3, axis=2)
    assert np.array_equal(loaded["gray8.png"], expected_gray)
    for name in ("gray16.png", "gray16_noisy.png", "gray32.tif", "grayf.tif"):
        assert loaded[name].dtype == np.uint8 and np.array_equal(loaded[name], expected_gray), name
    assert np.array_equal(loaded["rgb8.png"], rgb.astype(np.uint8))
    assert np.array_equal(loaded["rgb16.png"], rgb.astype(np.uint8))


def test_8bit_images_are_read_exactly_as_pillow_converts_them(tmp_path):
    """Every 8-bit mode goes through Pillow's own convert("RGB"), bit for bit."""
    rng = np.random.default_rng(1)
    rgb = Image.fromarray(rng.integers(0, 256, (8, 10, 3), dtype=np.uint8))
    folder = tmp_path / "c"
    folder.mkdir()
    rgb.save(folder / "rgb.jpg", quality=90)
    rgb.convert("L").save(folder / "l.png")
    rgb.convert("P").save(folder / "p.png")
    rgb.convert("RGBA").save(folder / "rgba.png")
    rgb.convert("CMYK").save(folder / "cmyk.jpg")
    loaded = _load_all(tmp_path)
    for name, array in loaded.items():
        with Image.open(folder / name) as img:
            pil = np.asarray(img.convert("RGB"))
        assert array.dtype == np.uint8 and np.array_equal(array, pil), name


@pytest.mark.parametrize("content", [b"", b"\x89PNG\r\n\x1a\n not really", b"\xff\xd8\xff broken"])
def test_an_unreadable_image_names_the_file_and_the_split(tmp_path, content):
    folder = tmp_path / "c"
    folder.mkdir()
    (folder / "x.png").write_bytes(content)
    images = FolderImageSet(tmp_path, ["c"], "val")
    with pytest.raises(BadImageError) as info:
        images.load(0)
    assert str(folder / "x.png") in str(info.value) and "(val split)" in str(info.value)
