"""MindSpore ModelZoo / Hub MobileNetV2 checkpoints: names mapped by structure, ModelZoo's logits,
every file layout, validate.py, predict and fine-tuning from them, bad files."""
from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindcv_mnv2 import interop_modelzoo as mz  # noqa: E402
from mindcv_mnv2.checkpoint import (CheckpointError, extract_model_state, load_model, load_weights,  # noqa: E402
                                    read_checkpoint, save_checkpoint)
from mindcv_mnv2.constants import WIDTHS  # noqa: E402
from mindcv_mnv2.models import MobileNetV2  # noqa: E402
from mindcv_mnv2.models.mobilenetv2 import param_shapes  # noqa: E402

from ._data_fixtures import tiny_imagefolder  # noqa: F401,E402  (fixture)

# Made by tests/fixtures/make_modelzoo_fixture.py from ModelZoo's own network source (fixtures/README.md).
ZOO_DIR = Path(__file__).resolve().parent / "fixtures" / "modelzoo"
ZOO_CKPT = ZOO_DIR / "modelzoo_mobilenetv2_035_trained.ckpt"  # training-network format, width 0.35, 10 classes
ZOO_IO = ZOO_DIR / "modelzoo_mobilenetv2_035_trained_io.npz"
# The reference logits were recorded on an AVX2 CPU; another instruction set (oneDNN's SSE4.1 or
# AVX-512 code) reassociates float32 sums over ~50 layers: measured 1.5e-5 under SSE41 on logits of
# magnitude ~6 (~30 ulp). 1e-4 leaves room; a mis-mapped tensor moves them by >1e-2.
LOGIT_ATOL = 1e-4
ZOO_SHAPES = ZOO_DIR / "modelzoo_param_shapes.tsv"
LOOP_STATE = ("global_step", "learning_rate", "momentum")
VARIANTS = ("train-network", "network", "prefixed", "prefixed-train")


def _raw():
    """The fixture's entries exactly as MindSpore reads them (ModelZoo's names)."""
    return {k: v.asnumpy() for k, v in ms.load_checkpoint(str(ZOO_CKPT)).items()}


def _variant(kind: str, tmp_path: Path) -> str:
    """The fixture in one of ModelZoo's layouts, written as ModelZoo writes files (ms.save_checkpoint).

    network: what save_checkpoint(net) holds, i.e. the model entries of the training file;
    prefixed: the same under a parent cell that prefixes (backbone./head.), moments included.
    """
    if kind == "train-network":
        return str(ZOO_CKPT)
    raw = _raw()
    if kind == "network":
        raw = {k: v for k, v in raw.items() if not k.startswith("moments.") and k not in LOOP_STATE}
    if kind.startswith("prefixed"):
        def prefix(name):
            slot, _, rest = name.partition(".") if name.startswith("moments.") else ("", "", name)
            parent = "backbone." if rest.startswith("features.") else "head." if rest.startswith("dense.") else ""
            return f"{slot}.{parent}{rest}" if slot else parent + rest
        if kind == "prefixed":
            raw = {k: v for k, v in raw.items() if not k.startswith("moments.") and k not in LOOP_STATE}
        raw = {prefix(k): v for k, v in raw.items()}
    path = tmp_path / f"{kind}.ckpt"
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in raw.items()], str(path))
    return str(path)


# ----------------------------------------------------------------------------- the mapping
def _zoo_shapes():
    by_width = defaultdict(dict)
    for line in ZOO_SHAPES.read_text().splitlines():
        if line.startswith("#"):
            continue
        width, name, shape = line.split("\t")
        by_width[float(width)][name] = tuple(int(d) for d in shape.split("x"))
    return by_width


@pytest.mark.parametrize("width", sorted(WIDTHS.values()))
def test_mapping_covers_modelzoo_network_at_every_width(width):
    """ModelZoo's own parameter list (fixture) maps one to one onto ours, shapes equal to param_shapes."""
    theirs = _zoo_shapes()[width]
    mapping = mz.name_map(width, 1000)
    ours = param_shapes(width, 1000)
    assert len(theirs) == len(ours) == 262
    assert set(mapping) == set(theirs)  # every ModelZoo tensor has a counterpart, and nothing else
    assert sorted(o for o, _ in mapping.values()) == sorted(ours)  # onto every one of ours, once
    for zoo, (name, shape) in mapping.items():
        assert theirs[zoo] == shape == ours[name], (zoo, name)


