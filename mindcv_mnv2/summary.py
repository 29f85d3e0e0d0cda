"""Parameter counts and multiply-accumulates of MobileNetV2, computed analytically from layer shapes.

``python -m mindcv_mnv2.summary --model mobilenet_v2_100 --image_size 224 --num_classes 1001 [--json] [--all]``

Counts:
- params_trainable: conv/dense weights and biases plus BN gamma/beta (what the optimizer updates);
- params_total: params_trainable plus BN moving mean/variance (MindCV's published count);
- params_excl_bn: conv and dense weights and biases only (the TF-slim convention);
- macs: multiply-accumulates of the conv and dense layers at the given input size (TF-slim's
  "MACs": BN, activations, residual adds and pooling are not counted).
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any, Dict, List, Optional, Sequence, Tuple

from .constants import EVAL_SIZES, OUTPUT_STRIDES, WIDTHS
from .models.mobilenetv2 import block_plan, make_divisible, param_shapes

__all__ = ["model_summary", "layer_table", "main", "SUMMARY_WIDTHS", "SUMMARY_SIZES"]

SUMMARY_WIDTHS = tuple(WIDTHS.values())
SUMMARY_SIZES = tuple(sorted(EVAL_SIZES))


def _out_size(size: int, kernel: int, stride: int, dilation: int, padding: str) -> int:
    if padding == "tf_same" and stride > 1 and kernel > 1:
        return -(-size // stride)  # ceil(size / stride)
    pad = (kernel - 1) // 2 * dilation
    return (size + 2 * pad - dilation * (kernel - 1) - 1) // stride + 1


def layer_table(width_mult: float, image_size: int | Tuple[int, int], num_classes: int = 1000,
                in_channels: int = 3, output_stride: int = 32, padding: str = "symmetric",
                round_nearest: int = 8) -> List[Dict[str, Any]]:
    """Every conv and dense layer (by weight name) with its shapes, params and MACs."""
    h, w = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
    rows: List[Dict[str, Any]] = []

    def conv(name: str, cin: int, cout: int, k: int, s: int = 1, d: int = 1, g: int = 1) -> None:
        nonlocal h, w
        oh, ow = _out_size(h, k, s, d, padding), _out_size(w, k, s, d, padding)
        params = cout * (cin // g) * k * k
        rows.append({"name": name, "kind": "conv", "in_ch": cin, "out_ch": cout, "kernel": k,
                     "stride": s, "dilation": d, "groups": g, "in_hw": (h, w), "out_hw": (oh, ow),
                     "params": params, "macs": params * oh * ow})
        h, w = oh, ow

    stem = make_divisible(32 * width_mult, round_nearest)
    conv("features.0.weight", in_channels, stem, 3, 2)
    for i, blk in enumerate(block_plan(width_mult, output_stride, round_nearest)):
        p, hidden, k = f"features.{3 + i}.layers", round(blk.in_ch * blk.expand), 0
        if blk.expand != 1:
            conv(f"{p}.0.weight", blk.in_ch, hidden, 1)
            k = 3
        conv(f"{p}.{k}.weight", hidden, hidden, 3, blk.stride, blk.dilation, g=hidden)
        conv(f"{p}.{k + 3}.weight", hidden, blk.out_ch, 1)
    last = make_divisible(1280 * max(1.0, width_mult), round_nearest)
    conv("features.20.weight", rows[-1]["out_ch"], last, 1)
    rows.append({"name": "classifier.1", "kind": "dense", "in_ch": last, "out_ch": num_classes,
                 "params": last * num_classes + num_classes, "macs": last * num_classes})
    return rows


def model_summary(width_mult: float, image_size: int, num_classes: int = 1000, in_channels: int = 3,
                  output_stride: int = 32, padding: str = "symmetric") -> Dict[str, Any]:
    """Parameter counts and MACs of a MobileNetV2 at an input size (no network is built)."""
    if int(image_size) < 32:
        raise ValueError(f"image_size must be >= 32, got {image_size}")
    shapes = param_shapes(width_mult, num_classes, in_channels)
    sizes = {k: _prod(s) for k, s in shapes.items()}
    total = sum(sizes.values())
    buffers = sum(v for k, v in sizes.items() if k.endswith(("moving_mean", "moving_variance")))
    bn_affine = sum(v for k, v in sizes.items() if k.endswith((".gamma", ".beta")))
    table = layer_table(width_mult, image_size, num_classes, in_channels, output_stride, padding)
    return {"width_mult": width_mult, "image_size": int(image_size), "num_classes": num_classes,
            "params_trainable": total - buffers, "params_total": total,
            "params_excl_bn": total - buffers - bn_affine, "macs": sum(r["macs"] for r in table),
            "feature_hw": list(table[-2]["out_hw"])}


def _prod(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def _all_table(num_classes: int) -> str:
    lines = [f"MobileNetV2, {num_classes} classes (MACs and params_excl_bn: TF-slim convention)",
             f"{'width':>5} {'res':>4} {'MACs (M)':>9} {'params_excl_bn (M)':>19} "
             f"{'params_total':>13} {'trainable':>10}"]
    for wm in SUMMARY_WIDTHS:
        for size in SUMMARY_SIZES:
            s = model_summary(wm, size, num_classes)
            lines.append(f"{wm:>5} {size:>4} {s['macs'] / 1e6:>9.1f} {s['params_excl_bn'] / 1e6:>19.2f} "
                         f"{s['params_total']:>13,} {s['params_trainable']:>10,}")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; returns the exit status."""
    ap = argparse.ArgumentParser(prog="python -m mindcv_mnv2.summary", description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="mobilenet_v2_100", help="registry name (default mobilenet_v2_100)")
    ap.add_argument("--image_size", type=int, default=None, help="input size (default: the model's)")
    ap.add_argument("--num_classes", type=int, default=1000)
    ap.add_argument("--output_stride", type=int, default=32, choices=OUTPUT_STRIDES)
    ap.add_argument("--json", action="store_true", help="print one JSON object")
    ap.add_argument("--all", action="store_true", help="table of every width x resolution")
    args = ap.parse_args(argv)
    from .models.registry import get_spec
    try:
        spec = get_spec(args.model)
    except KeyError as e:
        print(f"error: {e.args[0]}", file=sys.stderr)
        return 2
    if args.num_classes < 1:
        print(f"error: --num_classes must be >= 1, got {args.num_classes}", file=sys.stderr)
        return 2
    if args.all:
        print(_all_table(args.num_classes))
        return 0
    size = args.image_size or spec.image_size
    if size < 32:
        print(f"error: --image_size must be >= 32, got {size}", file=sys.stderr)
        return 2
    s = model_summary(spec.width_mult, size, args.num_classes, output_stride=args.output_stride)
    s = {"model": spec.name, "output_stride": args.output_stride, **s}
    if args.json:
        print(json.dumps(s))
    else:
        print(f"{spec.name} (width {spec.width_mult}) @ {size}px, {args.num_classes} classes\n"
              f"  params_trainable {s['params_trainable']:>12,}\n"
              f"  params_total     {s['params_total']:>12,}  (incl. BN moving stats)\n"
              f"  params_excl_bn   {s['params_excl_bn']:>12,}  ({s['params_excl_bn'] / 1e6:.2f}M, TF-slim)\n"
              f"  macs             {s['macs']:>12,}  ({s['macs'] / 1e6:.1f}M)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
