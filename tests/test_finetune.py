"""Fine-tuning: frozen layers keep their weights and statistics bit for bit and get no optimizer
state, the head trains on cached features when the backbone is frozen, filter_head, resume."""
from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from mindcv_mnv2.config import load_config
from mindcv_mnv2.models.registry import model_defaults

from ._data_fixtures import fashion_mnist_subset

pytestmark = pytest.mark.slow  # every test trains for real
ROOT = Path(__file__).resolve().parents[1]
MINDCV_CKPT = ROOT / "tests" / "fixtures" / "mindcv" / "mindcv_mobilenet_v2_035_trained.ckpt"  # 1000 classes


@pytest.fixture(scope="module")
def fm(tmp_path_factory):
    """320 train / 100 val Fashion-MNIST images."""
    return fashion_mnist_subset(tmp_path_factory, "fm_ft", 320, 100)


def _cfg(data, run_dir, **over):
    base = dict(model="mobilenet_v2_035", device_target="CPU", data_dir=str(data), ckpt_save_dir=str(run_dir),
                image_resize=32, batch_size=32, epoch_size=2, num_parallel_workers=2, scale=(1.0, 1.0),
                ratio=(1.0, 1.0), hflip=0.0, color_jitter=0.0, opt="momentum", lr=0.05, warmup_epochs=0,
                decay_epochs=2, val_while_train=True, crop_pct=1.0, mean=(72.94,) * 3, std=(90.02,) * 3,
                ckpt_path=str(MINDCV_CKPT), log_interval=5, drop_rate=0.0)
    base.update(over)
    return load_config(overrides=base, model_defaults=model_defaults)


def _tensors(path):
    from mindcv_mnv2.checkpoint import read_checkpoint

    return read_checkpoint(str(path))


def _frozen_unchanged(tensors, source, prefixes):
    for name, want in source.items():
        if name.startswith(prefixes) and not name.startswith(("moments.", "ema.")) and name in tensors:
            np.testing.assert_array_equal(tensors[name], want, err_msg=name)


def test_frozen_backbone_trains_the_head_on_cached_features(fm, tmp_path, capsys):
    from mindcv_mnv2.engine.trainer import train

    run = tmp_path / "cached"
    summary = train(_cfg(fm, run, freeze_layer="backbone", ema=True, ema_decay=0.9))
    out = capsys.readouterr().out
    assert "23 of 23 entries of features frozen; the head trains on the backbone's features" in out
    assert "classifier not loaded (1000 classes, this run 10)" in out
    assert "its optimizer state is not used" in out  # the MindCV file's moments.* (MindCV bug #697)
    assert len(list((run / "features").glob("train_*.npz"))) == 1 and len(list((run / "features").glob("val_*.npz"))) == 1
    source, _ = _tensors(MINDCV_CKPT)
    tensors, meta = _tensors(summary["last_checkpoint"])
    _frozen_unchanged(tensors, source, ("features.",))  # weights and BN statistics, bit for bit
    slots = [k for k in tensors if k.startswith("moments.")]
    assert sorted(slots) == ["moments.classifier.1.bias", "moments.classifier.1.weight"]  # no state for frozen
    assert not any(k.startswith("ema.features.") for k in tensors)
    assert tensors["classifier.1.weight"].shape == (10, 1280)
    epochs = [json.loads(x) for x in open(run / "metrics.jsonl") if '"epoch"' in x and '"type": "epoch"' in x]
    assert epochs[-1]["val_images"] == 100
    # the checkpoint is a whole network: validate.py scores it from images, as the run did from features
    from mindcv_mnv2.engine.validation import validate

    m = validate(_cfg(fm, run, ckpt_path=summary["last_checkpoint"], val_while_train=False))
    assert m["num_images"] == 100 and m["loss"] == pytest.approx(epochs[-1]["val_loss"], rel=1e-4)
    assert m["correct_top1"] == round(epochs[-1]["top1"])  # 100 images: top-1 % is the count


