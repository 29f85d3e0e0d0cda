"""Data pipeline: ImageFolder scanning, transforms, decoding of odd formats, broken files,
exact sharding, Mixup/CutMix, random erasing. Real photos (ai-benchmark) at 32-64 px."""
from __future__ import annotations

import math
import os
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest

from mindcv_mnv2.data import DataError, scan_image_folder

from ._data_fixtures import TINY_CLASSES, TINY_TRAIN_PER_CLASS, TINY_VAL_PER_CLASS, ai_benchmark_photos

MEAN = np.array([123.675, 116.28, 103.53], np.float32)
STD = np.array([58.395, 57.12, 57.375], np.float32)
S = 32  # output size used throughout: small keeps the suite fast on 2 cores


def batches(loader, epochs=1):
    """[(images, labels)] per epoch, as numpy."""
    it = loader.dataset.create_tuple_iterator(output_numpy=True, num_epochs=epochs)
    out = []
    for _ in range(epochs):
        out.append([(img, lab) for img, lab in it])
    return out


def apply(ops, data):
    """Run a transform list eagerly on one encoded image."""
    for op in ops:
        data = op(data)
    return data


def png16(path: Path, arr: np.ndarray) -> None:
    """Write a 16-bit RGB(A) PNG (PIL cannot write those)."""
    h, w, c = arr.shape
    raw = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(h))

    def chunk(tag, body):
        return struct.pack(">I", len(body)) + tag + body + struct.pack(">I", zlib.crc32(tag + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", w, h, 16, {3: 2, 4: 6}[c], 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw))
                     + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def lists(tiny_imagefolder):
    train = scan_image_folder(str(tiny_imagefolder), "train")
    val = scan_image_folder(str(tiny_imagefolder), "val", class_names=train.class_names)
    return train, val


# ---------------------------------------------------------------- scanning
def test_scan_labels_follow_sorted_class_folders(lists, tiny_imagefolder):
    train, val = lists
    assert train.class_names == sorted(TINY_CLASSES) == val.class_names
    assert len(train) == 3 * TINY_TRAIN_PER_CLASS and len(val) == 3 * TINY_VAL_PER_CLASS
    assert train.labels.dtype == np.int32
    for f, lab in zip(train.files + val.files, np.concatenate([train.labels, val.labels])):
        assert Path(f).parent.name == train.class_names[lab]
    assert train.files == sorted(train.files)
    assert train.counts() == {c: TINY_TRAIN_PER_CLASS for c in TINY_CLASSES}
    assert train.skipped == [] and val.skipped == []


def test_scan_given_class_names_define_the_label_order(tiny_imagefolder):
    order = ["cat_c", "cat_a", "cat_b"]
    val = scan_image_folder(str(tiny_imagefolder), "val", class_names=order)
    assert val.class_names == order
    assert all(Path(f).parent.name == order[lab] for f, lab in zip(val.files, val.labels))


def test_scan_class_set_mismatch_is_an_error_not_a_label_shift(tmp_path, tiny_imagefolder):
    root = tmp_path / "ds"
    shutil.copytree(tiny_imagefolder, root)
    shutil.rmtree(root / "val" / "cat_b")
    shutil.copytree(root / "val" / "cat_c", root / "val" / "cat_d")
    train = scan_image_folder(str(root), "train")
    with pytest.raises(DataError) as err:
        scan_image_folder(str(root), "val", class_names=train.class_names)
    msg = str(err.value)
    assert "cat_b" in msg and "cat_d" in msg and "missing" in msg and "unexpected" in msg
    assert str(root / "val") in msg


def test_scan_errors_name_path_and_fix(tmp_path):
    with pytest.raises(DataError, match=r"data_dir '.*nope' does not exist; pass --data_dir"):
        scan_image_folder(str(tmp_path / "nope"), "train")
    (tmp_path / "train").mkdir()
    with pytest.raises(DataError, match=r"split folder '.*val' does not exist"):
        scan_image_folder(str(tmp_path), "val")
    (tmp_path / "train" / "readme.txt").write_text("x")
    with pytest.raises(DataError, match="has no class folders"):
        scan_image_folder(str(tmp_path), "train")
    (tmp_path / "train" / "dogs").mkdir()
    (tmp_path / "train" / "dogs" / "notes.txt").write_text("x")
    with pytest.raises(DataError, match=r"class folder '.*dogs' has no readable images"):
        scan_image_folder(str(tmp_path), "train")


def test_scan_skips_non_images_and_broken_files(tmp_path):
    photos = ai_benchmark_photos()
    good = tmp_path / "train" / "a"
    good.mkdir(parents=True)
    (tmp_path / "train" / "b").mkdir()
    for i in range(3):
        shutil.copy(photos[i], good / f"{i}.JPG")  # upper-case extension counts
        shutil.copy(photos[10 + i], tmp_path / "train" / "b" / f"{i}.jpeg")
    data = photos[5].read_bytes()
    (good / "zero.jpg").write_bytes(b"")
    (good / "page.jpg").write_bytes(b"<html><body>404 Not Found</body></html>")
    (good / "cut.jpg").write_bytes(data[: len(data) * 9 // 10])
    (good / "._0.JPG").write_bytes(b"\x00\x05\x16\x07" + b"\x00" * 60)  # macOS resource fork
    (good / "notes.txt").write_text("x")
    (good / ".DS_Store").write_bytes(b"\x00\x00\x00\x01Bud1")
    (tmp_path / "train" / "stray.jpg").write_bytes(data)
    from PIL import Image
    Image.open(photos[0]).resize((16, 16)).save(good / "anim.jpg", format="GIF")
    Image.open(photos[0]).resize((16, 16)).save(good / "pic.png", format="WEBP")

    lst = scan_image_folder(str(tmp_path), "train")
    threaded = scan_image_folder(str(tmp_path), "train", workers=3)
    assert (threaded.files, threaded.skipped) == (lst.files, lst.skipped)
    assert [Path(f).name for f in lst.files] == ["0.JPG", "1.JPG", "2.JPG", "0.jpeg", "1.jpeg", "2.jpeg"]
    reasons = {Path(p).name: why for p, why in lst.skipped}
    assert reasons["zero.jpg"] == "zero-byte file"
    assert reasons["page.jpg"].startswith("not an image")
    assert reasons["cut.jpg"].startswith("truncated JPEG")
    assert reasons["anim.jpg"].startswith("GIF") and reasons["pic.png"].startswith("WebP")
    assert reasons["._0.JPG"] == "hidden file" and reasons[".DS_Store"] == "hidden file"
    assert reasons["notes.txt"].startswith("not an image extension")
    assert reasons["stray.jpg"] == "file outside the class folders"
    assert len(lst.skipped) == 9

    # the skipped files never reach the pipeline: a full epoch runs, every good image is read once
    from mindcv_mnv2.data import create_loader, create_transforms
    loader = create_loader(lst, batch_size=4, is_training=False, transforms=create_transforms(False, S),
                           num_parallel_workers=2)
    got = batches(loader)[0]
    assert sum(len(lab) for _, lab in got) == 6
    assert np.concatenate([lab for _, lab in got]).tolist() == [0, 0, 0, 1, 1, 1]


def test_damage_inside_a_jpeg_is_decoded_or_named_by_verify_images(tmp_path):
    """Damage behind an intact header/end: libjpeg decodes it; a broken header is named by verify_images."""
    from mindcv_mnv2.data import create_loader, create_transforms, verify_images

    photos = ai_benchmark_photos()
    folder = tmp_path / "val" / "a"
    folder.mkdir(parents=True)
    shutil.copy(photos[0], folder / "good.jpg")
    data = bytearray(photos[1].read_bytes())
    data[len(data) // 2: len(data) // 2 + 300] = bytes(300)
    (folder / "smudged.jpg").write_bytes(bytes(data))
    (folder / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0" + os.urandom(2000) + b"\xff\xd9")
    lst = scan_image_folder(str(tmp_path), "val")
    assert len(lst) == 3  # all pass the cheap checks
    bad = {Path(p).name: why for p, why in verify_images(lst)}
    assert "fake.jpg" in bad and "good.jpg" not in bad and set(bad) <= {"fake.jpg", "smudged.jpg"}
    keep = [i for i, f in enumerate(lst.files) if Path(f).name not in bad]
    lst.files, lst.labels = [lst.files[i] for i in keep], lst.labels[keep]
    loader = create_loader(lst, batch_size=2, is_training=False, transforms=create_transforms(False, S))
    (img, lab), = batches(loader)[0]
    assert img.shape == (len(keep), 3, S, S) and np.isfinite(img).all()


# ---------------------------------------------------------------- decoding of odd formats
def test_every_readable_format_decodes_to_rgb_uint8(tmp_path):
    import mindspore.dataset.vision as vision
    from PIL import Image

    from mindcv_mnv2.data import create_transforms

    with Image.open(ai_benchmark_photos()[7]) as im:
        rgb = im.convert("RGB").resize((40, 30))
    arr = np.asarray(rgb)
    cases = {}
    rgb.convert("L").save(tmp_path / "gray.png"); cases["gray.png"] = np.asarray(rgb.convert("L").convert("RGB"))
    rgb.convert("LA").save(tmp_path / "la.png"); cases["la.png"] = np.asarray(rgb.convert("L").convert("RGB"))
    pal = rgb.convert("P")
    pal.save(tmp_path / "pal.png"); cases["pal.png"] = np.asarray(pal.convert("RGB"))
    rgba = np.concatenate([arr, np.full(arr.shape[:2] + (1,), 90, np.uint8)], axis=2)
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png"); cases["rgba.png"] = arr
    g16 = (np.asarray(rgb.convert("L")).astype(np.uint16) * 257 + 100).astype(np.uint16)
    Image.fromarray(g16).save(tmp_path / "gray16.png")
    cases["gray16.png"] = np.repeat((g16 >> 8).astype(np.uint8)[:, :, None], 3, axis=2)
    rgb16 = arr.astype(np.uint16) * 257
    png16(tmp_path / "rgb16.png", rgb16); cases["rgb16.png"] = arr
    png16(tmp_path / "rgba16.png", np.concatenate([rgb16, np.full(arr.shape[:2] + (1,), 30000, np.uint16)], 2))
    cases["rgba16.png"] = arr
    cmyk = rgb.convert("CMYK")
    cmyk.save(tmp_path / "cmyk.jpg", quality=95); cases["cmyk.jpg"] = np.asarray(Image.open(tmp_path / "cmyk.jpg").convert("RGB"))
    rgb.convert("L").save(tmp_path / "gray.jpg", quality=95)
    cases["gray.jpg"] = np.asarray(Image.open(tmp_path / "gray.jpg").convert("RGB"))
    rgb.save(tmp_path / "plain.bmp"); cases["plain.bmp"] = arr
    rgb.save(tmp_path / "plain.tif"); cases["plain.tif"] = arr
    rgb.save(tmp_path / "prog.jpg", progressive=True, quality=95)
    cases["prog.jpg"] = np.asarray(Image.open(tmp_path / "prog.jpg").convert("RGB"))

    decode = vision.Decode()
    val_ops = create_transforms(False, 24)
    for name, expected in cases.items():
        data = np.fromfile(tmp_path / name, np.uint8)
        out = decode(data)
        assert out.shape == (30, 40, 3) and out.dtype == np.uint8, name
        assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1, name
        chw = apply(val_ops, data)
        assert chw.shape == (3, 24, 24) and chw.dtype == np.float32, name


# ---------------------------------------------------------------- transforms
def test_normalisation_is_rgb_mean_std_on_0_255_and_chw(tmp_path):
    from PIL import Image

    from mindcv_mnv2.data import create_transforms

    Image.new("RGB", (50, 40), (255, 0, 128)).save(tmp_path / "solid.png")
    data = np.fromfile(tmp_path / "solid.png", np.uint8)
    expected = (np.array([255, 0, 128], np.float32) - MEAN) / STD
    for ops in (create_transforms(False, S), create_transforms(False, S, inception_crop=True),
                create_transforms(True, S, color_jitter=None)):
        out = apply(ops, data)
        assert out.shape == (3, S, S) and out.dtype == np.float32
        np.testing.assert_allclose(out, np.broadcast_to(expected[:, None, None], out.shape), atol=1e-5)


def test_transform_shapes_ranges_and_determinism(lists):
    from mindcv_mnv2.data import create_transforms

    data = np.fromfile(lists[0].files[0], np.uint8)
    lo, hi = (0 - MEAN) / STD, (255 - MEAN) / STD
    import mindspore.dataset as ds

    # Eager random ops draw from the dataset seed (and repeat themselves once one is set, whichever
    # test set it): one seed per draw keeps this independent of test order.
    outs = []
    for seed in (1, 2, 3, 4, 1):
        ds.config.set_seed(seed)
        outs.append(apply(create_transforms(True, S, vflip=0.5), data))
    for out in outs:
        assert out.shape == (3, S, S) and out.dtype == np.float32
        assert (out >= lo[:, None, None] - 1e-4).all() and (out <= hi[:, None, None] + 1e-4).all()
    assert any(not np.array_equal(outs[0], o) for o in outs[1:4])  # random crops differ
    np.testing.assert_array_equal(outs[0], outs[4])  # and repeat with the seed
    val_ops = create_transforms(False, S)
    np.testing.assert_array_equal(apply(val_ops, data), apply(val_ops, data))


def test_val_transform_is_resize_shorter_side_then_center_crop(lists):
    import mindspore.dataset.vision as vision

    from mindcv_mnv2.data import create_transforms

    data = np.fromfile(lists[1].files[1], np.uint8)
    img = vision.Decode()(data)
    h, w = img.shape[:2]
    short = int(S / 0.875)
    resized = vision.Resize(short)(img)
    assert min(resized.shape[:2]) == short
    top, left = int(round((resized.shape[0] - S) / 2.0)), int(round((resized.shape[1] - S) / 2.0))
    crop = resized[top:top + S, left:left + S].astype(np.float32)
    ref = ((crop - MEAN) / STD).transpose(2, 0, 1)
    np.testing.assert_allclose(apply(create_transforms(False, S), data), ref, atol=1e-5)


def test_inception_crop_is_central_fraction_then_square_resize(lists):
    import mindspore.dataset.vision as vision

    from mindcv_mnv2.data import create_transforms

    data = np.fromfile(ai_benchmark_photos()[3], np.uint8)
    img = vision.Resize((300, 451))(vision.Decode()(data))  # non-square, odd sizes
    enc = np.frombuffer(vision.encode_png(img).tobytes(), np.uint8)
    h, w = img.shape[:2]
    t, l = int((h - h * 0.8) / 2), int((w - w * 0.8) / 2)
    ref = vision.Resize((S, S))(np.ascontiguousarray(img[t:h - t, l:w - l])).astype(np.float32)
    ref = ((ref - MEAN) / STD).transpose(2, 0, 1)
    out = apply(create_transforms(False, S, crop_pct=0.8, inception_crop=True), enc)
    np.testing.assert_allclose(out, ref, atol=1e-5)


@pytest.mark.parametrize("policy", ["randaug-m9-mstd0.5", "randaug-m7-n3-mstd0.5-inc1", "autoaug",
                                    "autoaugr-mstd0.5", "trivialaugwide"])
def test_auto_augment_policies_build_and_run(policy, lists):
    import mindspore.dataset.vision as vision

    from mindcv_mnv2.data import create_transforms

    ops = create_transforms(True, S, auto_augment=policy)
    assert not any(isinstance(op, vision.RandomColorAdjust) for op in ops)  # policy replaces colour jitter
    data = np.fromfile(lists[0].files[2], np.uint8)
    for _ in range(3):
        out = apply(ops, data)
        assert out.shape == (3, S, S) and out.dtype == np.float32 and np.isfinite(out).all()


def test_auto_augment_parsing():
    from mindcv_mnv2.data import create_transforms, parse_auto_augment

    assert parse_auto_augment("randaug-m10-n2-w0-mstd0.5-mmax10-inc0") == (
        "randaug", {"m": 10.0, "n": 2.0, "w": 0.0, "mstd": 0.5, "mmax": 10.0, "inc": 0.0})
    for bad in ("augmix", "randaugment", "randaug-x9", "autoaug-m9", "randaug-m12-mmax12"):
        with pytest.raises(DataError, match="auto_augment"):
            create_transforms(True, S, auto_augment=bad)
    with pytest.raises(DataError, match="interpolation"):
        create_transforms(True, S, interpolation="lanczos7")


def test_none_values_fall_back_to_mindcv_defaults():
    from mindcv_mnv2.data import create_transforms

    ops = create_transforms(False, None, mean=None, std=None, crop_pct=None, interpolation=None)
    assert len(ops) == 5  # decode, resize, crop, normalize, hwc2chw


# ---------------------------------------------------------------- random erasing
def test_random_erasing_erases_one_rectangle_per_image():
    from mindcv_mnv2.data import RandomErasing

    rng = np.random.default_rng(0)
    x = rng.normal(size=(16, 3, 40, 40)).astype(np.float32) + 5.0  # no exact zeros
    er = RandomErasing(prob=1.0, scale=(0.02, 0.33), ratio=(0.3, 3.3), value=0, seed=1)
    out = er.erase_batch(x)
    assert out.shape == x.shape and out.dtype == np.float32
    for img in out:
        zero = (img == 0).all(axis=0)
        rows, cols = np.flatnonzero(zero.any(1)), np.flatnonzero(zero.any(0))
        assert zero.sum() == len(rows) * len(cols)  # a filled rectangle
        assert rows.ptp() + 1 == len(rows) and cols.ptp() + 1 == len(cols)
        assert 0.01 * 1600 <= zero.sum() <= 0.36 * 1600
        assert (img == 0).all(axis=0).sum() == (img == 0).any(axis=0).sum()  # all channels together
    assert np.array_equal(RandomErasing(prob=0.0).erase_batch(x), x)
    noisy = RandomErasing(prob=1.0, value="random", seed=2).erase_batch(x)
    changed = (noisy != x).any(axis=1)
    assert changed.reshape(16, -1).any(axis=1).all() and abs(noisy[noisy != x].mean()) < 0.5
    single = RandomErasing(prob=1.0, seed=3)(x[0])
    assert single.shape == x[0].shape and (single == 0).any()


def test_random_erasing_runs_in_the_loader(lists):
    from mindcv_mnv2.data import RandomErasing, create_loader, create_transforms

    ops = create_transforms(True, S, re_prob=1.0, re_value=0)
    assert isinstance(ops[-1], RandomErasing)
    loader = create_loader(lists[0], batch_size=8, is_training=True, transforms=ops, num_parallel_workers=2)
    for img, lab in batches(loader)[0]:
        assert img.shape == (8, 3, S, S) and lab.dtype == np.int32
        assert ((img == 0).all(axis=1).reshape(8, -1).sum(axis=1) > 0).all()


# ---------------------------------------------------------------- loader and sharding
def test_eval_loader_output_and_partial_last_batch(lists):
    from mindcv_mnv2.data import create_loader, create_transforms

    val = lists[1]
    loader = create_loader(val, batch_size=4, is_training=False, transforms=create_transforms(False, S),
                           num_parallel_workers=2)
    assert loader.num_images == loader.num_images_total == 15 and loader.steps_per_epoch == 4
    assert loader.class_names == val.class_names and not loader.soft_labels
    got = batches(loader)[0]
    assert [len(lab) for _, lab in got] == [4, 4, 4, 3]
    img, lab = got[0]
    assert img.dtype == np.float32 and img.shape == (4, 3, S, S) and lab.dtype == np.int32
    assert np.concatenate([lab for _, lab in got]).tolist() == val.labels.tolist()  # file order kept


@pytest.mark.parametrize("num_shards", [2, 3])
def test_eval_sharding_is_exact(lists, num_shards):
    from mindcv_mnv2.data import create_loader, create_transforms

    val = lists[1]
    ops = create_transforms(False, S)
    whole = np.concatenate([i for i, _ in batches(create_loader(val, 4, False, transforms=ops))[0]])
    seen, counts = [], []
    for r in range(num_shards):
        loader = create_loader(val, batch_size=2, is_training=False, transforms=ops, shard_id=r,
                               num_shards=num_shards, num_parallel_workers=2)
        idx = loader.epoch_indices(0)
        got = batches(loader)[0]
        imgs = np.concatenate([i for i, _ in got])
        labs = np.concatenate([lab for _, lab in got])
        assert len(imgs) == loader.num_images == len(idx)
        assert loader.steps_per_epoch == len(got) == math.ceil(len(idx) / 2)
        np.testing.assert_array_equal(labs, val.labels[idx])
        np.testing.assert_allclose(imgs, whole[idx], atol=1e-6)  # the shard really reads those files
        seen.extend(idx.tolist())
        counts.append(loader.num_images)
    assert sorted(seen) == list(range(15))  # union == whole split, no duplicates, no padding
    assert sum(counts) == 15 and max(counts) - min(counts) <= 1


def test_training_shards_are_disjoint_and_reshuffled_each_epoch(lists):
    from mindcv_mnv2.data import create_loader, create_transforms

    train = lists[0]
    ops = create_transforms(True, S)
    loaders = [create_loader(train, batch_size=4, is_training=True, transforms=ops, shard_id=r, num_shards=2,
                             seed=7, num_parallel_workers=2) for r in range(2)]
    for ep in range(2):
        a, b = (ld.epoch_indices(ep) for ld in loaders)
        assert len(a) == len(b) == 12 and not set(a) & set(b) and sorted(np.concatenate([a, b])) == list(range(24))
    assert not np.array_equal(loaders[0].epoch_indices(0), loaders[0].epoch_indices(1))
    again = create_loader(train, batch_size=4, is_training=True, transforms=ops, shard_id=0, num_shards=2, seed=7)
    np.testing.assert_array_equal(again.epoch_indices(1), loaders[0].epoch_indices(1))
    # the pipeline follows the sampler epoch after epoch
    ld = loaders[0]
    assert ld.num_images == 12 and ld.steps_per_epoch == 3
    for ep, got in enumerate(batches(ld, epochs=2)):
        labs = np.concatenate([lab for _, lab in got])
        np.testing.assert_array_equal(labs, train.labels[ld.epoch_indices(ep)])
        assert all(img.shape == (4, 3, S, S) for img, _ in got)


def test_training_shards_pad_to_equal_length_and_drop_remainder():
    from mindcv_mnv2.data import shard_indices

    parts = [shard_indices(10, 3, shard_id=r, num_shards=3, shuffle=True, seed=1, pad=True) for r in range(3)]
    assert [len(p) for p in parts] == [4, 4, 4]
    assert set(np.concatenate(parts)) == set(range(10))  # 2 padded repeats, nothing missing
    exact = [shard_indices(10, 3, shard_id=r, num_shards=3, shuffle=True, seed=1, pad=False) for r in range(3)]
    assert sorted(np.concatenate(exact).tolist()) == list(range(10))


def test_num_samples_takes_a_seeded_random_subset(lists):
    from mindcv_mnv2.data import create_loader, create_transforms

    train = lists[0]
    ops = create_transforms(True, S)
    a = create_loader(train, batch_size=4, is_training=True, transforms=ops, num_samples=9, seed=3)
    b = create_loader(train, batch_size=4, is_training=True, transforms=ops, num_samples=9, seed=3)
    assert a.num_images_total == a.num_images == 9 and a.steps_per_epoch == 2  # drop_remainder default
    assert a.files == b.files and a.files != train.files[:9]
    assert len(set(a.labels.tolist())) > 1
    assert set(a.files) <= set(train.files)
    got = batches(a)[0]
    assert [len(lab) for _, lab in got] == [4, 4]


def test_loader_from_a_data_dir_and_argument_errors(tiny_imagefolder, lists):
    from mindcv_mnv2.data import create_loader

    loader = create_loader(str(tiny_imagefolder), batch_size=5, is_training=False, image_size=S)
    assert loader.num_images == 15 and loader.steps_per_epoch == 3
    with pytest.raises(DataError, match="shard_id"):
        create_loader(lists[1], 4, False, shard_id=2, num_shards=2)
    with pytest.raises(DataError, match="fewer than the 20 shards"):
        create_loader(lists[1], 4, False, shard_id=0, num_shards=20)
    with pytest.raises(DataError, match="batch_size"):
        create_loader(lists[1], 0, False)


# ---------------------------------------------------------------- mixup / cutmix
def test_mixup_soft_labels_and_images():
    from mindcv_mnv2.data import Mixup

    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 3, 8, 8)).astype(np.float32)
    y = np.array([0, 1, 2, 3, 4, 0], np.int32)
    mix = Mixup(5, mixup_alpha=0.8, label_smoothing=0.1, seed=4)
    xm, ym = mix(x, y)
    assert ym.shape == (6, 5) and ym.dtype == np.float32
    np.testing.assert_allclose(ym.sum(1), 1.0, atol=1e-6)
    on, off = 1 - 0.1 + 0.1 / 5, 0.1 / 5
    # image 1 (label 1) is mixed with image 4 (label 4): ym[1,1] = lam*on + (1-lam)*off
    lam = (ym[1, 1] - off) / (on - off)
    assert 0 < lam < 1
    np.testing.assert_allclose(xm[1], lam * x[1] + (1 - lam) * x[4], atol=1e-5)


def test_cutmix_box_and_label_area():
    from mindcv_mnv2.data import Mixup

    x = np.stack([np.full((3, 20, 20), float(i), np.float32) for i in range(4)])
    y = np.arange(4, dtype=np.int32)
    mix = Mixup(4, cutmix_alpha=1.0, seed=11)
    for _ in range(5):
        xm, ym = mix(x, y)
        pasted = (xm[0] == 3.0).all(axis=0).mean()  # image 0 receives pixels from image 3
        np.testing.assert_allclose(ym[0], [1 - pasted, 0, 0, pasted], atol=1e-6)
        np.testing.assert_allclose(ym.sum(1), 1.0, atol=1e-6)


def test_smoothing_only_when_not_mixed_and_switch():
    from mindcv_mnv2.data import Mixup, one_hot_smooth

    y = np.array([2, 0], np.int32)
    np.testing.assert_allclose(one_hot_smooth(y, 4, 0.2), [[0.05, 0.05, 0.85, 0.05], [0.85, 0.05, 0.05, 0.05]])
    never = Mixup(4, mixup_alpha=1.0, cutmix_alpha=1.0, prob=0.0, label_smoothing=0.2, seed=0)
    x = np.ones((2, 3, 4, 4), np.float32)
    xm, ym = never(x, y)
    np.testing.assert_allclose(ym, one_hot_smooth(y, 4, 0.2))
    np.testing.assert_array_equal(xm, x)
    both = Mixup(4, mixup_alpha=1.0, cutmix_alpha=1.0, switch_prob=0.5, seed=0)
    kinds = [both.sample()[1] for _ in range(200)]
    assert 40 < sum(kinds) < 160  # both cutmix and mixup are drawn
    with pytest.raises(DataError, match="num_classes"):
        Mixup(None, mixup_alpha=1.0)


def test_loader_with_mixup_cutmix_gives_soft_labels(lists):
    from mindcv_mnv2.data import create_loader, create_transforms

    loader = create_loader(lists[0], batch_size=6, is_training=True, transforms=create_transforms(True, S),
                           num_classes=3, mixup=0.8, cutmix=1.0, cutmix_prob=1.0, label_smoothing=0.1,
                           num_parallel_workers=2)
    assert loader.soft_labels
    got = batches(loader)[0]
    assert len(got) == 4
    for img, lab in got:
        assert img.shape == (6, 3, S, S) and img.dtype == np.float32
        assert lab.shape == (6, 3) and lab.dtype == np.float32
        np.testing.assert_allclose(lab.sum(1), 1.0, atol=1e-5)
        assert lab.min() >= 0.1 / 3 - 1e-6  # smoothing floor on every class


def test_verify_cli_names_undecodable_files(tmp_path, capsys):
    from mindcv_mnv2.data import pipeline_error, verify_images
    from mindcv_mnv2.data.verify import main

    photos = ai_benchmark_photos()
    folder = tmp_path / "train" / "a"
    folder.mkdir(parents=True)
    for i in range(3):
        shutil.copy(photos[20 + i], folder / f"ok{i}.jpg")
    (folder / "fake.jpg").write_bytes(b"\xff\xd8\xff\xe0" + bytes(3000) + b"\xff\xd9")
    (folder / "empty.jpg").write_bytes(b"")
    assert main([str(tmp_path), "--split", "train"]) == 1
    out = capsys.readouterr().out
    assert "broken\t" + str(folder / "fake.jpg") in out and "skipped\t" + str(folder / "empty.jpg") in out
    assert "ok0.jpg" not in out
    # a file decoded right after a failed one is not blamed (MindSpore's stale libjpeg error state)
    files = [str(folder / n) for n in ("fake.jpg", "ok0.jpg", "fake.jpg", "ok1.jpg", "empty.jpg", "ok2.jpg")]
    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        bad = verify_images([os.path.relpath(f, tmp_path) for f in files])
    finally:
        os.chdir(cwd)
    assert [Path(p).name for p, _ in bad] == ["fake.jpg", "fake.jpg", "empty.jpg"]
    assert not (tmp_path / "abnormal_image.jpg").exists()  # MindSpore's dump went to a scratch folder
    err = pipeline_error(RuntimeError("map operation: [Decode] failed. Decode: image decode failed."),
                         str(tmp_path), "train")
    assert isinstance(err, DataError) and "python -m mindcv_mnv2.data.verify" in str(err)
    assert pipeline_error(RuntimeError("out of memory"), str(tmp_path), "train") is None


def test_dataset_size_and_set_epoch_for_resume(lists):
    from mindcv_mnv2.data import create_loader, create_transforms

    ops = create_transforms(True, S)
    loader = create_loader(lists[0], batch_size=5, is_training=True, transforms=ops, num_parallel_workers=2)
    assert loader.dataset.get_dataset_size() == loader.steps_per_epoch == 4  # 24 // 5, remainder dropped
    loader.set_epoch(3)
    labs = np.concatenate([lab for _, lab in batches(loader)[0]])
    np.testing.assert_array_equal(labs, lists[0].labels[loader.epoch_indices(3)[:20]])
    val = create_loader(lists[1], batch_size=4, is_training=False, transforms=create_transforms(False, S),
                        shard_id=1, num_shards=2)
    assert val.dataset.get_dataset_size() == val.steps_per_epoch == 2 and val.num_images == 7


def test_inception_crop_in_the_pipeline_matches_eager(lists):
    from mindcv_mnv2.data import create_loader, create_transforms

    ops = create_transforms(False, S, crop_pct=0.875, inception_crop=True)
    loader = create_loader(lists[1], batch_size=8, is_training=False, transforms=ops, num_parallel_workers=2)
    got = np.concatenate([img for img, _ in batches(loader)[0]])
    eager = np.stack([apply(ops, np.fromfile(f, np.uint8)) for f in lists[1].files])
    np.testing.assert_allclose(got, eager, atol=1e-6)
