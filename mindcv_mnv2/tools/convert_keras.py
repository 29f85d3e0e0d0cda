"""Convert a keras.applications MobileNetV2 saved as .h5 into a self-describing checkpoint.

Usage: ``python -m mindcv_mnv2.tools.convert_keras IN.h5 OUT.ckpt [--class_names FILE]``.

The .h5 is read with h5py only (no TensorFlow/Keras needed). Layers are found BY NAME wherever
they sit (``model_weights/`` or the file root, possibly inside an outer model), so Keras 2 and
Keras 3 legacy-h5 files, ``model.save`` and ``save_weights`` files all work (variables stored as
``<layer>/vars/0..N`` are matched by position: kernel, bias / gamma, beta, mean, variance).
Without a model config in the file, BN epsilon 1e-3 and the width's default size are assumed.
Tensor layouts: conv HWIO -> OIHW, depthwise (H, W, C, 1) -> (C, 1, H, W), dense (in, out) -> (out, in); Keras's
BatchNorm epsilon (1e-3) is folded exactly into the network's (1e-5) through the moving variance.
The network is built with ``padding="tf_same"``: Keras pads stride-2 layers bottom/right.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, Iterator, List, Mapping, Optional, Sequence, Tuple

import numpy as np

# Keras alphas of keras.applications.MobileNetV2 -> registry width tag.
KERAS_ALPHAS = {0.35: "035", 0.5: "050", 0.75: "075", 1.0: "100", 1.3: "130", 1.4: "140"}
# MobileNetV2 (t, c, n, s) table; Keras numbers blocks 0 (``expanded_conv``) .. 16.
_BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
           (6, 160, 3, 2), (6, 320, 1, 1))
_KERAS_BN_EPS = 1e-3
_STRIDE2_CONVS = ("Conv1", "block_1_depthwise", "block_3_depthwise", "block_6_depthwise",
                  "block_13_depthwise")
# Ordinal variable names for files that store ``vars/0, vars/1, ...`` instead of names.
_ORDINAL = {1: ("kernel",), 2: ("kernel", "bias"), 4: ("gamma", "beta", "moving_mean", "moving_variance")}


class KerasConversionError(ValueError):
    """The input is not a convertible Keras MobileNetV2 .h5; the message names what is wrong."""


@dataclass
class KerasModel:
    """What was read from a Keras .h5: weights by layer name plus facts from its config."""

    path: str
    layers: Dict[str, Dict[str, np.ndarray]]
    bn_epsilon: Dict[str, float] = field(default_factory=dict)
    layer_configs: Dict[str, Dict[str, Any]] = field(default_factory=dict)
    input_size: Optional[Tuple[int, int]] = None
    keras_version: Optional[str] = None


# ---------------------------------------------------------------------------------------------
# Reading the .h5
# ---------------------------------------------------------------------------------------------
def _attr_str(value: Any) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _leaf_weights(group: Any) -> Iterator[Tuple[str, Any]]:
    """Every dataset below ``group`` as (path relative to group, dataset)."""
    import h5py

    found: List[Tuple[str, Any]] = []

    def visit(name: str, obj: Any) -> None:
        if isinstance(obj, h5py.Dataset):
            found.append((name, obj))

    group.visititems(visit)
    return iter(found)


def _split_weight_path(path: str) -> Optional[Tuple[str, str]]:
    """'.../Conv1/kernel:0' -> ('Conv1', 'kernel'); '.../Conv1/vars/0' -> ('Conv1', '#0')."""
    parts = [p for p in path.split("/") if p]
    if len(parts) < 2:
        return None
    leaf = parts[-1].split(":")[0]
    if parts[-2] == "vars" and leaf.isdigit() and len(parts) >= 3:
        return parts[-3], f"#{leaf}"  # Keras 3 weights.h5 layout: ordinal variables
    if leaf == "depthwise_kernel":  # Keras 2 name of a DepthwiseConv2D kernel
        leaf = "kernel"
    return parts[-2], leaf


def _collect_layers(root: Any) -> Dict[str, Dict[str, np.ndarray]]:
    """Map layer name -> {weight name: array}, wherever the layer's group sits."""
    layers: Dict[str, Dict[str, np.ndarray]] = {}
    origin: Dict[Tuple[str, str], str] = {}
    for rel, ds in _leaf_weights(root):
        if rel.split("/")[0] in ("optimizer_weights", "optimizer"):
            continue
        split = _split_weight_path(rel)
        if split is None:
            continue
        layer, weight = split
        key = (layer, weight)
        if key in origin:
            raise KerasConversionError(
                f"layer '{layer}' weight '{weight}' occurs twice in the .h5 ({origin[key]} and {rel}); "
                "save a single MobileNetV2 (not a model holding two copies) and convert that")
        origin[key] = rel
        layers.setdefault(layer, {})[weight] = np.asarray(ds[()], dtype=np.float32)
    for name, weights in layers.items():  # resolve ordinal 'vars/N' names by role
        if any(w.startswith("#") for w in weights):
            order = sorted(weights, key=lambda w: int(w[1:]))
            names = _ORDINAL.get(len(order))
            if names is None:  # not a conv/Dense/BN layer (e.g. optimizer state): keep as is
                continue
            layers[name] = {n: weights[w] for n, w in zip(names, order)}
    return layers


