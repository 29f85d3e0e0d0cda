"""MobileNetV2 (Sandler et al., 2018) with MindCV's parameter names, shapes, init and numerics.

Cell layout (and therefore checkpoint names) follows MindCV exactly:
``features.0`` stem conv, ``features.1`` its BN, ``features.2`` ReLU6, ``features.3`` ..
``features.19`` inverted-residual blocks (``features.N.layers.K``), ``features.20`` last 1x1
conv, ``features.21`` its BN, ``features.22`` ReLU6; ``classifier.0`` Dropout,
``classifier.1`` Dense.

Feature indices (entries of ``features``) and their output strides at ``output_stride=32``:

====== ======= ================================
index  stride  channels (width 1.0)
====== ======= ================================
2      2       32 (stem)
3      2       16
5      4       24
8      8       32
12     16      64
15     16      96
18     32      160
19     32      320
22     32      1280 (last conv, = forward_features)
====== ======= ================================

``DEFAULT_OUT_INDICES = (5, 8, 15, 19)`` gives strides 4/8/16/32 (mmseg's out_indices
(1, 2, 4, 6) of its stage list). With ``output_stride`` 16 or 8 the later stages keep stride 1
and dilate their depthwise convs instead (mmseg's MobileNetV2-D8/D16), so the strides of those
indices cap at ``output_stride``; ``net.feature_info`` lists the real strides.
"""
from __future__ import annotations

import math
from typing import Dict, List, NamedTuple, Sequence, Tuple

import mindspore as ms
from mindspore import nn, ops
from mindspore.common.initializer import Normal

from ..constants import DEFAULT_DROP_RATE, OUTPUT_STRIDES, PADDINGS

__all__ = ["MobileNetV2", "MobileNetV2Features", "GlobalAvgPool", "make_divisible", "block_plan", "param_shapes",
           "INVERTED_RESIDUAL_SETTING", "DEFAULT_OUT_INDICES"]

# t (expansion), c (output channels at width 1.0), n (repeats), s (stride of the first block)
INVERTED_RESIDUAL_SETTING: Tuple[Tuple[int, int, int, int], ...] = (
    # t, c, n, s
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)

DEFAULT_OUT_INDICES: Tuple[int, ...] = (5, 8, 15, 19)


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    """Round a channel count to a multiple of `divisor`, never more than 10% below `v`."""
    min_value = divisor if min_value is None else min_value
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:  # rounding down must not remove more than 10% of the channels
        new_v += divisor
    return new_v


class Block(NamedTuple):
    """One inverted-residual block of the plan."""

    in_ch: int
    out_ch: int
    stride: int
    expand: int
    dilation: int
    net_stride: int  # cumulative stride of the block's output


def block_plan(width_mult: float = 1.0, output_stride: int = 32, round_nearest: int = 8) -> List[Block]:
    """The 17 inverted-residual blocks (features.3 .. features.19) of a width, in order."""
    ch = make_divisible(32 * width_mult, round_nearest)
    cur_stride, dilation, plan = 2, 1, []
    for t, c, n, s in INVERTED_RESIDUAL_SETTING:
        out_ch = make_divisible(c * width_mult, round_nearest)
        if s > 1 and cur_stride >= output_stride:
            # mmseg D8/D16: keep the resolution and dilate the whole stage instead
            dilation *= s
            s = 1
        cur_stride *= s
        for i in range(n):
            plan.append(Block(ch, out_ch, s if i == 0 else 1, t, dilation, cur_stride))
            ch = out_ch
    return plan


def param_shapes(width_mult: float = 1.0, num_classes: int = 1000, in_channels: int = 3,
                 round_nearest: int = 8) -> Dict[str, Tuple[int, ...]]:
    """Every parameter name and shape of a MobileNetV2, in network order, without building it."""
    def bn(prefix: str, ch: int) -> None:
        for suffix in ("moving_mean", "moving_variance", "gamma", "beta"):
            shapes[f"{prefix}.{suffix}"] = (ch,)

    shapes: Dict[str, Tuple[int, ...]] = {}
    stem = make_divisible(32 * width_mult, round_nearest)
    last = make_divisible(1280 * max(1.0, width_mult), round_nearest)
    shapes["features.0.weight"] = (stem, in_channels, 3, 3)
    bn("features.1", stem)
    for i, blk in enumerate(block_plan(width_mult, 32, round_nearest)):
        p = f"features.{3 + i}.layers"
        hidden, k = round(blk.in_ch * blk.expand), 0
        if blk.expand != 1:
            shapes[f"{p}.0.weight"] = (hidden, blk.in_ch, 1, 1)
            bn(f"{p}.1", hidden)
            k = 3
        shapes[f"{p}.{k}.weight"] = (hidden, 1, 3, 3)
        bn(f"{p}.{k + 1}", hidden)
        shapes[f"{p}.{k + 3}.weight"] = (blk.out_ch, hidden, 1, 1)
        bn(f"{p}.{k + 4}", blk.out_ch)
    shapes["features.20.weight"] = (last, make_divisible(320 * width_mult, round_nearest), 1, 1)
    bn("features.21", last)
    shapes["classifier.1.weight"] = (num_classes, last)
    shapes["classifier.1.bias"] = (num_classes,)
    return shapes


