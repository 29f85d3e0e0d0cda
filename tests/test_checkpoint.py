"""Checkpoint I/O: atomic save, meta round trip, clear read errors, strict loading, load_model."""
from __future__ import annotations

import errno
import os

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindcv_mnv2 import checkpoint as ckpt  # noqa: E402
from mindcv_mnv2.checkpoint import (CheckpointError, extract_model_state, load_model,  # noqa: E402
                                    load_weights, model_meta, read_checkpoint, read_meta,
                                    save_checkpoint)
from mindcv_mnv2.models import MobileNetV2  # noqa: E402
from mindcv_mnv2.models.mobilenetv2 import param_shapes  # noqa: E402

pytestmark = pytest.mark.usefixtures("ms_cpu")


def _zeros_state(width, num_classes=1000):
    return {k: np.zeros(s, np.float32) for k, s in param_shapes(width, num_classes).items()}


def _net_state(net):
    return {p.name: p.asnumpy() for p in net.get_parameters()}


@pytest.fixture(scope="module")
def net100():
    return MobileNetV2(1.0)


@pytest.fixture(scope="module")
def net035():
    """Width 0.35, 10 classes, tf_same, with non-trivial BN statistics (a 'trained' model)."""
    net = MobileNetV2(0.35, num_classes=10, padding="tf_same")
    rng = np.random.RandomState(3)
    for p in net.get_parameters():
        if p.name.endswith(("moving_mean", "beta")):
            p.set_data(ms.Tensor(rng.uniform(-0.2, 0.2, p.shape).astype(np.float32)))
        elif p.name.endswith(("moving_variance", "gamma")):
            p.set_data(ms.Tensor(rng.uniform(0.5, 1.5, p.shape).astype(np.float32)))
    net.set_train(False)
    return net


# ----------------------------------------------------------------------------- save / read
def test_save_read_round_trip_with_meta(tmp_path):
    path = str(tmp_path / "run" / "last.ckpt")  # the directory is created
    params = {"a": np.arange(6, dtype=np.float32).reshape(2, 3), "b": ms.Tensor(np.ones(4, np.float16)),
              "c": ms.Parameter(ms.Tensor(np.full((1, 2), 3.5, np.float32)), name="c"),
              "global_step": np.array([17], np.int32)}
    meta = {**model_meta("mobilenet_v2_035_96", {"num_classes": 3}, class_names=["cat", "dog", "émeu"]),
            "epoch": 4, "global_step": 17, "steps_per_epoch": 5, "best_metric": 0.5, "has_ema": False,
            "config": {"lr": 0.1, "scale": (0.08, 1.0), "n": np.int64(2)}}
    save_checkpoint(path, params, meta)
    tensors, got = read_checkpoint(path)
    assert set(tensors) == set(params)
    np.testing.assert_array_equal(tensors["a"], params["a"])
    assert tensors["b"].dtype == np.float16 and tensors["global_step"].dtype == np.int32
    assert tensors["global_step"].tolist() == [17] and tensors["c"].tolist() == [[3.5, 3.5]]
    assert got["format"] == "mindcv_mnv2/1" and got["model"] == "mobilenet_v2_035_96"
    assert got["class_names"] == ["cat", "dog", "émeu"] and got["eval"]["image_size"] == 96
    assert got["model_kwargs"] == {"width_mult": 0.35, "num_classes": 3, "in_channels": 3,
                                   "padding": "symmetric", "drop_rate": 0.2}
    assert got["config"] == {"lr": 0.1, "scale": [0.08, 1.0], "n": 2} and got["epoch"] == 4
    assert read_meta(path) == got
    assert oct(os.stat(path).st_mode & 0o777) == oct(0o644)
    assert os.listdir(os.path.dirname(path)) == ["last.ckpt"]
    # overwriting replaces the file; without meta the file reads back with {}
    save_checkpoint(path, {"x": np.zeros(2, np.float32)})
    tensors, got = read_checkpoint(path)
    assert list(tensors) == ["x"] and tensors["x"].tolist() == [0.0, 0.0] and got == {}
    assert os.listdir(os.path.dirname(path)) == ["last.ckpt"]


