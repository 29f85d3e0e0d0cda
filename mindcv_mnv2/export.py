"""Export a checkpoint to MINDIR or ONNX (fp32, or int8 ONNX), and load exported files back.

Usage::

    python -m mindcv_mnv2.export --ckpt_path X.ckpt --format MINDIR|ONNX [--image_size N]
        [--batch_size B] [--output PATH] [--no_ema]
    python -m mindcv_mnv2.export --ckpt_path X.ckpt --format ONNX --int8 --calibration_dir DIR
        [--calibration_images N]

validate.py and predict score the exported files as they score checkpoints (MINDIR through
MindSpore, ONNX through onnxruntime), with the preprocessing recorded inside them.

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
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

FORMATS = {"MINDIR": ".mindir", "ONNX": ".onnx"}
META_KEY = "mindcv_mnv2"
INT8_CALIBRATION_IMAGES = 256  # enough for stable activation ranges; more costs time, not accuracy
# Extra arguments of onnxruntime's quantize_static, in one place (chosen by measurement, BENCHMARKS.md):
# 7-bit weight range. x86 CPUs without VNNI multiply uint8 x int8 with 16-bit saturating adds, which
# overflow on full-range weights: the CPU demo model lost 6.6 points of top-1 at 8 bits, 0.2 at 7.
INT8_OPTIONS: Dict[str, Any] = {"reduce_range": True}


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
    arch = {"width_mult": net.width_mult, "padding": net.padding, "output_stride": net.output_stride,
            "in_channels": net.in_channels}
    return {"format": "mindcv_mnv2-export/1", "export_format": fmt, "model": meta.get("model"),
            "input_shape": [int(s) for s in shape], "input_layout": "NCHW float32, normalized",
            "dynamic_batch": fmt == "ONNX", "num_classes": int(net.num_classes), "model_kwargs": arch,
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
                 output: Optional[str] = None, use_ema: bool = True, int8: bool = False,
                 calibration_dir: Optional[str] = None, calibration_images: int = INT8_CALIBRATION_IMAGES) -> str:
    """Export a checkpoint to MINDIR or ONNX (written atomically, mode 0644); returns the path.

    ``int8`` (ONNX only) writes a statically quantized model calibrated on ``calibration_dir``.
    """
    fmt = _check_request(fmt, image_size, batch_size)  # before paying for the MindSpore import
    calibration = None
    if int8:
        if fmt != "ONNX":
            raise ExportError("--int8 writes ONNX (onnxruntime's int8 kernels); use --format ONNX")
        if not calibration_dir:
            raise ExportError("--int8 needs --calibration_dir: a folder of your images (an ImageFolder or a flat "
                              "folder) to measure activation ranges on")
        calibration = _calibration_files(calibration_dir, calibration_images)
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
        if calibration is not None:
            _quantize_int8(tmp, calibration, info)
        os.chmod(tmp, 0o644)  # MindSpore creates exported files read-only (0400)
        os.replace(tmp, output)
    finally:
        if os.path.exists(tmp):
            os.chmod(tmp, 0o644)
            os.remove(tmp)
    return output


# ----------------------------------------------------------------------------- int8

def _calibration_files(folder: str, limit: int) -> List[str]:
    """Up to ``limit`` image files of ``folder`` (walked recursively), spread over its sorted list."""
    from .predict import collect_images

    if not os.path.isdir(folder):
        raise ExportError(f"--calibration_dir {folder} is not a folder; pass a folder of images")
    if not isinstance(limit, int) or limit < 1:
        raise ExportError(f"--calibration_images must be >= 1, got {limit!r}")
    files = [f for f, err in collect_images([folder]) if err is None]
    if not files:
        raise ExportError(f"--calibration_dir {folder} holds no image files (looked for .jpg, .png, ...); pass a "
                          f"folder of the images the model will see")
    if len(files) > limit:  # evenly over the sorted list: every class of an ImageFolder is represented
        files = [files[int(i * len(files) / limit)] for i in range(limit)]
    return files


def _quantize_int8(path: str, files: List[str], info: Dict[str, Any]) -> None:
    """Replace the fp32 ONNX at ``path`` by a statically quantized one calibrated on ``files``.

    QDQ format (onnxruntime fuses QuantizeLinear/DequantizeLinear pairs into its int8 kernels and
    it is the format other runtimes read); int8 weights per output channel (MobileNetV2's depthwise
    filters differ by orders of magnitude between channels: one scale per tensor would flatten the
    small ones); uint8 activations, per tensor, with ranges from the calibration images through the
    checkpoint's own eval preprocessing. What was done is recorded in the file's metadata.
    """
    import onnx
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    from .predict import eval_transforms, preprocess

    facts = info["eval"]
    transforms = eval_transforms(facts)
    batch = []
    for f in files:
        try:
            batch.append(preprocess(f, facts, transforms))
        except (OSError, ValueError, SyntaxError, RuntimeError):
            continue  # an unreadable file among many is skipped; none readable is an error below
    if not batch:
        raise ExportError(f"none of the {len(files)} calibration files could be read as an image")
    fixed = info["input_shape"][0] if not info.get("dynamic_batch") else None

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            step = fixed or 1
            self.items = iter([{"image": np.stack(batch[i:i + step])} for i in range(0, len(batch) - step + 1, step)])

        def get_next(self):
            return next(self.items, None)

    prepped = path + ".pre.onnx"
    quantized = path + ".int8.onnx"
    try:
        quant_pre_process(path, prepped, skip_symbolic_shape=True)  # folds BatchNorm, infers shapes
        model = onnx.load(prepped)
        if min(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")) < 13:
            # per-channel DequantizeLinear (its axis attribute) needs opset 13; MindSpore exports 11
            from onnx import version_converter

            onnx.save(version_converter.convert_version(model, 13), prepped)
        quantize_static(prepped, quantized, Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax, **INT8_OPTIONS)
        model = onnx.load(quantized)
        meta = dict(info, int8={"format": "QDQ", "weights": "int8 in a 7-bit range, per output channel",
                                "activations": "uint8, per tensor", "calibration": "MinMax",
                                "calibration_images": len(batch), "nodes_kept_float": "none (keeping the "
                                "depthwise convolutions float cost 50 points: every layer boundary re-quantizes)",
                                **{k: str(v) for k, v in INT8_OPTIONS.items()}})
        for prop in model.metadata_props:
            if prop.key == META_KEY:
                prop.value = json.dumps(meta)
        onnx.save(model, path)
    finally:
        for leftover in (prepped, quantized, prepped + ".data"):
            if os.path.exists(leftover):
                os.remove(leftover)



def read_export_meta(path: str) -> Optional[Dict[str, Any]]:
    """The mindcv_mnv2 metadata stored in an exported MINDIR/ONNX file (None if absent)."""
    if path.lower().endswith(".onnx"):
        import onnx

        try:
            props = {p.key: p.value for p in onnx.load(path, load_external_data=False).metadata_props}
        except Exception as exc:  # onnx raises DecodeError and friends for damaged files
            raise ExportError(f"{path} is not a readable ONNX file ({_first_line(exc)}); re-export it with "
                              f"python -m mindcv_mnv2.export") from None
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


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return (text.splitlines()[0] if text else type(exc).__name__)[:200]


class OnnxModel:
    """An ONNX file on onnxruntime's CPU provider: ``model(images) -> logits`` (NCHW float32 in).

    ``input_shape`` is (batch or None, C, H, W) as the file declares it; ``export_meta`` is this
    toolkit's metadata (preprocessing, class names), None for files made elsewhere.
    """

    def __init__(self, path: str) -> None:
        if not os.path.isfile(path):
            raise ExportError(f"ONNX file not found: {path}")
        import onnxruntime as ort

        from .data.loader import cpu_count

        so = ort.SessionOptions()
        so.intra_op_num_threads = cpu_count()
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")  # as OMP_WAIT_POLICY: share cores
        try:
            self.session = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            raise ExportError(f"{path}: onnxruntime cannot load it ({_first_line(exc)}); re-export it with "
                              f"python -m mindcv_mnv2.export") from None
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise ExportError(f"{path}: expected one NCHW image input, found {[(i.name, i.shape) for i in inputs]}")
        self.input_name = inputs[0].name
        self.input_shape = tuple(d if isinstance(d, int) else None for d in inputs[0].shape)
        self.export_meta = read_export_meta(path)
        self.num_classes = self.session.get_outputs()[0].shape[-1]

    def __call__(self, images: np.ndarray) -> np.ndarray:
        """Logits of a batch (a fixed batch size declared by the file is honoured by padding)."""
        images = np.ascontiguousarray(images, np.float32)
        batch = self.input_shape[0]
        if batch is None or batch == len(images):
            return self.session.run(None, {self.input_name: images})[0]
        return run_fixed_batch(lambda x: self.session.run(None, {self.input_name: x})[0], images, batch)


def load_onnx(path: str) -> OnnxModel:
    """An ONNX file ready to score (see OnnxModel); one ExportError if onnxruntime cannot load it."""
    return OnnxModel(path)


def run_fixed_batch(cell: Any, images: np.ndarray, batch_size: int) -> np.ndarray:
    """Run ``cell`` on any number of images in batches of exactly ``batch_size`` (last one padded).

    ``cell`` is a MindSpore cell (Tensor in, Tensor out) or a function of numpy arrays.
    """
    import mindspore as ms

    def run(chunk: np.ndarray) -> np.ndarray:
        if isinstance(cell, ms.nn.Cell):
            return cell(ms.Tensor(chunk)).asnumpy()
        return np.asarray(cell(chunk))

    outs = []
    for start in range(0, len(images), batch_size):
        chunk = images[start:start + batch_size]
        n = len(chunk)
        if n < batch_size:  # pad with copies of the last image; their outputs are dropped
            chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, axis=0)])
        outs.append(run(np.ascontiguousarray(chunk, np.float32))[:n])
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
    parser.add_argument("--int8", action="store_true", help="ONNX only: statically quantized int8 model")
    parser.add_argument("--calibration_dir", default=None, help="with --int8: images to calibrate on")
    parser.add_argument("--calibration_images", type=int, default=INT8_CALIBRATION_IMAGES,
                        help=f"with --int8: how many of them (default {INT8_CALIBRATION_IMAGES})")
    args = parser.parse_args(argv)
    try:
        path = export_model(args.ckpt_path, args.fmt, image_size=args.image_size,
                            batch_size=args.batch_size, output=args.output, use_ema=not args.no_ema,
                            int8=args.int8, calibration_dir=args.calibration_dir,
                            calibration_images=args.calibration_images)
    except (ValueError, OSError) as exc:  # ExportError, CheckpointError, unwritable output
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