def _walk_configs(node: Any) -> Iterator[Dict[str, Any]]:
    """Every Keras layer description ({'class_name', 'config'}) in a model_config JSON tree."""
    if isinstance(node, dict):
        if "class_name" in node and isinstance(node.get("config"), dict):
            yield node
        for value in node.values():
            yield from _walk_configs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _walk_configs(value)


def _read_model_config(h5: Any) -> Optional[Dict[str, Any]]:
    raw = h5.attrs.get("model_config")
    if raw is None:
        return None
    try:
        return json.loads(_attr_str(raw))
    except ValueError:
        return None  # a config we cannot parse only costs us the facts below; weights still load


def read_keras_h5(path: str) -> KerasModel:
    """Read weights (by layer name) and config facts from a Keras .h5 file."""
    import h5py

    if not os.path.isfile(path):
        raise KerasConversionError(f"Keras file not found: {path}")
    try:
        h5 = h5py.File(path, "r")
    except OSError as exc:
        raise KerasConversionError(f"{path} is not an HDF5 (.h5) file ({exc}); pass a Keras model saved "
                                   "with model.save('model.h5') or model.save_weights('w.h5')") from None
    with h5:
        root = h5["model_weights"] if "model_weights" in h5 else h5
        model = KerasModel(path=path, layers=_collect_layers(root))
        version = h5.attrs.get("keras_version", root.attrs.get("keras_version"))
        model.keras_version = _attr_str(version) if version is not None else None
        config = _read_model_config(h5)
    if config is not None:
        for desc in _walk_configs(config):
            cfg = desc["config"]
            name = cfg.get("name")
            if not isinstance(name, str):
                continue
            model.layer_configs.setdefault(name, dict(cfg, class_name=desc["class_name"]))
            if "BatchNormalization" in str(desc["class_name"]) and "epsilon" in cfg:
                model.bn_epsilon[name] = float(cfg["epsilon"])
            if desc["class_name"] == "InputLayer" and model.input_size is None:
                shape = cfg.get("batch_shape") or cfg.get("batch_input_shape")
                if isinstance(shape, list) and len(shape) == 4:
                    hw = (shape[1], shape[2]) if shape[3] in (1, 3, 4, None) else (shape[2], shape[3])
                    if all(isinstance(v, int) for v in hw):
                        model.input_size = (int(hw[0]), int(hw[1]))
    return model


# ---------------------------------------------------------------------------------------------
# Keras layer names -> MindCV parameter names
# ---------------------------------------------------------------------------------------------
def _keras_block_layers(index: int) -> Tuple[Optional[str], str, str]:
    """(expand, depthwise, project) Keras layer names of inverted-residual block ``index``."""
    if index == 0:
        return None, "expanded_conv_depthwise", "expanded_conv_project"
    return f"block_{index}_expand", f"block_{index}_depthwise", f"block_{index}_project"


def _bn_name(conv: str) -> str:
    return {"Conv1": "bn_Conv1", "Conv_1": "Conv_1_bn"}.get(conv, conv + "_BN")