class TFSameConv2d(nn.Conv2d):
    """Conv2d with TensorFlow 'SAME' padding, for weights trained in TensorFlow/Keras.

    MindSpore's pad_mode="same" pads exactly as TF does (an odd total puts the extra row and
    column at the bottom/right), for any input size, and exports to MINDIR and ONNX. It holds
    exactly the parameters of nn.Conv2d, so names and shapes are unchanged.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1, group: int = 1, weight_init=None) -> None:
        super().__init__(in_channels, out_channels, kernel_size, stride, pad_mode="same",
                         dilation=dilation, group=group, has_bias=False, weight_init=weight_init)


def _conv(in_ch: int, out_ch: int, kernel: int, stride: int = 1, dilation: int = 1,
          group: int = 1, padding: str = "symmetric") -> nn.Conv2d:
    """A bias-free conv with MindCV's He-normal init (fan-out); tf_same only where it differs."""
    sigma = math.sqrt(2.0 / (kernel * kernel * out_ch))
    init = Normal(sigma=sigma, mean=0.0)
    if padding == "tf_same" and kernel > 1 and stride > 1:
        # For stride 1 TF SAME with an odd kernel is symmetric; only strided convs differ.
        return TFSameConv2d(in_ch, out_ch, kernel, stride, dilation, group, weight_init=init)
    pad = (kernel - 1) // 2 * dilation
    return nn.Conv2d(in_ch, out_ch, kernel, stride, pad_mode="pad", padding=pad, dilation=dilation,
                     group=group, has_bias=False, weight_init=init)


