"""prepare_fashion_mnist: IDX -> RGB ImageFolder, counts, class names, idempotency, errors."""
from __future__ import annotations

import gzip
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from mindcv_mnv2.data import DataError, scan_image_folder
from mindcv_mnv2.tools.prepare_fashion_mnist import (BUILDING, CLASS_NAMES, MARKER, main, prepare_fashion_mnist, read_idx)

from ._data_fixtures import FASHION_MNIST_SOURCE

pytestmark = pytest.mark.skipif(
    not os.path.isfile(os.path.join(FASHION_MNIST_SOURCE, "t10k-images-idx3-ubyte.gz")),
    reason=f"Fashion-MNIST IDX files not in {FASHION_MNIST_SOURCE} (apt-get install dataset-fashion-mnist)")


def idx(split: str):
    stem = "train" if split == "train" else "t10k"
    images = read_idx(f"{FASHION_MNIST_SOURCE}/{stem}-images-idx3-ubyte.gz", 0x803)
    labels = read_idx(f"{FASHION_MNIST_SOURCE}/{stem}-labels-idx1-ubyte.gz", 0x801)
    return images, labels


def all_files(root: Path):
    return sorted(p for p in root.rglob("*") if p.is_file())


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    out = tmp_path_factory.mktemp("fm") / "fashion"
    res = prepare_fashion_mnist(str(out), limit_train=200, limit_val=100, workers=2)
    return out, res


def test_counts_classes_and_images(built):
    from PIL import Image

    out, res = built
    assert res["built"] and res["num_train"] == 200 and res["num_val"] == 100
    assert CLASS_NAMES == ("0_tshirt_top", "1_trouser", "2_pullover", "3_dress", "4_coat", "5_sandal", "6_shirt",
                           "7_sneaker", "8_bag", "9_ankle_boot")
    train = scan_image_folder(str(out), "train")
    val = scan_image_folder(str(out), "val", class_names=train.class_names)
    assert train.class_names == list(CLASS_NAMES) == sorted(CLASS_NAMES)
    assert len(train) == 200 and len(val) == 100 and not train.skipped
    assert set(train.counts().values()) == {20} and set(val.counts().values()) == {10}  # balanced limits
    for f in train.files[::37] + val.files[::23]:
        with Image.open(f) as im:
            assert im.format == "PNG" and im.mode == "RGB" and im.size == (32, 32)
            px = np.asarray(im)
        assert (px[..., 0] == px[..., 1]).all() and (px[..., 1] == px[..., 2]).all()


def test_labels_and_pixels_match_the_idx_files(tmp_path):
    from PIL import Image

    res = prepare_fashion_mnist(str(tmp_path / "fm28"), size=28, limit_train=30, limit_val=20, workers=1)
    assert res["num_train"] == 30 and res["num_val"] == 20
    for split in ("train", "val"):
        images, labels = idx(split)
        lst = scan_image_folder(str(tmp_path / "fm28"), split)
        for f, lab in zip(lst.files, lst.labels):
            index = int(Path(f).stem)  # the file is named after its position in the IDX file
            assert labels[index] == lab
            with Image.open(f) as im:
                np.testing.assert_array_equal(np.asarray(im)[..., 0], images[index])


def test_second_run_does_nothing_and_other_parameters_rebuild(built, tmp_path):
    out, _ = built
    before = {p: p.stat().st_mtime_ns for p in all_files(out)}
    res = prepare_fashion_mnist(str(out), limit_train=200, limit_val=100)
    assert res["built"] is False and res["num_train"] == 200 and res["num_val"] == 100
    assert {p: p.stat().st_mtime_ns for p in all_files(out)} == before

    other = tmp_path / "fm"
    prepare_fashion_mnist(str(other), limit_train=20, limit_val=10, fmt="jpg", workers=1)
    assert len(list((other / "train").rglob("*.jpg"))) == 20
    res = prepare_fashion_mnist(str(other), limit_train=20, limit_val=10, size=28, workers=1)
    assert res["built"] is True
    from PIL import Image
    pngs = list((other / "train").rglob("*.png"))
    assert len(pngs) == 20 and not list((other / "train").rglob("*.jpg"))  # old files gone
    with Image.open(pngs[0]) as im:
        assert im.size == (28, 28)


