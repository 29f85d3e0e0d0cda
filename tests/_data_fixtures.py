"""Reusable real-image fixtures: a tiny ImageFolder made from the ai-benchmark photos, and a
small Fashion-MNIST ImageFolder. Import the fixtures into a test module (or conftest.py)."""
from __future__ import annotations

import importlib.util
import os
from pathlib import Path
from typing import List

import pytest

FASHION_MNIST_SOURCE = "/usr/share/datasets/fashion-mnist"
TINY_CLASSES = ("cat_a", "cat_b", "cat_c")
TINY_TRAIN_PER_CLASS = 8
TINY_VAL_PER_CLASS = 5  # 15 val images: not divisible by 2 or 4, so partial shards/batches are exercised


def ai_benchmark_photos() -> List[Path]:
    """The 100 real 512 px JPEG photos shipped by the ai-benchmark wheel (sorted by number)."""
    spec = importlib.util.find_spec("ai_benchmark")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ai-benchmark is not installed (pip install -r requirements.txt): no real photos")
    folder = Path(list(spec.submodule_search_locations)[0]) / "data" / "classification"
    photos = sorted(folder.glob("*.jpg"), key=lambda p: int(p.stem) if p.stem.isdigit() else 10**9)
    if len(photos) < 50:
        pytest.skip(f"ai-benchmark photos not found in {folder}")
    return photos


def build_tiny_imagefolder(root: Path, size: int = 64) -> Path:
    """root/{train,val}/<class>/*.jpg: 3 classes, 8 train + 5 val real photos each, ~size px."""
    from PIL import Image

    photos = ai_benchmark_photos()
    k = 0
    for split, per_class in (("train", TINY_TRAIN_PER_CLASS), ("val", TINY_VAL_PER_CLASS)):
        for name in TINY_CLASSES:
            folder = root / split / name
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(per_class):
                # alternate landscape/portrait so resize-shorter-side and crops are exercised
                w, h = (size, size * 3 // 4) if i % 2 else (size * 3 // 4, size)
                with Image.open(photos[k]) as im:
                    im.convert("RGB").resize((w, h), Image.BILINEAR).save(folder / f"img_{i:02d}.jpg", quality=92)
                k += 1
    return root


@pytest.fixture(scope="session")
def tiny_imagefolder(tmp_path_factory) -> Path:
    """A real-photo ImageFolder: train/ 3x8 and val/ 3x5 JPEGs of about 64 px (read-only use)."""
    return build_tiny_imagefolder(tmp_path_factory.mktemp("tiny_imagefolder"))


def fashion_mnist_subset(tmp_path_factory, tag: str, train: int, val: int) -> Path:
    """A fresh Fashion-MNIST ImageFolder (RGB 32 px PNGs) of the first ``train`` / ``val`` images, or skip."""
    if not os.path.isfile(os.path.join(FASHION_MNIST_SOURCE, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST IDX files not in {FASHION_MNIST_SOURCE} (apt-get install dataset-fashion-mnist)")
    from mindcv_mnv2.tools.prepare_fashion_mnist import prepare_fashion_mnist

    out = tmp_path_factory.mktemp(tag) / "fm"
    prepare_fashion_mnist(str(out), limit_train=train, limit_val=val, workers=1)
    return out


@pytest.fixture(scope="session")
def fashion_mnist_tiny(tmp_path_factory) -> Path:
    """Fashion-MNIST as an ImageFolder: 200 train / 100 val RGB 32 px PNGs (read-only use)."""
    return fashion_mnist_subset(tmp_path_factory, "fashion_mnist", 200, 100)
