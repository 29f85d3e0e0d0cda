"""data_cache auto: training batches from images decoded into memory must be the batches the
per-image MindSpore pipeline gives (bit for bit where no random op runs, in distribution where
flips do), follow the same shard order, resume exactly, and fall back when they cannot apply."""
from __future__ import annotations

import numpy as np
import pytest

from mindcv_mnv2.data import DataError, scan_image_folder
from mindcv_mnv2.data import memory

S = 32  # Fashion-MNIST's PNGs are 32 px: the size where the cache applies
MEAN, STD = (72.94, 72.94, 72.94), (90.02, 90.02, 90.02)


def train_ops(**kw):
    from mindcv_mnv2.data import create_transforms

    args = dict(scale=(1.0, 1.0), ratio=(1.0, 1.0), hflip=0.0, color_jitter=0.0, mean=MEAN, std=STD)
    return create_transforms(True, S, **{**args, **kw})


def loader(images, cache, batch_size=16, **kw):
    from mindcv_mnv2.data import create_loader

    ops = kw.pop("transforms", None) or train_ops(**kw.pop("ops", {}))
    return create_loader(images, batch_size=batch_size, is_training=True, transforms=ops, num_parallel_workers=2,
                         data_cache=cache, **kw)


def epoch(ld, e):
    ld.set_epoch(e)
    return [(x, y) for x, y in ld.dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]


@pytest.fixture(scope="module")
def fm(fashion_mnist_tiny):
    return scan_image_folder(str(fashion_mnist_tiny), "train")


def test_plan_accepts_flips_and_normalise_only():
    plan, why = memory.batch_plan(train_ops(hflip=0.5, vflip=0.25))
    assert plan == memory.BatchPlan(S, 0.5, 0.25, MEAN, STD) and why == ""
    for kw, culprit in (({"scale": (0.08, 1.0)}, "random crops"), ({"ratio": (0.75, 1.33)}, "random crops"),
                        ({"color_jitter": 0.4}, "RandomColorAdjust"),
                        ({"auto_augment": "randaug-m9-n2"}, "RandAugment")):
        plan, why = memory.batch_plan(train_ops(**kw))
        assert plan is None and culprit in why, (kw, why)
    from mindcv_mnv2.data import create_transforms

    plan, why = memory.batch_plan(create_transforms(False, S))  # evaluation ops are never cached
    assert plan is None and "random crop" in why


@pytest.mark.parametrize("interpolation", ["bilinear", "bicubic", "nearest", "area"])
def test_no_flip_batches_equal_the_mindspore_pipeline_bit_for_bit(fm, interpolation):
    # Same sampler order and no random op: the whole-image crop at the image's own size is the
    # identity in MindSpore, and numpy's (x - mean) / std rounds as MindSpore's Normalize does.
    ref, got = loader(fm, "off", ops={"interpolation": interpolation}), loader(fm, "auto",
                                                                               ops={"interpolation": interpolation})
    assert isinstance(got.dataset, memory.DecodedBatches) and not isinstance(ref.dataset, memory.DecodedBatches)
    assert got.steps_per_epoch == ref.steps_per_epoch == got.dataset.get_dataset_size() == 200 // 16
    for e in (0, 3):
        for (xr, yr), (xg, yg) in zip(epoch(ref, e), epoch(got, e), strict=True):
            assert xg.dtype == np.float32 and xg.shape == (16, 3, S, S) and xg.flags.c_contiguous
            np.testing.assert_array_equal(xg, xr)
            np.testing.assert_array_equal(yg, yr)


def test_flips_are_per_image_with_the_recipe_probability(fm):
    plain = epoch(loader(fm, "auto", batch_size=25), 1)
    always = epoch(loader(fm, "auto", batch_size=25, ops={"hflip": 1.0}), 1)
    ref_always = epoch(loader(fm, "off", batch_size=25, ops={"hflip": 1.0}), 1)
    for (xa, _), (xr, _), (xp, _) in zip(always, ref_always, plain):
        np.testing.assert_array_equal(xa, xr)  # prob 1: every image flipped, as MindSpore flips it
        np.testing.assert_array_equal(xa, xp[..., ::-1])
    half = epoch(loader(fm, "auto", batch_size=25, ops={"hflip": 0.5, "vflip": 0.5}), 1)
    kinds = []
    for (xh, _), (xp, _) in zip(half, plain):
        for a, b in zip(xh, xp):
            match = [np.array_equal(a, v) for v in (b, b[:, :, ::-1], b[:, ::-1], b[:, ::-1, ::-1])]
            assert any(match)  # each image is itself or one of its three flips
            kinds.append(match.index(True) if sum(match) == 1 else -1)  # -1: symmetric image, ambiguous
    kinds = np.array(kinds)
    counts = np.bincount(kinds[kinds >= 0], minlength=4)
    # 200 images, 4 equally likely outcomes: each count is Binomial(~200, 1/4), mean 50, sd 6.1;
    # [20, 80] is about 5 sd either side, so a wrong probability fails and chance does not.
    assert counts.sum() > 150 and all(20 <= c <= 80 for c in counts), counts