def test_mapping_examples_and_prefixed_names():
    m = mz.name_map(0.35, 10)
    assert m["features.0.features.0.weight"][0] == "features.0.weight"
    assert m["features.0.features.1.gamma"][0] == "features.1.gamma"
    assert m["features.1.conv.0.features.0.weight"][0] == "features.3.layers.0.weight"  # t=1: depthwise first
    assert m["features.1.conv.1.weight"][0] == "features.3.layers.3.weight"
    assert m["features.2.conv.1.features.0.weight"][0] == "features.4.layers.3.weight"  # depthwise after expand
    assert m["features.2.conv.2.weight"][0] == "features.4.layers.6.weight"
    assert m["features.2.conv.3.moving_mean"][0] == "features.4.layers.7.moving_mean"
    assert m["features.18.features.0.weight"][0] == "features.20.weight"
    assert m["dense.bias"] == ("classifier.1.bias", (10,))
    p = mz.name_map(0.35, 10, prefixed=True)
    assert p["backbone.features.18.features.1.beta"][0] == "features.21.beta"
    assert p["head.dense.weight"] == ("classifier.1.weight", (10, 1280))


def test_fixture_is_read_under_our_names():
    """262 model tensors, one to one, shapes of our network; ModelZoo's optimizer slots are not model tensors."""
    raw = _raw()
    tensors, meta = read_checkpoint(str(ZOO_CKPT))
    assert meta == {"source": "mindspore-modelzoo", "source_format": "train-network", "source_names": "plain",
                    "source_optimizer_entries_dropped": 158}
    assert len(raw) == 423 and sum(k.startswith("moments.") for k in raw) == 158
    assert not any(k.startswith("moments.") for k in tensors)
    state = extract_model_state(tensors)
    expected = param_shapes(0.35, 10)
    assert set(state) == set(expected) and set(tensors) - set(state) == set(LOOP_STATE)
    for zoo, (ours, shape) in mz.name_map(0.35, 10).items():
        assert state[ours].shape == shape == expected[ours]
        np.testing.assert_array_equal(state[ours], raw[zoo])


def test_other_files_pass_through_unchanged():
    state = {"features.0.weight": 1, "moments.features.0.weight": 2, "global_step": 3}  # ours / MindCV's
    assert mz.translate(state) == (state, {})
    assert mz.detect(["features.0.weight", "classifier.1.weight"]) is None


# ----------------------------------------------------------------------------- numerics
@pytest.mark.numerics
def test_load_model_gives_modelzoo_logits(pynative):
    """ModelZoo's logits (its own network, eval mode) to LOGIT_ATOL, in PyNative and in graph mode.

    Both networks run the same MindSpore CPU kernels in the same order (conv pad 1, BN eps 1e-5,
    ReLU6, mean, Dense): on the CPU that recorded the fixture they are identical. A mis-mapped
    tensor, or other padding, rounding or eps, moves them by >1e-2: the fixture's logits depend on
    the input.
    """
    io = np.load(ZOO_IO)
    assert np.abs(io["logits"][0] - io["logits"][1]).max() > 0.5  # input-sensitive reference
    net = load_model(str(ZOO_CKPT))
    assert (net.width_mult, net.num_classes, net.padding) == (0.35, 10, "symmetric") and not net.training
    meta = net.checkpoint_meta
    assert meta["source"] == "mindspore-modelzoo" and meta["inferred"] is True and meta["global_step"] == 1
    x = ms.Tensor(io["x_nchw"])
    np.testing.assert_allclose(net(x).asnumpy(), io["logits"], rtol=0, atol=LOGIT_ATOL)
    ms.set_context(mode=ms.GRAPH_MODE)  # the `pynative` fixture restores the mode afterwards
    np.testing.assert_allclose(net(x).asnumpy(), io["logits_graph"], rtol=0, atol=LOGIT_ATOL)
    np.testing.assert_allclose(net(x).asnumpy(), io["logits"], rtol=0, atol=LOGIT_ATOL)


