"""MindSpore ModelZoo / MindSpore Hub MobileNetV2 checkpoints under this project's tensor names.

ModelZoo's network (mindspore-ai/models ``official/cv/MobileNet/mobilenetv2/src/mobilenetV2.py``,
which MindSpore Hub's ``mobilenetv2`` entry builds too) computes exactly what ours does, layer for
layer: the same ``_make_divisible`` channel rounding (round_nearest 8, never 10% below), hidden
width ``round(in * t)``, last conv ``1280 * max(1, width)``, 3x3 convs with ``pad_mode="pad",
padding=1`` (our ``padding="symmetric"``), bias-free convs, ``BatchNorm2d`` with eps 1e-5 and
momentum 0.9, ReLU6, the same residual rule, a global mean, and ``Dense`` with a bias. Its head's
dropout (``has_dropout``, off by default) and optional Softmax/Sigmoid hold no parameters and do
not change the top-k, so the network here with ``padding="symmetric"`` gives its logits. Only the
names differ, by structure:

==================================  =====================================
ModelZoo                            this project (MindCV's names)
==================================  =====================================
features.0.features.{0,1}.*         features.{0,1}.*       (stem conv, BN)
features.B.conv.J.features.{0,1}.*  features.(B+2).layers.(3J + {0,1}).*  (ConvBNReLU J of block B)
features.B.conv.(n).*               features.(B+2).layers.(3n).*          (project conv; n ConvBNReLUs)
features.B.conv.(n+1).*             features.(B+2).layers.(3n+1).*        (its BN)
features.18.features.{0,1}.*        features.{20,21}.*     (last 1x1 conv, BN)
dense.{weight,bias}                 classifier.1.{weight,bias}
==================================  =====================================

Files come in three layouts, all recognised from the names: the network (``save_checkpoint(net)``,
ModelZoo's freeze-backbone runs, Hub downloads); the training network (``ModelCheckpoint``):
those plus ``moments.<name>``, ``learning_rate``, ``momentum``, ``global_step``; and either one
with ``backbone.``/``head.`` in front of the names (the two cells saved under a parent cell that
prefixes, i.e. without MobileNetV2Combine's ``auto_prefix=False``). Optimizer slots of ModelZoo
tensors are dropped here: they can initialise nothing, and resuming a ModelZoo run is not
supported. Its eval preprocessing squashes images to 256x256 before the 224 centre crop, where
this project's resizes the shorter side (``crop_pct`` 0.875): same mean/std and interpolation.
"""
from __future__ import annotations

import re
from typing import Any, Dict, Iterable, Mapping, Optional, Tuple

SOURCE = "mindspore-modelzoo"
_STEM = "features.0.features.0.weight"  # present in every ModelZoo MobileNetV2 file, in no other
_PREFIXES = {"features.": "backbone.", "dense.": "head."}  # the prefixed layout's parents
_OUR_LAYER = re.compile(r"features\.(\d+)\.layers\.(\d+)\.(.+)")


def detect(names: Iterable[str]) -> Optional[str]:
    """The layout ('plain' or 'prefixed') of a ModelZoo MobileNetV2's tensor names; None for other files."""
    names = set(names)
    if _STEM in names:
        return "plain"
    if _PREFIXES["features."] + _STEM in names:
        return "prefixed"
    return None


def name_map(width_mult: float = 1.0, num_classes: int = 1000, in_channels: int = 3,
             prefixed: bool = False) -> Dict[str, Tuple[str, Tuple[int, ...]]]:
    """{ModelZoo name: (our name, shape)} for every parameter of a width, from our param_shapes / block_plan."""
    from .models.mobilenetv2 import block_plan, param_shapes

    plan = block_plan(width_mult)
    first_block, last_conv = 3, 3 + len(plan)  # our features.N of block 0 and of the last 1x1 conv
    out: Dict[str, Tuple[str, Tuple[int, ...]]] = {}
    for ours, shape in param_shapes(width_mult, num_classes, in_channels).items():
        theirs = _modelzoo_name(ours, plan, first_block, last_conv)
        if prefixed:
            theirs = next(p for k, p in _PREFIXES.items() if theirs.startswith(k)) + theirs
        out[theirs] = (ours, shape)
    return out


def _modelzoo_name(ours: str, plan, first_block: int, last_conv: int) -> str:
    """ModelZoo's name of one of our parameter names (a rule per cell kind, see the module table)."""
    head, _, rest = ours.partition(".")
    if head == "classifier":
        return "dense." + rest.partition(".")[2]  # classifier.1.X: Dropout is entry 0, Dense entry 1
    index, _, rest = rest.partition(".")
    n = int(index)
    if n in (0, 1):  # stem conv, BN -> ConvBNReLU 0
        return f"features.0.features.{n}.{rest}"
    if n in (last_conv, last_conv + 1):  # last 1x1 conv, BN -> the final ConvBNReLU
        return f"features.{last_conv - 2}.features.{n - last_conv}.{rest}"
    m = _OUR_LAYER.fullmatch(ours)
    if m is None or not first_block <= n < last_conv:
        raise ValueError(f"no ModelZoo counterpart for parameter '{ours}'")
    block, k, suffix = n - first_block, int(m.group(2)), m.group(3)
    cbr = 2 if plan[block].expand != 1 else 1  # ConvBNReLU cells: (expand,) depthwise
    # Our layers are flat [conv, BN, ReLU6] * cbr + [project conv, BN]; ModelZoo groups each
    # triple into a ConvBNReLU (.features.{0,1,2}) and keeps the project conv and BN flat.
    where = f"{k // 3}.features.{k % 3}" if k < 3 * cbr else str(cbr + k - 3 * cbr)
    return f"features.{block + 1}.conv.{where}.{suffix}"


def translate(tensors: Mapping[str, Any]) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    """A ModelZoo file's tensors under our names plus what it was; other files come back unchanged with {}.

    ModelZoo tensors are renamed; their optimizer slots (``moments.<ModelZoo name>``...) are dropped;
    loop state (``global_step``, ``learning_rate``, ``momentum``) and names that fit no rule are kept
    as they are, so the loaders treat them as for any file (training state is ignored, anything else
    is reported as unexpected).
    """
    layout = detect(tensors)
    if layout is None:
        return dict(tensors), {}
    prefixed = layout == "prefixed"
    # Names do not depend on the width (only shapes do: load_weights and infer_width check those).
    mapping = {zoo: ours for zoo, (ours, _) in name_map(1.0, 1, prefixed=prefixed).items()}
    out: Dict[str, Any] = {}
    dropped = 0
    for name, value in tensors.items():
        if name in mapping:
            out[mapping[name]] = value
        elif "." in name and name.split(".", 1)[1] in mapping:  # moments.<name>, accum.<name>, ...
            dropped += 1
        else:
            out[name] = value
    training = dropped or "global_step" in tensors
    meta = {"source": SOURCE, "source_format": "train-network" if training else "network",
            "source_names": layout, "source_optimizer_entries_dropped": dropped}
    return out, meta