def _failing_save(exc):
    def fake_save(entries, name, append_dict=None, crc_check=False):
        # MindSpore stages through "<stem>.tmp": leave a partial file behind, then fail mid-write
        with open(name[:-len(".ckpt")] + ".tmp", "wb") as f:
            f.write(b"\x0a\x10partial")
        raise exc
    return fake_save


@pytest.mark.parametrize("exc,reason", [(OSError(errno.ENOSPC, "No space left on device"), "disk is full"),
                                        (PermissionError(errno.EACCES, "Permission denied"), "Permission denied")])
def test_failed_save_keeps_previous_file(tmp_path, monkeypatch, exc, reason):
    path = str(tmp_path / "model.ckpt")
    save_checkpoint(path, {"w": np.full(3, 1.0, np.float32)}, {"epoch": 1})
    monkeypatch.setattr(ms, "save_checkpoint", _failing_save(exc))
    with pytest.raises(CheckpointError, match=reason) as e:
        save_checkpoint(path, {"w": np.full(3, 2.0, np.float32)}, {"epoch": 2})
    assert path in str(e.value) and "unchanged" in str(e.value)
    monkeypatch.undo()
    tensors, meta = read_checkpoint(path)
    assert tensors["w"].tolist() == [1.0, 1.0, 1.0] and meta == {"epoch": 1}
    assert os.listdir(tmp_path) == ["model.ckpt"]  # no temp files remain


def test_save_refuses_bad_targets(tmp_path, monkeypatch):
    with pytest.raises(CheckpointError, match="is a directory"):
        save_checkpoint(str(tmp_path), {"w": np.zeros(1)})
    with pytest.raises(CheckpointError, match="must end with .ckpt"):
        save_checkpoint(str(tmp_path / "a.bin"), {"w": np.zeros(1)})
    with pytest.raises(CheckpointError, match="reserved"):
        save_checkpoint(str(tmp_path / "a.ckpt"), {"mnv2_meta": np.zeros(1)})
    with pytest.raises(CheckpointError, match="JSON"):
        save_checkpoint(str(tmp_path / "a.ckpt"), {"w": np.zeros(1)}, {"bad": object()})
    monkeypatch.setattr(ckpt.os, "access", lambda p, mode: False)  # root can write anywhere: simulate
    with pytest.raises(CheckpointError, match="not writable"):
        save_checkpoint(str(tmp_path / "a.ckpt"), {"w": np.zeros(1)})
    monkeypatch.undo()
    assert os.listdir(tmp_path) == []