@pytest.mark.numerics
def test_logit_comparison_has_teeth(pynative):
    """Other padding, or two same-shape tensors swapped, move the logits far beyond the 1e-5 above."""
    io = np.load(ZOO_IO)
    x = ms.Tensor(io["x_nchw"])
    tf_pad = load_model(str(ZOO_CKPT), padding="tf_same")  # 96 px is even: stride-2 convs pad differently
    assert np.abs(tf_pad(x).asnumpy() - io["logits"]).max() > 1e-2
    net = load_model(str(ZOO_CKPT))
    bn = net.features[4].layers[4]  # a depthwise BN in the middle of the network
    gamma, beta = bn.gamma.asnumpy(), bn.beta.asnumpy()
    bn.gamma.set_data(ms.Tensor(beta))
    bn.beta.set_data(ms.Tensor(gamma))
    assert np.abs(net(x).asnumpy() - io["logits"]).max() > 1e-2


@pytest.mark.numerics
@pytest.mark.parametrize("kind", VARIANTS)
def test_every_layout_loads(kind, tmp_path, pynative):
    path = _variant(kind, tmp_path)
    _, meta = read_checkpoint(path)
    assert meta["source"] == "mindspore-modelzoo"
    assert meta["source_format"] == ("train-network" if "train" in kind else "network")
    assert meta["source_names"] == ("prefixed" if kind.startswith("prefixed") else "plain")
    io = np.load(ZOO_IO)
    net = load_model(path)
    np.testing.assert_allclose(net(ms.Tensor(io["x_nchw"])).asnumpy(), io["logits"], rtol=0, atol=LOGIT_ATOL)


@pytest.mark.numerics
def test_load_weights_from_path_and_from_mindspore_dict(pynative):
    io = np.load(ZOO_IO)
    for source in (str(ZOO_CKPT), ms.load_checkpoint(str(ZOO_CKPT))):  # ModelZoo's own load_checkpoint dict
        net = MobileNetV2(0.35, num_classes=10)
        report = load_weights(net, source)
        assert len(report["loaded"]) == 262
        net.set_train(False)
        np.testing.assert_allclose(net(ms.Tensor(io["x_nchw"])).asnumpy(), io["logits"], rtol=0, atol=LOGIT_ATOL)