def _bn(channels: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(channels, eps=1e-5, momentum=0.9)


class InvertedResidual(nn.Cell):
    """Expand 1x1 -> depthwise 3x3 -> linear project 1x1, with a residual when shapes allow."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand_ratio: int,
                 dilation: int = 1, padding: str = "symmetric") -> None:
        super().__init__()
        hidden = round(in_ch * expand_ratio)  # MindCV: not rounded to a multiple of 8
        self.use_res_connect = stride == 1 and in_ch == out_ch
        layers: List[nn.Cell] = []
        if expand_ratio != 1:
            layers += [_conv(in_ch, hidden, 1), _bn(hidden), nn.ReLU6()]
        layers += [
            _conv(hidden, hidden, 3, stride, dilation, group=hidden, padding=padding),
            _bn(hidden),
            nn.ReLU6(),
            _conv(hidden, out_ch, 1),
            _bn(out_ch),
        ]
        self.layers = nn.SequentialCell(layers)

    def construct(self, x):
        if self.use_res_connect:
            return x + self.layers(x)
        return self.layers(x)


class GlobalAvgPool(nn.Cell):
    """(N, C, H, W) -> (N, C): the mean over each channel's plane (a cell, so a device may swap it: ops.pooling)."""

    def construct(self, x):
        return ops.mean(x, (2, 3), False)


class MobileNetV2(nn.Cell):
    """MobileNetV2 classifier; parameter names and numerics identical to MindCV's."""

    def __init__(self, width_mult: float = 1.0, num_classes: int = 1000, in_channels: int = 3,
                 drop_rate: float = DEFAULT_DROP_RATE, padding: str = "symmetric", output_stride: int = 32,
                 round_nearest: int = 8) -> None:
        super().__init__()
        _check_args(width_mult, num_classes, in_channels, drop_rate, padding, output_stride)
        self.width_mult = float(width_mult)
        self.num_classes = int(num_classes)
        self.in_channels = int(in_channels)
        self.drop_rate = float(drop_rate)
        self.padding = padding
        self.output_stride = int(output_stride)
        self.round_nearest = int(round_nearest)

        stem_ch = make_divisible(32 * width_mult, round_nearest)
        self.num_features = make_divisible(1280 * max(1.0, width_mult), round_nearest)
        features: List[nn.Cell] = [_conv(in_channels, stem_ch, 3, 2, padding=padding),
                                   _bn(stem_ch), nn.ReLU6()]
        info: List[Dict[str, int]] = [{"index": 2, "stride": 2, "channels": stem_ch}]
        for blk in block_plan(width_mult, output_stride, round_nearest):
            features.append(InvertedResidual(blk.in_ch, blk.out_ch, blk.stride, blk.expand,
                                             blk.dilation, padding))
            info.append({"index": len(features) - 1, "stride": blk.net_stride, "channels": blk.out_ch})
        features += [_conv(info[-1]["channels"], self.num_features, 1), _bn(self.num_features),
                     nn.ReLU6()]
        info.append({"index": len(features) - 1, "stride": info[-1]["stride"],
                     "channels": self.num_features})
        self.feature_info = info
        self.features = nn.SequentialCell(features)
        self.pool = GlobalAvgPool()
        self.classifier = nn.SequentialCell([
            nn.Dropout(p=self.drop_rate),
            nn.Dense(self.num_features, self.num_classes, weight_init=Normal(sigma=0.01, mean=0.0),
                     bias_init="zeros"),
        ])

    def forward_features(self, x):
        """Feature map after the last 1x1 conv + BN + ReLU6 (before pooling)."""
        return self.features(x)

    def forward_head(self, x):
        """Global average pool, dropout and the classifier on a feature map."""
        return self.classifier(self.pool(x))

    def construct(self, x):
        x = self.forward_features(x)
        return self.forward_head(x)

    def extract(self, x: ms.Tensor, out_indices: Sequence[int] = DEFAULT_OUT_INDICES) -> List[ms.Tensor]:
        """Outputs of the chosen `features` entries (PyNative; use MobileNetV2Features in graph mode)."""
        wanted = _check_indices(out_indices, len(self.features))
        outs = []
        for i, cell in enumerate(self.features):
            x = cell(x)
            if i in wanted:
                outs.append(x)
            if i >= wanted[-1]:
                break
        return outs


class MobileNetV2Features(nn.Cell):
    """Backbone view of a MobileNetV2: returns the feature maps at `out_indices` (graph-safe).

    Shares the parameters (and their names) of `net.features`, so checkpoints load into it with
    ``load_weights(..., strict=False)`` or by loading into `net` first.
    """

    def __init__(self, net: MobileNetV2, out_indices: Sequence[int] = DEFAULT_OUT_INDICES) -> None:
        super().__init__()
        self.out_indices = _check_indices(out_indices, len(net.features))
        self.features = net.features
        self.last = self.out_indices[-1]
        by_index = {f["index"]: f for f in net.feature_info}
        self.feature_info = [by_index.get(i, {"index": i}) for i in self.out_indices]

    def construct(self, x):
        outs = ()
        i = 0
        for cell in self.features:
            if i <= self.last:
                x = cell(x)
                if i in self.out_indices:
                    outs = outs + (x,)
            i = i + 1
        return outs


def _check_indices(out_indices: Sequence[int], n: int) -> Tuple[int, ...]:
    idx = tuple(sorted(set(int(i) for i in out_indices)))
    if not idx or idx[0] < 0 or idx[-1] >= n:
        raise ValueError(f"out_indices {tuple(out_indices)} must be non-empty indices into "
                         f"features (0..{n - 1}); e.g. {DEFAULT_OUT_INDICES} for strides 4/8/16/32")
    return idx


def _check_args(width_mult: float, num_classes: int, in_channels: int, drop_rate: float,
                padding: str, output_stride: int) -> None:
    if not width_mult > 0:
        raise ValueError(f"width_mult must be > 0, got {width_mult}")
    if int(num_classes) < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if int(in_channels) < 1:
        raise ValueError(f"in_channels must be >= 1, got {in_channels}")
    if not 0.0 <= drop_rate < 1.0:
        raise ValueError(f"drop_rate must be in [0, 1), got {drop_rate}")
    if padding not in PADDINGS:
        raise ValueError(f"padding must be one of {PADDINGS}, got {padding!r}")
    if output_stride not in OUTPUT_STRIDES:
        raise ValueError(f"output_stride must be one of {OUTPUT_STRIDES}, got {output_stride}")
