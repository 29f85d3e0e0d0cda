"""MobileNetV2: MindCV parameter parity, shapes, gradients, padding modes, output stride, summary."""
from __future__ import annotations

import json

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
from mindspore import nn  # noqa: E402

from mindcv_mnv2.models import (MobileNetV2, MobileNetV2Features, UnknownModelError,  # noqa: E402
                                create_model)
from mindcv_mnv2.models.mobilenetv2 import TFSameConv2d, param_shapes  # noqa: E402
from mindcv_mnv2.summary import layer_table, main as summary_main, model_summary  # noqa: E402

pytestmark = [pytest.mark.usefixtures("ms_cpu"), pytest.mark.numerics]

MINDCV_TOTALS = {"075": (0.75, 2_663_064, 2_636_424), "100": (1.0, 3_538_984, 3_504_872),
                 "140": (1.4, 6_156_712, 6_108_776)}


def _rand(*shape, seed=0):
    return ms.Tensor(np.random.RandomState(seed).standard_normal(shape).astype(np.float32))


def _read_tsv(path):
    rows = []
    for line in path.read_text().splitlines():
        if line and not line.startswith("#"):
            name, shape, kind = line.split("\t")
            rows.append((name, tuple(int(d) for d in shape.strip("()").split(",") if d.strip()), kind))
    return rows


def _state(net):
    return {p.name: p.asnumpy() for p in net.get_parameters()}


@pytest.fixture(scope="module")
def net035():
    """Width 0.35, 10 classes, eval mode, shared by the PyNative shape tests."""
    net = MobileNetV2(0.35, num_classes=10)
    net.set_train(False)
    return net


# ----------------------------------------------------------------------------- MindCV parity
@pytest.mark.parametrize("tag", sorted(MINDCV_TOTALS))
def test_parameter_names_shapes_match_mindcv(tag, mindcv_fixtures):
    width, total, trainable = MINDCV_TOTALS[tag]
    expected = _read_tsv(mindcv_fixtures / f"params_mobilenet_v2_{tag}.tsv")
    net = MobileNetV2(width)
    got = [(p.name, tuple(p.shape), "trainable" if p.requires_grad else "buffer") for p in net.get_parameters()]
    assert got == expected
    assert len(got) == 262
    assert sum(int(np.prod(s)) for _, s, _ in got) == total
    assert sum(int(np.prod(p.shape)) for p in net.trainable_params()) == trainable
    assert dict((n, s) for n, s, _ in got) == param_shapes(width)  # the analytic plan agrees


@pytest.mark.parametrize("width,total", [(0.35, 1_691_208), (0.5, 1_987_224), (1.3, 5_431_048)])
def test_other_widths_build(width, total):
    net = MobileNetV2(width)
    shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    assert len(shapes) == 262
    assert shapes == param_shapes(width)
    assert sum(int(np.prod(s)) for s in shapes.values()) == total
    assert model_summary(width, 224)["params_total"] == total


def test_mindcv_checkpoint_logits_match(mindcv_fixtures, pynative):
    from mindcv_mnv2.checkpoint import load_model
    io = np.load(mindcv_fixtures / "mindcv_mobilenet_v2_035_trained_io.npz")
    net = load_model(str(mindcv_fixtures / "mindcv_mobilenet_v2_035_trained.ckpt"))
    assert (net.width_mult, net.num_classes) == (0.35, io["logits"].shape[1])
    np.testing.assert_allclose(net(ms.Tensor(io["x_nchw"])).asnumpy(), io["logits"], rtol=0, atol=1e-5)
    ms.set_context(mode=ms.GRAPH_MODE)  # the `pynative` fixture restores the mode afterwards
    np.testing.assert_allclose(net(ms.Tensor(io["x_nchw"])).asnumpy(), io["logits"], rtol=0, atol=1e-5)