def layer_map() -> List[Tuple[str, str, str]]:
    """(Keras conv layer, MindCV conv prefix, MindCV BN prefix) for every conv, in network order.

    The Keras BN layer of a conv follows its naming rule (``X_BN``, ``bn_Conv1``, ``Conv_1_bn``).
    """
    rows: List[Tuple[str, str, str]] = [("Conv1", "features.0", "features.1")]
    for i in range(17):
        expand, dw, project = _keras_block_layers(i)
        feat = f"features.{3 + i}.layers"
        if expand is None:
            rows += [(dw, f"{feat}.0", f"{feat}.1"), (project, f"{feat}.3", f"{feat}.4")]
        else:
            rows += [(expand, f"{feat}.0", f"{feat}.1"), (dw, f"{feat}.3", f"{feat}.4"),
                     (project, f"{feat}.6", f"{feat}.7")]
    rows.append(("Conv_1", "features.20", "features.21"))
    return rows


def backbone_layer_names() -> List[str]:
    """Every Keras layer name holding backbone weights (convs and their BatchNorms)."""
    names: List[str] = []
    for conv, _, _ in layer_map():
        names += [conv, _bn_name(conv)]
    return names


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


def channel_signature(width: float) -> List[int]:
    """Output channels of Conv1, every project conv and Conv_1 for a width (MindCV's rule)."""
    sig = [_make_divisible(32 * width)]
    for _t, c, n, _s in _BLOCKS:
        sig += [_make_divisible(c * width)] * n
    sig.append(_make_divisible(1280 * max(1.0, width)))
    return sig


def _require(model: KerasModel, layer: str, weight: str) -> np.ndarray:
    try:
        return model.layers[layer][weight]
    except KeyError:
        raise KerasConversionError(f"{model.path}: layer '{layer}' (weight '{weight}') is missing; "
                                   "expected a keras.applications MobileNetV2 with its standard layer "
                                   "names") from None


def check_backbone(model: KerasModel) -> None:
    """Raise one error naming every missing MobileNetV2 layer (or saying none was found)."""
    expected = backbone_layer_names()
    missing = [n for n in expected if n not in model.layers]
    if len(missing) == len(expected):
        found = ", ".join(sorted(model.layers)[:8]) or "no weights at all"
        raise KerasConversionError(f"{model.path} holds no MobileNetV2 layers (looked for {expected[0]}, "
                                   f"{expected[1]}, block_N_expand, ...; found {found}); it is not a "
                                   "keras.applications MobileNetV2")
    if missing:
        raise KerasConversionError(f"{model.path} is missing MobileNetV2 layer(s): {', '.join(missing)}")


def infer_width(model: KerasModel) -> float:
    """The Keras alpha whose channel counts match the file (Conv1, every project conv, Conv_1)."""
    convs = ["Conv1"] + [_keras_block_layers(i)[2] for i in range(17)] + ["Conv_1"]
    found = [int(_require(model, c, "kernel").shape[-1]) for c in convs]
    for alpha in KERAS_ALPHAS:
        if channel_signature(alpha) == found:
            return alpha
    raise KerasConversionError(
        f"{model.path}: channel counts (Conv1 {found[0]}, last conv {found[-1]}) match no supported "
        f"MobileNetV2 width; supported Keras alphas are {', '.join(str(a) for a in KERAS_ALPHAS)}")


def find_head(model: KerasModel) -> str:
    """Name of the single Dense layer after the backbone (2-D kernel)."""
    backbone = set(backbone_layer_names())
    dense = [n for n, w in model.layers.items() if n not in backbone and w.get("kernel") is not None
             and w["kernel"].ndim == 2]
    if not dense:
        raise KerasConversionError(f"{model.path} has no Dense classifier after the backbone; save the "
                                   "model with include_top=True (or add a Dense head) before converting")
    if len(dense) > 1:
        raise KerasConversionError(f"{model.path} has several Dense layers ({', '.join(sorted(dense))}); "
                                   "only a single Dense head after the backbone can be converted")
    return dense[0]


