"""Export a checkpoint to MINDIR or ONNX for deployment, and load a MINDIR back for inference.

Usage::

    python -m mindcv_mnv2.export --ckpt_path X.ckpt --format MINDIR|ONNX [--image_size N]
        [--batch_size B] [--output PATH] [--no_ema]

Input of every exported graph: float32 NCHW images, already resized, center-cropped and
normalized with the checkpoint's eval facts (``mean``/``std`` on 0-255 pixels); output: logits
(no softmax). Those facts, the class names and the export shape travel inside the file (MINDIR
``user_info`` / ONNX ``metadata_props`` key ``mindcv_mnv2``), see :func:`read_export_meta`.

Shape constraints:

* MINDIR records the export shape ``(batch_size, C, image_size, image_size)``. MindSpore's own
  ``nn.GraphCell`` (2.10, CPU) re-infers shapes and runs other batch sizes correctly, but other
  runtimes (MindSpore Lite, converters to Ascend OM) use the recorded shape: export with the batch
  size you will run, or feed fixed-size batches (:func:`run_fixed_batch` pads the last one).
* ONNX is exported with a dynamic batch axis (``image`` input, dim 0 ``batch``); height and width
  are fixed at ``image_size``.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from typing import Any, Dict, Optional, Sequence

import numpy as np

FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx"}
META_KEY = "mindcv_mnv2"


from .errors import ExportError  # noqa: E402,F401  (raised here; re-exported)


def _check_request(fmt: str, image_size: Optional[int], batch_size: int) -> str:
    fmt_u = str(fmt).upper()
    if fmt_u not in FORMATS:
        raise ExportError(f"unsupported export format '{fmt}'; choose one of {', '.join(FORMATS)}")
    if image_size is not None and (not isinstance(image_size, int) or image_size < 32):
        raise ExportError(f"image_size must be an integer >= 32, got {image_size!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ExportError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    return fmt_u


def _default_output(ckpt_path: str, fmt: str) -> str:
    stem = os.path.splitext(ckpt_path)[0]
    return stem + FORMATS[fmt]


def _export_meta(net: Any, shape: Sequence[int], fmt: str) -> Dict[str, Any]:
    """What a consumer of the exported file needs to feed it: shape, preprocessing, labels."""
    meta = dict(getattr(net, "checkpoint_meta", None) or {})
    facts = dict(meta.get("eval") or {})
    facts["image_size"] = int(shape[-1])
    return {"format": "mindcv_mnv2-export/1", "export_format": fmt, "model": meta.get("model"),
            "input_shape": [int(s) for s in shape], "input_layout": "NCHW float32, normalized",
            "dynamic_batch": fmt == "ONNX", "num_classes": int(net.num_classes),
            "eval": facts, "class_names": meta.get("class_names")}


def _write_mindir(net: Any, x: Any, target: str, meta: Dict[str, Any]) -> None:
    import mindspore as ms

    def add_meta(proto: Any) -> None:
        proto.user_info[META_KEY] = json.dumps(meta)

    ms.export(net, x, file_name=target, file_format="MINDIR", custom_func=add_meta)


def _write_onnx(net: Any, x: Any, target: str, meta: Dict[str, Any]) -> None:
    import mindspore as ms

    # mindspore.onnx.export is the non-deprecated route (ms.export(file_format="ONNX") warns)
    ms.onnx.export(net, x, file_name=target, input_names=["image"], output_names=["logits"],
                   dynamic_axes={"image": {0: "batch"}, "logits": {0: "batch"}})
    try:
        import onnx
    except ImportError:  # metadata is a convenience; the graph itself is complete
        return
    model = onnx.load(target)
    for out in model.graph.output:  # the exporter leaves outputs at the traced batch size
        dims = out.type.tensor_type.shape.dim
        if len(dims):
            dims[0].dim_param = "batch"
    prop = model.metadata_props.add()
    prop.key, prop.value = META_KEY, json.dumps(meta)
    onnx.save(model, target)


def export_model(ckpt_path: str, fmt: str, image_size: Optional[int] = None, batch_size: int = 1,
                 output: Optional[str] = None, use_ema: bool = True) -> str:
    """Export a checkpoint to MINDIR or ONNX (written atomically, mode 0644); returns the path."""
    fmt = _check_request(fmt, image_size, batch_size)  # before paying for the MindSpore import
    import mindspore as ms

    from mindcv_mnv2.checkpoint import load_model

    net = load_model(ckpt_path, use_ema=use_ema)
    net.set_train(False)
    meta = getattr(net, "checkpoint_meta", None) or {}
    size = image_size or (meta.get("eval") or {}).get("image_size")
    if not size:
        raise ExportError(f"{ckpt_path} records no eval image size; pass --image_size")
    shape = (batch_size, int(getattr(net, "in_channels", 3)), int(size), int(size))
    output = output or _default_output(ckpt_path, fmt)
    if not output.lower().endswith(FORMATS[fmt]):
        output += FORMATS[fmt]
    out_dir = os.path.dirname(os.path.abspath(output))
    if not os.path.isdir(out_dir):
        raise ExportError(f"output folder {out_dir} does not exist; create it or pass another --output")
    x = ms.Tensor(np.zeros(shape, np.float32))
    info = _export_meta(net, shape, fmt)
    fd, tmp = tempfile.mkstemp(prefix=".export-", suffix=FORMATS[fmt], dir=out_dir)
    os.close(fd)
    try:
        (_write_mindir if fmt == "MINDIR" else _write_onnx)(net, x, tmp, info)
        os.chmod(tmp, 0o644)  # MindSpore creates exported files read-only (0400)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.chmod(tmp, 0o644)
            os.remove(tmp)
    return output


def read_export_meta(path: str) -> Optional[Dict[str, Any]]:
    """The mindcv_mnv2 metadata stored in an exported MINDIR/ONNX file (None if absent)."""
    if path.lower().endswith(".onnx"):
        import onnx

        props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        raw = props.get(META_KEY)
    else:
        from mindspore.train import mind_ir_pb2

        proto = mind_ir_pb2.ModelProto()
        with open(path, "rb") as fh:
            proto.ParseFromString(fh.read())
        raw = proto.user_info.get(META_KEY)
    return json.loads(raw) if raw else None


def load_mindir(path: str) -> Any:
    """Load a MINDIR file as an ``nn.GraphCell`` (call it on NCHW float32 tensors; returns logits).

    The cell gets two attributes: ``input_shape`` (the export shape, batch first) and
    ``export_meta`` (eval facts, class names; None for files not written by export_model).
    See the module docstring for the batch-size constraint of other runtimes.
    """
    import mindspore as ms
    from mindspore import nn

    if not os.path.isfile(path):
        raise ExportError(f"MINDIR file not found: {path}")
    try:
        cell = nn.GraphCell(ms.load(path))
        meta = read_export_meta(path)
    except (RuntimeError, ValueError) as exc:
        raise ExportError(f"{path} is not a loadable MINDIR file ({str(exc).splitlines()[0]})") from None
    cell.export_meta = meta
    cell.input_shape = tuple(meta["input_shape"]) if meta else None
    cell.set_train(False)
    return cell


def run_fixed_batch(cell: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``cell`` on any number of images in batches of exactly ``batch_size`` (last one padded)."""
    import mindspore as ms

    outs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        n = len(chunk)
        if n < batch_size:  # pad with copies of the last image; their outputs are dropped
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        outs.append(cell(ms.Tensor(np.ascontiguousarray(chunk, np.float32))).asnumpy()[:n])
    return np.concatenate(outs) if outs else np.zeros((0,), np.float32)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point; prints one error line and returns 2 on a bad request or checkpoint."""
    parser = argparse.ArgumentParser(prog="python -m mindcv_mnv2.export",
                                     description="Export a checkpoint to MINDIR or ONNX.")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint to export")
    parser.add_argument("--format", dest="fmt", default="MINDIR", help="MINDIR or ONNX")
    parser.add_argument("--image_size", type=int, default=None,
                        help="input height/width (default: the checkpoint's eval image size)")
    parser.add_argument("--batch_size", type=int, default=1, help="batch size recorded in the graph")
    parser.add_argument("--output", default=None, help="output file (default: next to the checkpoint)")
    parser.add_argument("--no_ema", action="store_true", help="export the raw weights, not the EMA ones")
    args = parser.parse_args(argv)
    try:
        path = export_model(args.ckpt_path, args.fmt, image_size=args.image_size,
                            batch_size=args.batch_size, output=args.output, use_ema=not args.no_ema)
    except (ValueError, OSError) as exc:  # ExportError, CheckpointError, unwritable output
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