def test_a_resumed_epoch_repeats_its_batches_and_epochs_differ(fm):
    ld = loader(fm, "auto", ops={"hflip": 0.5})
    first = epoch(ld, 2)
    ld.set_epoch(2)
    it = ld.dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)
    for _ in range(5):  # what the trainer skips on a mid-epoch resume
        next(it)
    for (xa, ya), (xb, yb) in zip(first[5:], it, strict=True):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    other = epoch(ld, 3)
    assert not np.array_equal(first[0][1], other[0][1])  # reshuffled each epoch
    # consecutive iterators read consecutive epochs, as the MindSpore dataset does
    ld.set_epoch(2)
    np.testing.assert_array_equal(next(ld.dataset.create_tuple_iterator(output_numpy=True))[1], first[0][1])
    np.testing.assert_array_equal(next(ld.dataset.create_tuple_iterator(output_numpy=True))[1], other[0][1])


def test_shards_and_batch_ops_follow_the_loader(fm):
    kw = dict(num_shards=2, drop_remainder=False, batch_size=32)
    for shard in (0, 1):
        ref, got = loader(fm, "off", shard_id=shard, **kw), loader(fm, "auto", shard_id=shard, **kw)
        assert got.num_images == ref.num_images == 100
        labs_r = np.concatenate([y for _, y in epoch(ref, 1)])
        labs_g = np.concatenate([y for _, y in epoch(got, 1)])
        np.testing.assert_array_equal(labs_g, labs_r)  # 100 images in 4 batches, the last one partial
    mixed = epoch(loader(fm, "auto", mixup=0.8, num_classes=10), 0)
    for x, y in mixed:
        assert y.shape == (16, 10) and y.dtype == np.float32
        np.testing.assert_allclose(y.sum(1), 1.0, rtol=1e-5)  # soft labels sum to 1 (float32 rounding)


def test_falls_back_with_a_reason_it_logs(fm, tiny_imagefolder, caplog, monkeypatch):
    photos = scan_image_folder(str(tiny_imagefolder), "train")  # 64x48 / 48x64 JPEGs, not 32 px
    with caplog.at_level("INFO", logger="mindcv_mnv2"):
        ld = loader(photos, "auto", batch_size=4)
    assert not isinstance(ld.dataset, memory.DecodedBatches)
    assert any("per-image MindSpore pipeline" in r.message and "does not decode to 32x32" in r.message
               and photos.files[0] in r.message for r in caplog.records), caplog.text
    assert len(epoch(ld, 0)) == ld.steps_per_epoch  # and the fallback pipeline trains
    caplog.clear()
    monkeypatch.setattr(memory, "available_memory", lambda: 1_000_000)  # 1 MB free: 200 images need 0.6 MB
    with caplog.at_level("INFO", logger="mindcv_mnv2"):
        ld = loader(fm, "auto", num_shards=2)
    assert not isinstance(ld.dataset, memory.DecodedBatches) and "the budget is 0 MiB" in caplog.text
    monkeypatch.setattr(memory, "available_memory", lambda: None)
    assert not isinstance(loader(fm, "auto").dataset, memory.DecodedBatches)
    assert not isinstance(loader(fm, "off").dataset, memory.DecodedBatches)
    with pytest.raises(DataError, match="data_cache 'memory' must be one of auto, off"):
        loader(fm, "memory")


def test_evaluation_never_uses_the_cache(fm):
    from mindcv_mnv2.data import create_loader, create_transforms

    ld = create_loader(fm, batch_size=16, is_training=False, transforms=create_transforms(False, S), data_cache="auto")
    assert not isinstance(ld.dataset, memory.DecodedBatches)
