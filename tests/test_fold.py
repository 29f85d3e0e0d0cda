"""Evaluation with BatchNorm folded into the convolutions: the unfolded network's outputs, to rounding."""
from __future__ import annotations

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindcv_mnv2.engine.evaluator import EvalNet  # noqa: E402
from mindcv_mnv2.models import MobileNetV2  # noqa: E402
from mindcv_mnv2.models.fold import FoldedMobileNetV2, fold_conv_bn  # noqa: E402
from mindcv_mnv2.ops import swap_depthwise  # noqa: E402
from mindcv_mnv2.ops.folded import (fused_block, fused_conv, fused_depthwise, fused_epilogue,  # noqa: E402
                                    fused_head)

pytestmark = [pytest.mark.usefixtures("pynative"), pytest.mark.numerics]  # PyNative: no graph compiles


def _photos(first, n, size=64):
    """Real photos (ai-benchmark's), normalised NCHW: eval-mode outputs then differ between images."""
    from PIL import Image

    from ._data_fixtures import ai_benchmark_photos

    out = []
    for path in ai_benchmark_photos()[first:first + n]:
        with Image.open(path) as im:
            a = np.asarray(im.convert("RGB").resize((size, size), Image.BILINEAR), np.float32)
        out.append(((a - 120.0) / 60.0).transpose(2, 0, 1))
    return np.stack(out)

# Folding rounds every layer's weights once more and re-associates its sums; a network whose output
# depends on its input (as here) amplifies such rounding as it amplifies input noise. The yardstick
# is the output's response to a 2-ulp relative change of the input: measured fold errors are 0.7-2.6x
# that response; 10x bounds them, while one layer that loses its folded shift is far outside (checked
# at the end of the test, so the check is shown to fail when folding is wrong).
FACTOR = 10.0


def _trained_like(width, seed=0, **kw):
    """A network whose outputs depend on the input, as a trained one's do (tests/_nets.py)."""
    from ._nets import make_input_sensitive

    ms.set_seed(seed)
    return make_input_sensitive(MobileNetV2(width, num_classes=7, drop_rate=0.0, **kw), _photos(10, 8), seed)


def test_fold_conv_bn_is_the_affine_map():
    rng = np.random.default_rng(1)
    w = rng.normal(size=(4, 3, 3, 3)).astype(np.float32)
    gamma, beta, mean = (rng.normal(size=4).astype(np.float32) for _ in range(3))
    var = rng.uniform(0.5, 2, 4).astype(np.float32)
    fw, fb = fold_conv_bn(w, gamma, beta, mean, var, 1e-5)
    x = rng.normal(size=(3, 3, 3))
    conv = np.tensordot(w, x, axes=3)  # the conv's output at one position, per channel
    bn = (conv - mean) / np.sqrt(var + 1e-5) * gamma + beta
    np.testing.assert_allclose(np.tensordot(fw, x, axes=3) + fb, bn, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("width, kw", [(0.35, {}), (1.0, {}), (0.35, {"output_stride": 8}),
                                       (0.35, {"padding": "tf_same"})], ids=["0.35", "1.0", "0.35-os8", "0.35-tf"])
def test_folded_network_equals_unfolded(width, kw):
    net = _trained_like(width, **kw)
    x = ms.Tensor(_photos(0, 3))
    ref, ref_maps = net(x).asnumpy(), net.forward_features(x).asnumpy()
    assert np.abs(ref[0] - ref[1]).max() > 0.1 * np.abs(ref).max()  # the images are told apart
    x2 = ms.Tensor((x.asnumpy() * np.float32(1 + 2 ** -22)).astype(np.float32))
    bound = {"logits": FACTOR * np.abs(net(x2).asnumpy() - ref).max(),
             "maps": FACTOR * np.abs(net.forward_features(x2).asnumpy() - ref_maps).max()}
    assert 0 < bound["logits"] < 1e-3 * np.abs(ref).max()
    plain = FoldedMobileNetV2(net)
    plain.set_train(False)
    swap_depthwise(net)  # as on CPU: the fused C++ kernels take the swapped network
    per_layer = FoldedMobileNetV2(net, fused_epilogue, fused_depthwise)  # MindSpore's 1x1 convs
    fused = FoldedMobileNetV2(net, fused_epilogue, fused_depthwise, fused_conv, fused_block, fused_head)  # EvalNet's
    per_layer.set_train(False)
    fused.set_train(False)
    kinds = [type(c).__name__ for c in fused.features]
    if not kw:  # every block is one operator, and the stem and the last conv are C++ products
        assert kinds[0] == kinds[-1] == "AotConvBias" and kinds[1] == "AotBlockNoExpand"
        assert set(kinds[2:-1]) == {"AotBlock"}, kinds
    else:  # dilated (os8) and TF-padded layers keep the per-layer path: still exact, checked below
        assert "_FoldedBlock" in kinds and "AotBlock" in kinds, kinds

    def errors(folded):
        return {"logits": np.abs(folded(x).asnumpy() - ref).max(),
                "maps": np.abs(folded.features(x).asnumpy() - ref_maps).max()}

    for name, folded in (("plain ops", plain), ("C++ per layer", per_layer), ("C++ blocks", fused)):
        err = errors(folded)
        assert all(err[k] <= bound[k] for k in err), (name, err, bound)
    cell = fused._sources[len(fused._sources) // 2][0]
    cell.bias.set_data(ms.Tensor(np.zeros(cell.bias.shape, np.float32)))  # one layer's folded shift lost
    assert errors(fused)["logits"] > 10 * bound["logits"]  # (the fused block reads the same Parameter)
    assert not any(p.name.endswith("gamma") for p in fused.get_parameters())  # no BatchNorm left


def test_eval_net_folds_on_the_cpu_kernel_and_refreshes_from_ema():
    net = _trained_like(0.35)
    x = _photos(3, 2)
    ema = {"ema." + p.name: ms.Tensor(p.asnumpy() * 0.9) for p in net.get_parameters()}  # other weights
    other = _trained_like(0.35)
    for p in other.get_parameters():
        p.set_data(ema["ema." + p.name])
    want = other(ms.Tensor(x)).asnumpy()
    swap_depthwise(net)
    ev = EvalNet(net)
    assert ev.folded
    ev.load_from(ema, prefix="ema.")
    got = ev(x)
    assert np.abs(got - want).max() <= 1e-3 * np.abs(want).max()  # EMA weights, not the raw ones (0.9x)
    assert np.abs(got - net(ms.Tensor(x)).asnumpy()).max() > 1e-2 * np.abs(want).max()