# ----------------------------------------------------------------------------- shapes / numerics
@pytest.mark.parametrize("size", [32, 64, 96, 97])
def test_output_shape_any_size(net035, size, pynative):
    assert net035(_rand(2, 3, size, size)).shape == (2, 10)
    assert net035.forward_features(_rand(1, 3, size, size)).shape == (1, 1280, -(-size // 32), -(-size // 32))


def test_graph_mode_non_square_and_in_channels(graph):
    net = MobileNetV2(0.35, num_classes=5, in_channels=1, padding="tf_same")
    net.set_train(False)
    assert net(_rand(1, 1, 64, 48)).shape == (1, 5)


class _NetWithLoss(nn.Cell):
    def __init__(self, net):
        super().__init__(auto_prefix=False)  # keep the network's parameter names
        self.net = net
        self.loss = nn.CrossEntropyLoss()

    def construct(self, x, y):
        return self.loss(self.net(x), y)


def test_every_trainable_parameter_gets_gradient(pynative):
    ms.set_seed(0)
    net = MobileNetV2(0.35, num_classes=10, drop_rate=0.0)
    net.set_train(True)
    params = net.trainable_params()
    grad_fn = ms.value_and_grad(_NetWithLoss(net), None, params)
    loss, grads = grad_fn(_rand(2, 3, 48, 48), ms.Tensor(np.array([1, 7], np.int32)))
    assert np.isfinite(loss.asnumpy())
    assert len(grads) == len(params) == 158
    zero = [p.name for p, g in zip(params, grads) if not np.any(g.asnumpy() != 0)]
    assert zero == []


def _seeded_build():
    ms.set_seed(7)
    np.random.seed(7)
    net = MobileNetV2(0.35, num_classes=10, drop_rate=0.0)
    net.set_train(True)  # batch statistics: logits of a useful magnitude at init
    return net, net(_rand(2, 3, 32, 32)).asnumpy()


def test_init_follows_mindcv_distributions():
    """MindCV's init (reference: ../mindcv.md): conv N(0, sqrt(2 / (k*k*out))), dense N(0, 0.01), BN 1/0."""
    ms.set_seed(3)
    net = MobileNetV2(1.0, num_classes=1000)
    for p in net.get_parameters():
        w = p.asnumpy()
        if p.name == "classifier.1.weight":
            sigma = 0.01
        elif p.name.endswith(".weight") and w.ndim == 4:
            sigma = np.sqrt(2.0 / (w.shape[2] * w.shape[3] * w.shape[0]))
        else:
            expected = {"gamma": 1.0, "beta": 0.0, "moving_mean": 0.0, "moving_variance": 1.0, "bias": 0.0}
            np.testing.assert_array_equal(w, np.full_like(w, expected[p.name.rsplit(".", 1)[1]]), err_msg=p.name)
            continue
        # the sample std of n normal draws is within ~4.5/sqrt(2n) of sigma with probability > 1 - 1e-5
        assert abs(w.std() / sigma - 1) < 4.5 / np.sqrt(2 * w.size) + 1e-3, (p.name, w.std(), sigma)
        assert abs(w.mean()) < 4.5 * sigma / np.sqrt(w.size), p.name


def test_seeded_init_and_forward_are_deterministic(pynative):
    """The same seed gives the same weights and the same forward bits (within one process and CPU)."""
    net, y = _seeded_build()
    net2, y2 = _seeded_build()
    assert all(np.array_equal(a.asnumpy(), b.asnumpy()) for a, b in zip(net.get_parameters(), net2.get_parameters()))
    np.testing.assert_array_equal(y, y2)
    assert np.abs(y[0] - y[1]).max() > 1e-3  # a real forward pass: the two inputs give different logits


def test_init_follows_mindcv(pynative):
    net = MobileNetV2(1.0)
    w = net.features[20].weight.asnumpy()  # 1x1 conv, fan-out 1280: sigma sqrt(2/1280)
    assert abs(w.std() - np.sqrt(2 / 1280)) < 0.02 * np.sqrt(2 / 1280)
    fc = net.classifier[1]
    assert abs(fc.weight.asnumpy().std() - 0.01) < 0.0005 and not fc.bias.asnumpy().any()
    bn = net.features[1]
    assert (bn.gamma.asnumpy() == 1).all() and not bn.beta.asnumpy().any()
    assert bn.eps == pytest.approx(1e-5)
    # MindCV's momentum 0.9: moving = 0.9 * moving + 0.1 * batch statistic
    from mindcv_mnv2.models.mobilenetv2 import _bn
    cell = _bn(4)
    cell.set_train(True)
    x = _rand(2, 4, 3, 3)
    cell(x)
    np.testing.assert_allclose(cell.moving_mean.asnumpy(), 0.1 * x.asnumpy().mean(axis=(0, 2, 3)),
                               rtol=1e-5, atol=1e-7)
    assert isinstance(net.features[2], nn.ReLU6) and isinstance(net.classifier[0], nn.Dropout)


# ----------------------------------------------------------------------------- tf_same padding
def _conv_valid_numpy(x, w, stride):
    n, c, h, wd = x.shape
    o, _, k, _ = w.shape
    oh, ow = (h - k) // stride + 1, (wd - k) // stride + 1
    out = np.zeros((n, o, oh, ow), np.float64)
    for i in range(oh):
        for j in range(ow):
            patch = x[:, :, i * stride:i * stride + k, j * stride:j * stride + k]
            out[:, :, i, j] = np.einsum("nckl,ockl->no", patch, w)
    return out


def test_tf_same_conv_matches_reference_padding(pynative):
    conv = TFSameConv2d(2, 3, 3, stride=2)
    x = np.random.RandomState(1).standard_normal((1, 2, 6, 7)).astype(np.float32)
    w = conv.weight.asnumpy()
    y = conv(ms.Tensor(x)).asnumpy()
    # TF SAME: out = ceil(n / 2); total pad = (out - 1) * 2 + 3 - n -> H 6: (0, 1); W 7: (1, 1)
    ref = _conv_valid_numpy(np.pad(x, ((0, 0), (0, 0), (0, 1), (1, 1))), w, 2)
    assert y.shape == (1, 3, 3, 4)
    np.testing.assert_allclose(y, ref, rtol=1e-5, atol=1e-5)
    sym = _conv_valid_numpy(np.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1))), w, 2)
    assert not np.allclose(y, sym, atol=1e-3)  # even height: differs from symmetric padding


