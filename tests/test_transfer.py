"""Transfer onto unseen classes from few images: fine-tuning everything beats a frozen foreign backbone.

The base (tests/fixtures/transfer, provenance in its README) was trained on Fashion-MNIST classes
0-4 only. Each run trains train.py's way on 50 images of each of classes 5-9 and validate.py scores
it on the held-out test images of classes 5-9 (bench/bench_transfer.py is the full-size version,
whose table is in the README). Against training from scratch there is no ordering that holds at
this size: measured over seeds 42/1/2/3, two instruction sets and scratch lr 0.1 / 0.02, full
fine-tuning led scratch by -1.5 to +16.6 points (+4.6 at the bench's full size), so that is
reported, not asserted.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ._data_fixtures import FASHION_MNIST_SOURCE

pytestmark = pytest.mark.slow  # two real training runs
ROOT = Path(__file__).resolve().parents[1]
BASE = ROOT / "tests" / "fixtures" / "transfer" / "fm_classes_0_4_base.ckpt"
RECIPE = ROOT / "configs" / "mobilenet_v2_0.35_fashion_mnist_cpu.yaml"
PER_CLASS, EPOCHS = 50, 10
COMMON = ["-c", str(RECIPE), "--device_target", "CPU", "--batch_size", "25", "--epoch_size", str(EPOCHS),
          "--decay_epochs", str(EPOCHS), "--warmup_epochs", "0", "--val_while_train", "False", "--hflip", "0",
          "--scale", "1", "1", "--ratio", "1", "1", "--color_jitter", "0", "--num_parallel_workers", "2",
          # the loss and decay of the 9 runs the margins below come from (the demo recipe now says 0.1 / 5e-4)
          "--label_smoothing", "0", "--weight_decay", "0.00004"]
RUNS = {  # as bench/bench_transfer.py
    "frozen backbone": ["--ckpt_path", str(BASE), "--freeze_layer", "backbone", "--lr", "0.1", "--weight_decay", "0"],
    "full fine-tune": ["--ckpt_path", str(BASE), "--lr", "0.02"],
}


@pytest.fixture(scope="module")
def new_classes(tmp_path_factory) -> Path:
    """An ImageFolder of classes 5-9: 50 train images each, and all 1,000 test images of each."""
    if not os.path.isfile(os.path.join(FASHION_MNIST_SOURCE, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST IDX files not in {FASHION_MNIST_SOURCE} (apt-get install dataset-fashion-mnist)")
    from mindcv_mnv2.tools.prepare_fashion_mnist import prepare_fashion_mnist

    root = tmp_path_factory.mktemp("transfer")
    prepare_fashion_mnist(str(root / "fm"), limit_train=1000, limit_val=10000, workers=1)
    out = root / "classes_5_9"
    for split in ("train", "val"):
        for d in sorted((root / "fm" / split).iterdir()):
            if int(d.name.split("_")[0]) < 5:
                continue
            files = sorted(d.iterdir())[:PER_CLASS] if split == "train" else sorted(d.iterdir())
            assert split == "val" or len(files) == PER_CLASS, d
            (out / split / d.name).mkdir(parents=True)
            for f in files:
                (out / split / d.name / f.name).symlink_to(f)
    return out


@pytest.fixture(scope="module")
def top1(new_classes, tmp_path_factory) -> dict:
    """Top-1 (%) on the val images of classes 5-9 after each way of training."""
    from mindcv_mnv2.cli import train_main, validate_main

    results = {}
    for name, flags in RUNS.items():
        run = tmp_path_factory.mktemp(name.replace(" ", "_")) / "run"
        assert train_main([*COMMON, "--data_dir", str(new_classes), "--ckpt_save_dir", str(run), *flags],
                          "train.py") == 0, name
        out = run / "val.json"
        ckpt = run / f"mobilenet_v2_035-{EPOCHS}_{5 * PER_CLASS // 25}.ckpt"
        assert validate_main(["--data_dir", str(new_classes), "--ckpt_path", str(ckpt), "--device_target", "CPU",
                              "--output_json", str(out)], "validate.py") == 0, name
        metrics = json.loads(out.read_text())
        assert metrics["num_images"] == 5000  # the 1,000 test images of each of classes 5-9
        results[name] = metrics["top1"]
    return results


def test_full_fine_tune_beats_a_frozen_foreign_backbone(top1):
    """The ordering bench/bench_transfer.py measured at full size (90.7 against 65.0) holds at test size."""
    # Measured at this size (10 epochs of 250 images) in 9 runs (seeds 42/1/2/3, ONEDNN_MAX_CPU_ISA
    # unset/SSE41, ~500 or 5,000 test images): full fine-tune 84.0-90.1, frozen backbone 60.0-63.6,
    # gap 20-27 points. 10 is half the smallest gap; a backbone that is not really frozen closes it.
    assert top1["full fine-tune"] > top1["frozen backbone"] + 10.0, top1
    # Features learned on clothing only still separate shoes and bags far above chance (20%).
    assert top1["frozen backbone"] > 40.0, top1