def test_resumed_frozen_run_reuses_the_cached_features(fm, tmp_path, capsys, monkeypatch):
    import signal

    from mindcv_mnv2.engine.trainer import Interrupted, Trainer, train

    real_next = Trainer._next_batch

    def stop(self, it, epoch, step):
        if (epoch, step) == (1, 3):
            self.signals.received = signal.SIGTERM
        return real_next(self, it, epoch, step)

    run = tmp_path / "r"
    train(_cfg(fm, tmp_path / "ref", freeze_layer="backbone"))
    monkeypatch.setattr(Trainer, "_next_batch", stop)
    with pytest.raises(Interrupted):
        train(_cfg(fm, run, freeze_layer="backbone"))
    monkeypatch.setattr(Trainer, "_next_batch", real_next)
    capsys.readouterr()
    summary = train(_cfg(fm, run, freeze_layer="backbone", resume=str(run), ckpt_path=""))
    assert re.search(r"cached features: reusing .*train_", capsys.readouterr().out)
    ref, _ = _tensors(tmp_path / "ref" / "mobilenet_v2_035-2_10.ckpt")
    got, _ = _tensors(summary["last_checkpoint"])
    for name in ("classifier.1.weight", "classifier.1.bias", "moments.classifier.1.weight"):
        np.testing.assert_array_equal(got[name], ref[name], err_msg=name)  # the resumed run is the same run


def test_freeze_first_layers_with_augmentation_runs_the_frozen_part_every_step(fm, tmp_path, capsys):
    from mindcv_mnv2.engine.trainer import train

    summary = train(_cfg(fm, tmp_path / "n", freeze_layer=5, hflip=0.5, epoch_size=1, decay_epochs=1,
                         val_while_train=False))
    out = capsys.readouterr().out
    assert "5 of 23 entries of features frozen; the backbone runs every step" in out
    source, _ = _tensors(MINDCV_CKPT)
    tensors, _ = _tensors(summary["last_checkpoint"])
    _frozen_unchanged(tensors, source, tuple(f"features.{i}." for i in range(5)))
    assert not np.array_equal(tensors["features.5.layers.0.weight"], source["features.5.layers.0.weight"])
    assert not any(k.startswith(tuple(f"moments.features.{i}." for i in range(5))) for k in tensors)
    assert "moments.features.5.layers.0.weight" in tensors


def test_filter_head_and_bad_freeze_values(fm, tmp_path):
    from mindcv_mnv2.config import ConfigError
    from mindcv_mnv2.engine.trainer import Trainer

    with pytest.raises(ConfigError, match="freeze_layer: must be none, backbone, or an integer"):
        _cfg(fm, tmp_path / "a", freeze_layer="head")
    with pytest.raises(ConfigError, match="freeze_layer: freezing layers of random weights"):
        Trainer(_cfg(fm, tmp_path / "b", freeze_layer="backbone", ckpt_path=""))
    assert _cfg(fm, tmp_path / "c", freeze_layer=7).freeze_layer == "7"  # YAML gives a number


def test_filter_head_reinitialises_a_classifier_of_the_same_size(fm, tmp_path):
    """ModelZoo's filter_head: everything but the head loads, even when the class counts agree."""
    from mindcv_mnv2.checkpoint import load_model, model_meta, save_checkpoint
    from mindcv_mnv2.engine.trainer import Trainer

    src = load_model(str(MINDCV_CKPT))
    state = {p.name: p.asnumpy() for p in src.get_parameters()}
    state["classifier.1.weight"], state["classifier.1.bias"] = state["classifier.1.weight"][:10], state["classifier.1.bias"][:10]
    ten = tmp_path / "ten.ckpt"
    save_checkpoint(str(ten), state, model_meta("mobilenet_v2_035", {"num_classes": 10}))
    for flag, same in ((False, True), (True, False)):
        t = Trainer(_cfg(fm, tmp_path / f"f{flag}", ckpt_path=str(ten), filter_head=flag))
        assert np.array_equal(t.net.classifier[1].weight.asnumpy(), state["classifier.1.weight"]) is same
        np.testing.assert_array_equal(t.net.features[0].weight.asnumpy(), state["features.0.weight"])