def _make_bad(kind, tmp_path, mindcv_fixtures):
    p = tmp_path / f"{kind}.ckpt"
    good = (mindcv_fixtures / "mindcv_mobilenet_v2_035_trained.ckpt").read_bytes()
    if kind == "missing":
        return p, "does not exist"
    if kind == "directory":
        p.mkdir()
        return p, "is a directory"
    if kind == "empty":
        p.write_bytes(b"")
        return p, "empty"
    if kind == "truncated":
        p.write_bytes(good[:len(good) // 2])
        return p, "truncated, corrupt"
    if kind == "garbage":
        p.write_bytes(np.random.RandomState(0).bytes(4096))
        return p, "truncated, corrupt"
    if kind == "text":
        p = tmp_path / "labels.txt"
        p.write_text("cat\ndog\n")
        return p, "not a MindSpore checkpoint"
    # our own file with one flipped bit: the CRC trailer catches it
    save_checkpoint(str(p), {"w": np.arange(64, dtype=np.float32)}, {"epoch": 1})
    data = bytearray(p.read_bytes())
    data[40] ^= 0x01
    p.write_bytes(bytes(data))
    return p, "CRC"


@pytest.mark.parametrize("kind", ["missing", "directory", "empty", "truncated", "garbage", "text", "bitflip"])
def test_read_errors_name_path_and_problem(kind, tmp_path, mindcv_fixtures, capfd):
    path, problem = _make_bad(kind, tmp_path, mindcv_fixtures)
    with pytest.raises(CheckpointError) as e:
        read_checkpoint(str(path))
    assert str(path) in str(e.value) and problem in str(e.value)
    assert "Traceback" not in str(e.value) and e.value.__cause__ is None
    with pytest.raises(CheckpointError, match="checkpoint"):
        load_model(str(path))
    assert "Traceback" not in capfd.readouterr().err


def test_read_foreign_mindcv_file(mindcv_fixtures):
    tensors, meta = read_checkpoint(str(mindcv_fixtures / "mindcv_mobilenet_v2_035_trained.ckpt"))
    assert meta == {} and len(tensors) == 423
    assert sum(k.startswith("moments.") for k in tensors) == 158
    state = extract_model_state(tensors)
    assert len(state) == 262 and set(state) == set(param_shapes(0.35))


# ----------------------------------------------------------------------------- model state
def test_extract_model_state_prefers_ema_and_drops_training_state():
    model = {"features.0.weight": np.zeros(2), "features.1.moving_mean": np.zeros(2)}
    training = {name: np.zeros(1) for name in ckpt.TRAINING_STATE_NAMES}
    training.update({f"{p}features.0.weight": np.zeros(2) for p in ckpt.TRAINING_STATE_PREFIXES})
    training["ema.features.0.weight"] = np.ones(2)
    training["optimizer.adam.m"] = np.ones(2)
    state = extract_model_state({**model, **training})
    assert set(state) == set(model)
    assert state["features.0.weight"].tolist() == [1.0, 1.0]  # the EMA copy
    raw = extract_model_state({**model, **training}, use_ema=False)
    assert raw["features.0.weight"].tolist() == [0.0, 0.0]


# ----------------------------------------------------------------------------- load_weights
def test_width_mismatch_names_the_width(net100):
    with pytest.raises(CheckpointError) as e:
        load_weights(net100, _zeros_state(0.75))
    msg = str(e.value)
    assert "width 0.75" in msg and "24 output channels" in msg and "model is width 1.0" in msg
    assert "shape mismatch" in msg and msg.count("\n") < 10


def test_class_mismatch_and_drop_classifier(net100):
    state = _zeros_state(1.0, num_classes=10)
    state["features.0.weight"] = np.full((32, 3, 3, 3), 0.5, np.float32)
    with pytest.raises(CheckpointError) as e:
        load_weights(net100, state)
    msg = str(e.value)
    assert "checkpoint has 10 classes, model has 1000" in msg and "drop_classifier" in msg
    assert "width" not in msg.split("shape mismatch")[0]
    assert (net100.features[0].weight.asnumpy() != 0.5).all()  # a failed strict load changes nothing
    report = load_weights(net100, state, drop_classifier=True)
    assert sorted(report["skipped"]) == ["classifier.1.bias", "classifier.1.weight"]
    assert len(report["loaded"]) == 260 and not (report["missing"] or report["unexpected"] or report["mismatched"])
    assert net100.features[0].weight.name == "features.0.weight"
    assert (net100.features[0].weight.asnumpy() == 0.5).all()
    assert net100.classifier[1].weight.shape == (1000, 1280)


def test_missing_and_unexpected_are_listed(net035, tmp_path):
    state = _net_state(net035)
    del state["features.21.moving_variance"]
    state["head.fc.weight"] = np.zeros((2, 2), np.float32)
    path = str(tmp_path / "odd.ckpt")
    save_checkpoint(path, state)
    with pytest.raises(CheckpointError) as e:
        load_weights(MobileNetV2(0.35, num_classes=10), path)
    msg = str(e.value)
    assert path in msg and "missing from checkpoint (1): features.21.moving_variance" in msg
    assert "unexpected in checkpoint (1): head.fc.weight" in msg
    report = load_weights(MobileNetV2(0.35, num_classes=10), state, strict=False)
    assert report["missing"] == ["features.21.moving_variance"] and report["unexpected"] == ["head.fc.weight"]
    assert len(report["loaded"]) == 261


def test_not_a_mobilenet_checkpoint(tmp_path):
    path = str(tmp_path / "resnet.ckpt")
    save_checkpoint(path, {"conv1.weight": np.zeros((64, 3, 7, 7), np.float32)})
    with pytest.raises(CheckpointError, match="cannot recognise a MobileNetV2"):
        load_model(path)
    with pytest.raises(CheckpointError, match="not a MobileNetV2 checkpoint"):
        load_weights(MobileNetV2(0.35), path)


# ----------------------------------------------------------------------------- load_model
def test_load_model_self_describing_with_ema(net035, tmp_path, pynative):
    state = _net_state(net035)
    ema = {f"ema.{p.name}": p.asnumpy() * 0.5 for p in net035.trainable_params()}
    meta = {**model_meta("mobilenet_v2_035_96", {"num_classes": 10, "padding": "tf_same"},
                         class_names=[str(i) for i in range(10)]), "epoch": 3, "has_ema": True}
    path = str(tmp_path / "best.ckpt")
    save_checkpoint(path, {**state, **ema, "moments.features.0.weight": state["features.0.weight"],
                           "global_step": np.array([30], np.int32)}, meta)
    raw = load_model(path, use_ema=False)
    assert (raw.width_mult, raw.num_classes, raw.padding) == (0.35, 10, "tf_same")
    assert not raw.training and raw.checkpoint_meta["epoch"] == 3
    assert raw.checkpoint_meta["eval"]["image_size"] == 96
    x = ms.Tensor(np.random.RandomState(0).standard_normal((2, 3, 64, 64)).astype(np.float32))
    np.testing.assert_allclose(raw(x).asnumpy(), net035(x).asnumpy(), rtol=1e-6, atol=1e-7)
    averaged = load_model(path)
    np.testing.assert_array_equal(averaged.features[0].weight.asnumpy(), state["features.0.weight"] * 0.5)
    np.testing.assert_array_equal(averaged.features[1].moving_mean.asnumpy(), state["features.1.moving_mean"])
    over = load_model(path, output_stride=16, padding="symmetric")
    assert over.output_stride == 16 and over.padding == "symmetric"


def test_load_model_foreign_file_infers_model(mindcv_fixtures):
    net = load_model(str(mindcv_fixtures / "mindcv_mobilenet_v2_035_trained.ckpt"))
    meta = net.checkpoint_meta
    assert meta["model"] == "mobilenet_v2_035" and meta["inferred"] is True and meta["format"] == "foreign"
    assert meta["model_kwargs"] == {"width_mult": 0.35, "num_classes": 1000, "in_channels": 3,
                                    "padding": "symmetric", "drop_rate": 0.2}
    assert meta["eval"]["image_size"] == 224 and meta["eval"]["crop_pct"] == 0.875
    assert meta["global_step"] == 2 and not net.training


def test_model_meta_fills_registry_facts():
    meta = model_meta("mobilenet_v2_100_192", {"num_classes": 2}, ["a", "b"])
    assert meta["eval"] == {"image_size": 192, "crop_pct": 0.875, "interpolation": "bilinear",
                            "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]}
    assert meta["model_kwargs"]["width_mult"] == 1.0 and meta["model"] == "mobilenet_v2_100_192"
    custom = model_meta("mobilenet_v2_100_224", {}, eval_facts={"image_resize": 160, "crop_pct": 1.0})
    assert custom["model"] == "mobilenet_v2_100" and custom["eval"]["image_size"] == 160
    assert custom["eval"]["crop_pct"] == 1.0 and custom["class_names"] is None
    with pytest.raises(CheckpointError, match="3 class names for num_classes=2"):
        model_meta("mobilenet_v2_100", {"num_classes": 2}, ["a", "b", "c"])
    with pytest.raises(KeyError, match="Valid names"):
        model_meta("mobilenet_v9", {})