def test_tf_same_model_same_names_and_differs_only_on_even_sizes(pynative):
    sym = MobileNetV2(0.35, num_classes=10)
    tf = MobileNetV2(0.35, num_classes=10, padding="tf_same")
    assert [(p.name, p.shape) for p in tf.get_parameters()] == [(p.name, p.shape) for p in sym.get_parameters()]
    assert sum(isinstance(c, TFSameConv2d) for _, c in tf.cells_and_names()) == 5  # stem + 4 strided dw
    from mindcv_mnv2.checkpoint import load_weights
    load_weights(tf, _state(sym))
    # train-mode BN keeps activations O(1), so padding differences are visible in the features
    sym.set_train(True)
    tf.set_train(True)
    even, odd = _rand(2, 3, 64, 64), _rand(2, 3, 97, 97)
    assert not np.allclose(tf.forward_features(even).asnumpy(), sym.forward_features(even).asnumpy(), atol=1e-3)
    # 97 px: every stride-2 layer sees an odd size, where SAME pads 1 on both sides
    np.testing.assert_allclose(tf.forward_features(odd).asnumpy(), sym.forward_features(odd).asnumpy(),
                               rtol=1e-4, atol=1e-5)


# ----------------------------------------------------------------------------- features / output stride
@pytest.mark.parametrize("os_, hw", [(32, [16, 8, 4, 2]), (16, [16, 8, 4, 4]), (8, [16, 8, 8, 8])])
def test_output_stride_feature_shapes(os_, hw, pynative):
    net = MobileNetV2(0.35, output_stride=os_)
    net.set_train(False)
    feats = MobileNetV2Features(net)
    # wrapping must not rename the shared parameters
    assert {p.name: tuple(p.shape) for p in net.get_parameters()} == param_shapes(0.35)
    assert [p.name for p in feats.get_parameters()] == [n for n in param_shapes(0.35) if n.startswith("features.")]
    outs = feats(_rand(1, 3, 64, 64))
    assert [o.shape for o in outs] == [(1, c, s, s) for c, s in zip((8, 16, 32, 112), hw)]
    assert [f["stride"] for f in feats.feature_info] == [64 // s for s in hw]
    ref = net.extract(_rand(1, 3, 64, 64), (5, 8, 15, 19))
    assert all(np.array_equal(a.asnumpy(), b.asnumpy()) for a, b in zip(outs, ref))
    assert net.forward_features(_rand(1, 3, 64, 64)).shape[2:] == (hw[-1], hw[-1])
    dilations = [net.features[i].layers[3].dilation for i in (9, 13, 16, 19)]
    expected = {32: [1, 1, 1, 1], 16: [1, 1, 2, 2], 8: [2, 2, 4, 4]}[os_]
    assert [d[-1] for d in dilations] == expected


def test_features_wrapper_graph_mode(graph):
    feats = MobileNetV2Features(MobileNetV2(0.35, output_stride=16), out_indices=(2, 5, 8, 15, 22))
    feats.set_train(False)
    outs = feats(_rand(1, 3, 64, 64))
    assert [o.shape for o in outs] == [(1, 16, 32, 32), (1, 8, 16, 16), (1, 16, 8, 8), (1, 32, 4, 4),
                                       (1, 1280, 4, 4)]


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="padding"):
        MobileNetV2(0.35, padding="same")
    with pytest.raises(ValueError, match="output_stride"):
        MobileNetV2(0.35, output_stride=4)
    with pytest.raises(ValueError, match="out_indices"):
        MobileNetV2Features(MobileNetV2(0.35), out_indices=(5, 40))