def _same_pad(size: int, kernel: int = 3, stride: int = 2) -> Tuple[int, int]:
    """(before, after) padding of TF 'SAME' for one spatial dimension."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def check_padding(model: KerasModel) -> None:
    """Check each stride-2 layer pads like TF 'SAME' (what padding='tf_same' reproduces)."""
    if model.input_size is None:
        return
    size = list(model.input_size)
    for conv in _STRIDE2_CONVS:
        cfg = model.layer_configs.get(conv)
        pad_cfg = model.layer_configs.get(conv.replace("_depthwise", "") + "_pad")
        if cfg is None:
            return  # no config for this file: nothing to check against
        if conv != "Conv1":
            size = [(s + 1) // 2 for s in size]  # each earlier stride-2 stage halves (ceil) the size
        same = [_same_pad(s) for s in size]
        if cfg.get("padding") == "same":
            continue
        pads = pad_cfg.get("padding") if pad_cfg else None
        got = [tuple(p) for p in pads] if isinstance(pads, list) and len(pads) == 2 else None
        if got != [tuple(p) for p in same]:
            raise KerasConversionError(
                f"{model.path}: layer '{conv}' pads {got or cfg.get('padding')} at input size "
                f"{size[0]}x{size[1]}, but TF 'SAME' padding would be {same}; this network cannot "
                "reproduce it")


def keras_to_mindcv(model: KerasModel, target_eps: float = 1e-5) -> Dict[str, np.ndarray]:
    """All MindCV-named tensors from a Keras MobileNetV2 (layouts transposed, BN eps folded)."""
    check_backbone(model)
    params: Dict[str, np.ndarray] = {}
    for conv, conv_prefix, bn_prefix in layer_map():
        kernel = _require(model, conv, "kernel")
        if kernel.ndim != 4:
            raise KerasConversionError(f"{model.path}: layer '{conv}' kernel has shape {kernel.shape}, "
                                       "expected a 4-D convolution kernel")
        depthwise = "depthwise" in conv
        # Keras HWIO -> OIHW; depthwise (H, W, C, 1) -> (C, 1, H, W)
        params[f"{conv_prefix}.weight"] = kernel.transpose(2, 3, 0, 1) if depthwise else kernel.transpose(3, 2, 0, 1)
        bn = _bn_name(conv)
        var = _require(model, bn, "moving_variance")
        eps = model.bn_epsilon.get(bn, _KERAS_BN_EPS)
        channels = var.shape[0]
        weights = model.layers[bn]
        params[f"{bn_prefix}.gamma"] = weights.get("gamma", np.ones(channels, np.float32))
        params[f"{bn_prefix}.beta"] = weights.get("beta", np.zeros(channels, np.float32))
        params[f"{bn_prefix}.moving_mean"] = _require(model, bn, "moving_mean")
        # var' + target_eps == var + eps exactly, so eval-mode outputs are unchanged
        params[f"{bn_prefix}.moving_variance"] = (var.astype(np.float64) + (eps - target_eps)).astype(np.float32)
    head = find_head(model)
    kernel = model.layers[head]["kernel"]
    params["classifier.1.weight"] = np.ascontiguousarray(kernel.T)
    params["classifier.1.bias"] = model.layers[head].get("bias", np.zeros(kernel.shape[1], np.float32))
    return {k: np.ascontiguousarray(v, dtype=np.float32) for k, v in params.items()}


# ---------------------------------------------------------------------------------------------
# Conversion entry point
# ---------------------------------------------------------------------------------------------
def registry_name(width: float, image_size: Optional[int]) -> str:
    """Registry name for a width (with the size suffix when the registry has that size)."""
    from mindcv_mnv2.models.registry import REGISTRY

    base = f"mobilenet_v2_{KERAS_ALPHAS[width]}"
    sized = f"{base}_{image_size}"
    return sized if image_size is not None and sized in REGISTRY else base


def read_class_names(path: str) -> List[str]:
    """One class name per line (blank lines ignored)."""
    try:
        with open(path, encoding="utf-8") as fh:
            return [line.strip() for line in fh if line.strip()]
    except OSError as exc:
        raise KerasConversionError(f"cannot read class-names file {path}: {exc.strerror}") from None


def _bn_eps_of(net: Any) -> float:
    """The BatchNorm epsilon the built network uses (MindCV: 1e-5)."""
    for _, cell in net.cells_and_names():
        if hasattr(cell, "moving_variance") and hasattr(cell, "eps"):
            return float(cell.eps)
    return 1e-5


def convert_keras(h5_path: str, ckpt_path: str, model_name: Optional[str] = None,
                  class_names: Optional[List[str]] = None) -> Dict[str, Any]:
    """Convert a Keras MobileNetV2 .h5 into a self-describing checkpoint; returns the meta written."""
    from mindcv_mnv2.models.registry import get_spec

    model = read_keras_h5(h5_path)  # validate the input before paying for the MindSpore import
    check_backbone(model)
    width = infer_width(model)
    check_padding(model)
    head = find_head(model)
    num_classes = int(model.layers[head]["kernel"].shape[1])
    if class_names is not None and len(class_names) != num_classes:
        raise KerasConversionError(f"{len(class_names)} class names given but the Keras head '{head}' has "
                                   f"{num_classes} classes")
    image_size = model.input_size[0] if model.input_size and model.input_size[0] == model.input_size[1] else None
    if model_name is None:
        model_name = registry_name(width, image_size)
    try:
        spec = get_spec(model_name)
    except KeyError as exc:
        raise KerasConversionError(str(exc.args[0])) from None
    if abs(spec.width_mult - width) > 1e-6:
        raise KerasConversionError(f"model '{model_name}' has width {spec.width_mult}, but the Keras file "
                                   f"is alpha {width}; pick a mobilenet_v2_{KERAS_ALPHAS[width]}* name")
    model_kwargs = {"width_mult": width, "num_classes": num_classes, "in_channels": 3,
                    "padding": "tf_same", "drop_rate": 0.2}
    from mindcv_mnv2.checkpoint import model_meta, save_checkpoint
    from mindcv_mnv2.models import create_model

    net = create_model(model_name, num_classes=num_classes, padding="tf_same")
    params = keras_to_mindcv(model, target_eps=_bn_eps_of(net))
    _check_against_net(net, params, h5_path)
    eval_facts = {"image_size": image_size or spec.image_size, "crop_pct": 0.875, "interpolation": "bilinear",
                  "mean": [127.5] * 3, "std": [127.5] * 3}  # Keras preprocess_input: x / 127.5 - 1
    meta = model_meta(model_name, model_kwargs, class_names=class_names, eval_facts=eval_facts)
    meta["source"] = {"kind": "keras_h5", "file": os.path.basename(h5_path),
                      "keras_version": model.keras_version, "dense_layer": head,
                      "input_size": list(model.input_size) if model.input_size else None,
                      "bn_epsilon": sorted(set(model.bn_epsilon.values())) or [_KERAS_BN_EPS]}
    save_checkpoint(ckpt_path, params, meta)
    return meta


def _check_against_net(net: Any, params: Mapping[str, np.ndarray], source: str) -> None:
    """Every converted tensor must exist in the network with the same shape, and vice versa."""
    shapes = {p.name: tuple(p.shape) for p in net.get_parameters()}
    missing = sorted(set(shapes) - set(params))
    extra = sorted(set(params) - set(shapes))
    wrong = [f"{k} {params[k].shape} vs {shapes[k]}" for k in sorted(set(params) & set(shapes))
             if tuple(params[k].shape) != shapes[k]]
    if missing or extra or wrong:
        raise KerasConversionError(f"{source}: converted tensors do not fit the network: missing "
                                   f"{missing[:5]}, unexpected {extra[:5]}, shape mismatch {wrong[:5]}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI: convert IN.h5 to OUT.ckpt; prints one error line and returns 2 on bad input."""
    parser = argparse.ArgumentParser(prog="python -m mindcv_mnv2.tools.convert_keras",
                                     description=__doc__.split("\n")[0])
    parser.add_argument("h5_path", help="Keras MobileNetV2 saved as .h5")
    parser.add_argument("ckpt_path", help="checkpoint to write")
    parser.add_argument("--class_names", help="text file with one class name per line")
    parser.add_argument("--model_name", help="registry name to record (default: inferred from width and size)")
    args = parser.parse_args(argv)
    try:
        names = read_class_names(args.class_names) if args.class_names else None
        meta = convert_keras(args.h5_path, args.ckpt_path, model_name=args.model_name, class_names=names)
    except ValueError as exc:  # KerasConversionError, CheckpointError: user mistakes
        print(f"error: {exc}", file=sys.stderr)
        return 2
    kw = meta["model_kwargs"]
    print(f"wrote {args.ckpt_path}: {meta['model']} (width {kw['width_mult']}, {kw['num_classes']} classes, "
          f"eval {meta['eval']['image_size']} px)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