def test_interrupted_run_is_rebuilt(tmp_path):
    out = tmp_path / "fm"
    prepare_fashion_mnist(str(out), limit_train=20, limit_val=10, workers=1)
    victim = next((out / "val").rglob("*.png"))
    victim.unlink()
    (out / MARKER).unlink()  # as if the run died before writing its marker
    res = prepare_fashion_mnist(str(out), limit_train=20, limit_val=10, workers=1)
    assert res["built"] is True and victim.exists()
    assert len(list((out / "val").rglob("*.png"))) == 10 and (out / MARKER).is_file()
    # a run that died while writing leaves its work folder and the "building" flag behind
    (out / MARKER).unlink()
    (out / BUILDING).touch()
    (out / ".partial" / "train").mkdir(parents=True)
    res = prepare_fashion_mnist(str(out), limit_train=20, limit_val=10, workers=1)
    assert res["built"] is True and not (out / ".partial").exists() and not (out / BUILDING).exists()
    assert sorted(p.name for p in out.iterdir()) == sorted([MARKER, "train", "val"])


def test_errors(tmp_path, capsys):
    with pytest.raises(DataError) as err:
        prepare_fashion_mnist(str(tmp_path / "o"), source=str(tmp_path / "nowhere"))
    msg = str(err.value)
    assert f"Fashion-MNIST IDX files not found in {tmp_path / 'nowhere'}" in msg
    assert "apt-get install dataset-fashion-mnist" in msg and "--source" in msg
    assert main(["--out", str(tmp_path / "o"), "--source", str(tmp_path / "nowhere")]) == 2
    assert "dataset-fashion-mnist" in capsys.readouterr().err

    bad = tmp_path / "bad"
    bad.mkdir()
    for stem, magic in (("train-images-idx3-ubyte", 0x803), ("train-labels-idx1-ubyte", 0x801),
                        ("t10k-images-idx3-ubyte", 0x803), ("t10k-labels-idx1-ubyte", 0x801)):
        with gzip.open(bad / f"{stem}.gz", "wb") as fh:
            fh.write(struct.pack(">I", magic ^ 0x0100) + b"\x00" * 64)  # wrong magic
    with pytest.raises(DataError, match="magic"):
        prepare_fashion_mnist(str(tmp_path / "o2"), source=str(bad))

    foreign = tmp_path / "mine"
    (foreign / "train" / "dogs").mkdir(parents=True)
    with pytest.raises(DataError, match="not written by this tool"):
        prepare_fashion_mnist(str(foreign), limit_train=10, limit_val=10)
    assert (foreign / "train" / "dogs").is_dir()


def test_cli_builds_then_skips(tmp_path, capsys):
    out = tmp_path / "cli"
    args = ["--out", str(out), "--limit_train", "10", "--limit_val", "10", "--workers", "1"]
    assert main(args) == 0
    assert "wrote 10 train + 10 val images" in capsys.readouterr().out
    assert main(args) == 0
    assert "nothing to do" in capsys.readouterr().out


def test_fixture_folder_trains_through_the_loader(fashion_mnist_tiny):
    from mindcv_mnv2.data import create_loader, create_transforms

    train = scan_image_folder(str(fashion_mnist_tiny), "train")
    loader = create_loader(train, batch_size=50, is_training=True, transforms=create_transforms(True, 32),
                           num_parallel_workers=2)
    assert loader.steps_per_epoch == 4
    images, labels = next(loader.dataset.create_tuple_iterator(output_numpy=True, num_epochs=1))
    assert images.shape == (50, 3, 32, 32) and images.dtype == np.float32 and labels.dtype == np.int32
    assert set(labels.tolist()) <= set(range(10))