# ----------------------------------------------------------------------------- create_model
def test_create_model_by_name_and_kwargs():
    net = create_model("mobilenet_v2_050_160", num_classes=3, drop_rate=0.1, padding="tf_same", in_channels=1)
    assert (net.width_mult, net.num_classes, net.in_channels, net.padding) == (0.5, 3, 1, "tf_same")
    assert net.classifier[0].p == pytest.approx(0.1)
    with pytest.raises(UnknownModelError, match="mobilenet_v2_100") as e:
        create_model("mobilenet_v3_100")
    assert isinstance(e.value, ValueError) and "Valid names" in str(e.value)
    with pytest.raises(TypeError, match="width_mult"):
        create_model("mobilenet_v2_100", width_mult=0.5)


def test_load_pretrained_drops_classifier_with_warning(mindcv_fixtures, capsys):
    from mindcv_mnv2.checkpoint import load_pretrained, read_checkpoint

    ckpt = str(mindcv_fixtures / "mindcv_mobilenet_v2_035_trained.ckpt")
    net = create_model("mobilenet_v2_035", num_classes=10)
    load_pretrained(net, ckpt)
    assert "1000 classes" in capsys.readouterr().out
    tensors = read_checkpoint(ckpt)[0]
    np.testing.assert_array_equal(net.features[0].weight.asnumpy(), tensors["features.0.weight"])
    assert net.classifier[1].weight.shape == (10, 1280)
    same = create_model("mobilenet_v2_035")
    load_pretrained(same, ckpt)
    np.testing.assert_array_equal(same.classifier[1].weight.asnumpy(), tensors["classifier.1.weight"])


# ----------------------------------------------------------------------------- summary
def test_summary_tf_slim_figures():
    big = model_summary(1.0, 224, num_classes=1001)
    small = model_summary(0.35, 96, num_classes=1001)
    # TF-slim's table truncates MACs to whole millions (300.8 -> 300, 11.9 -> 11)
    assert big["macs"] // 10**6 == 300 and round(big["params_excl_bn"] / 1e6, 2) == 3.47
    assert small["macs"] // 10**6 == 11 and round(small["params_excl_bn"] / 1e6, 2) == 1.66


@pytest.mark.parametrize("width,total,trainable", MINDCV_TOTALS.values())
def test_summary_mindcv_counts(width, total, trainable):
    s = model_summary(width, 224)
    assert (s["params_total"], s["params_trainable"]) == (total, trainable)


def test_summary_layer_shapes_agree_with_network(net035, pynative):
    table = {r["name"]: r for r in layer_table(0.35, 97, num_classes=10)}
    outs = net035.extract(_rand(1, 3, 97, 97), range(3, 20))
    for i, out in zip(range(3, 20), outs):
        blk = net035.features[i].layers
        conv = f"features.{i}.layers.{len(blk) - 2}.weight"  # the projection conv
        assert table[conv]["out_hw"] == tuple(out.shape[2:]) and table[conv]["out_ch"] == out.shape[1]
    convs = {p.name: p.shape for p in net035.get_parameters() if p.name.endswith("weight")}
    assert {r["name"] + (".weight" if r["kind"] == "dense" else ""): r for r in table.values()}.keys() == convs.keys()
    assert sum(r["params"] for r in table.values()) == model_summary(0.35, 97, 10)["params_excl_bn"]


def test_summary_cli(capsys):
    assert summary_main(["--model", "mobilenet_v2_100", "--image_size", "224", "--num_classes", "1001", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["params_excl_bn"] == 3_472_041 and out["macs"] == model_summary(1.0, 224, 1001)["macs"]
    assert {"params_trainable", "params_total", "image_size", "num_classes"} <= out.keys()
    assert summary_main(["--all"]) == 0
    table = capsys.readouterr().out
    assert len([line for line in table.splitlines() if line.strip()[:1].isdigit()]) == 6 * 5
    assert summary_main(["--model", "resnet50"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown model 'resnet50'" in err[0]