# ----------------------------------------------------------------------------- tools
def _ten_class_folder(root: Path, size: int = 40) -> Path:
    """val/<c0..c9>/ with two random-colour JPEGs each: the fixture has 10 classes."""
    from PIL import Image

    rng = np.random.default_rng(0)
    for c in range(10):
        folder = root / "val" / f"c{c}"
        folder.mkdir(parents=True)
        for i in range(2):
            pixels = rng.integers(0, 256, (size, size + 8 * i, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.jpg", quality=95)
    return root


def test_validate_scores_a_modelzoo_file_as_the_same_weights_under_our_names(tmp_path):
    """validate.py on a ModelZoo file == on the same tensors saved under this project's names."""
    from mindcv_mnv2.config import load_config
    from mindcv_mnv2.engine.validation import validate
    from mindcv_mnv2.models.registry import model_defaults

    data = _ten_class_folder(tmp_path / "data")
    ours = str(tmp_path / "ours.ckpt")
    save_checkpoint(ours, extract_model_state(read_checkpoint(str(ZOO_CKPT))[0]))  # MindCV-style, no meta
    base = load_config(overrides=dict(model="mobilenet_v2_035", device_target="CPU", data_dir=str(data), mode=1,
                                      image_resize=32, batch_size=8, num_parallel_workers=1),
                       model_defaults=model_defaults)
    zoo = validate(base.replace(ckpt_path=str(ZOO_CKPT)))
    ref = validate(base.replace(ckpt_path=ours))
    assert zoo["num_images"] == 20
    assert zoo["correct_top1"] == ref["correct_top1"] and zoo["correct_top5"] == ref["correct_top5"]
    assert zoo["loss"] == pytest.approx(ref["loss"], rel=1e-6)


def test_predict_takes_a_modelzoo_file(tmp_path):
    from mindcv_mnv2.predict import predict

    data = _ten_class_folder(tmp_path / "data")
    results = predict(str(ZOO_CKPT), [str(data / "val" / "c0")], top_k=3)
    assert len(results) == 2 and all(len(r["top_k"]) == 3 and 0 <= r["top_k"][0]["index"] < 10 for r in results)


def _train_cfg(data_dir, run_dir, **over):
    from mindcv_mnv2.config import load_config
    from mindcv_mnv2.models.registry import model_defaults

    base = dict(model="mobilenet_v2_035", device_target="CPU", data_dir=str(data_dir), ckpt_save_dir=str(run_dir),
                image_resize=32, batch_size=8, epoch_size=1, num_parallel_workers=1, mode=1,
                ckpt_path=str(ZOO_CKPT), val_while_train=False)
    base.update(over)
    return load_config(overrides=base, model_defaults=model_defaults)


def test_ckpt_path_fine_tunes_from_a_modelzoo_file(tiny_imagefolder, tmp_path):  # noqa: F811
    """--ckpt_path modelzoo.ckpt onto 3 classes: every backbone tensor from the file, a fresh classifier."""
    from mindcv_mnv2.engine.trainer import Trainer

    trainer = Trainer(_train_cfg(tiny_imagefolder, tmp_path / "run"))
    state = extract_model_state(read_checkpoint(str(ZOO_CKPT))[0])
    params = {p.name: p.asnumpy() for p in trainer.net.get_parameters()}
    backbone = [n for n in params if not n.startswith("classifier.")]
    assert len(backbone) == 260
    for name in backbone:
        np.testing.assert_array_equal(params[name], state[name], err_msg=name)
    assert params["classifier.1.weight"].shape == (3, 1280)


def test_resuming_a_modelzoo_run_is_refused_in_one_line(tiny_imagefolder, tmp_path):  # noqa: F811
    from mindcv_mnv2.engine.trainer import Trainer

    with pytest.raises(CheckpointError) as e:
        Trainer(_train_cfg(tiny_imagefolder, tmp_path / "run", resume_opt=True))
    msg = str(e.value)
    assert str(ZOO_CKPT) in msg and "ModelZoo" in msg and "without --resume_opt" in msg and "\n" not in msg


# ----------------------------------------------------------------------------- bad files
def test_truncated_modelzoo_file_is_a_clear_error(tmp_path):
    data = ZOO_CKPT.read_bytes()
    path = tmp_path / "cut.ckpt"
    path.write_bytes(data[:len(data) // 2])
    for load in (read_checkpoint, load_model):
        with pytest.raises(CheckpointError, match="truncated, corrupt") as e:
            load(str(path))
        assert str(path) in str(e.value) and e.value.__cause__ is None


def test_modelzoo_file_problems_are_named_in_our_terms(tmp_path):
    raw = {k: v for k, v in _raw().items() if k != "features.18.features.1.moving_variance"}
    path = str(tmp_path / "short.ckpt")
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in raw.items()], path)
    with pytest.raises(CheckpointError, match=r"missing from checkpoint \(1\): features.21.moving_variance"):
        load_weights(MobileNetV2(0.35, num_classes=10), path)
    with pytest.raises(CheckpointError, match="checkpoint is width 0.35.*mobilenet_v2_035"):
        load_weights(MobileNetV2(1.0, num_classes=10), str(ZOO_CKPT))
    # a ModelZoo network of a width the registry does not have (0.6): recognised by name, refused by shape
    odd = {zoo: np.zeros(shape, np.float32) for zoo, (_, shape) in mz.name_map(0.6, 10).items()}
    odd_path = str(tmp_path / "w060.ckpt")
    ms.save_checkpoint([{"name": k, "data": ms.Tensor(v)} for k, v in odd.items()], odd_path)
    with pytest.raises(CheckpointError, match="cannot recognise a MobileNetV2 of width"):
        load_model(odd_path)
