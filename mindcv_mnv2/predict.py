"""Classify image files with a checkpoint: top-k class names and softmax probabilities.

Usage::

    python -m mindcv_mnv2.predict --ckpt_path X.ckpt img1.jpg photos/ ... [--top_k 5]
        [--labels FILE] [--batch_size 32] [--json]

Preprocessing is validation's, with the checkpoint's eval facts: decode to RGB, resize the shorter
side to ``int(image_size / crop_pct)``, center-crop ``image_size`` (or TF-slim's central crop when
the checkpoint says ``inception_crop``), normalize with ``mean``/``std`` on 0-255 pixels, through
the same C++ ops, so a file gives the same tensor here as in validate.py. Like the validation
pipeline, EXIF orientation is not applied.
Class names come from ``--labels``, else the checkpoint meta, else ``class_<i>``.

Exit codes: 0 all images classified, 1 some files failed (each reported, the rest classified),
2 bad request (checkpoint, label file, no images).
"""
from __future__ import annotations

import argparse
import json
import os
import re
import sys
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import numpy as np

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")
_WNID = re.compile(r"^n\d{8}$")


from .errors import PredictError  # noqa: E402,F401  (raised here; re-exported)


# ----------------------------------------------------------------------------- labels
def read_labels(path: str, num_classes: Optional[int] = None) -> List[str]:
    """Class names from a label file: one name per line, or 'index name' / 'wnid name' lines.

    A ``.json`` file may hold a list of names or ImageNet's {"0": ["n01440764", "tench"], ...}.
    """
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise PredictError(f"cannot read label file {path}: {exc.strerror}") from None
    names = _parse_json_labels(text, path) if path.lower().endswith(".json") else _parse_text_labels(text, path)
    if num_classes is not None and len(names) != num_classes:
        raise PredictError(f"label file {path} has {len(names)} classes but the model has {num_classes}; "
                           "pass the label file that belongs to this checkpoint")
    return names


def _parse_text_labels(text: str, path: str) -> List[str]:
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    if not lines:
        raise PredictError(f"label file {path} is empty")
    firsts = [line.split(None, 1) for line in lines]
    if all(len(p) == 2 and p[0].isdigit() for p in firsts):  # "index name"
        by_index = {int(p[0]): p[1].strip() for p in firsts}
        if sorted(by_index) != list(range(len(lines))):
            raise PredictError(f"label file {path}: 'index name' lines must number 0..{len(lines) - 1} "
                               "exactly once each")
        return [by_index[i] for i in range(len(lines))]
    if all(len(p) == 2 and _WNID.match(p[0]) for p in firsts):  # "n01440764 tench, Tinca tinca"
        return [p[1].strip() for p in firsts]
    return lines


def _parse_json_labels(text: str, path: str) -> List[str]:
    try:
        data = json.loads(text)
    except ValueError as exc:
        raise PredictError(f"label file {path} is not valid JSON ({exc})") from None
    if isinstance(data, list) and all(isinstance(n, str) for n in data):
        return list(data)
    if isinstance(data, dict) and all(str(k).isdigit() for k in data):
        keys = sorted(int(k) for k in data)
        if keys == list(range(len(keys))):
            vals = [data[str(k)] for k in keys]
            return [v[-1] if isinstance(v, list) else str(v) for v in vals]
    raise PredictError(f"label file {path}: expected a JSON list of names or {{\"0\": [wnid, name], ...}}")


def class_names_for(meta: Mapping[str, Any], num_classes: int,
                    labels: Union[None, str, Sequence[str]] = None) -> List[str]:
    """Names to print: a label file / list if given, else the checkpoint's, else class_<i>."""
    if isinstance(labels, str):
        return read_labels(labels, num_classes)
    if labels is not None:
        names = [str(n) for n in labels]
        if len(names) != num_classes:
            raise PredictError(f"{len(names)} labels given but the model has {num_classes} classes")
        return names
    names = meta.get("class_names")
    if names and len(names) == num_classes:
        return [str(n) for n in names]
    return [f"class_{i}" for i in range(num_classes)]


# ----------------------------------------------------------------------------- images
def collect_images(paths: Sequence[str]) -> List[Tuple[str, Optional[str]]]:
    """(file, error) in the order given, directories walked (sorted); error set for missing paths."""
    entries: List[Tuple[str, Optional[str]]] = []
    for path in paths:
        if os.path.isdir(path):
            found = []
            for root, dirs, names in os.walk(path):
                dirs[:] = [d for d in dirs if not d.startswith(".")]
                found += [os.path.join(root, n) for n in names
                          if n.lower().endswith(IMAGE_EXTENSIONS) and not n.startswith(".")]
            entries += [(f, None) for f in sorted(found)]
        elif os.path.isfile(path):
            entries.append((path, None))  # an explicitly named file is tried whatever its extension
        else:
            entries.append((path, "no such file or directory"))
    return entries


def _to_rgb(img: Any) -> Any:
    """Any PIL image (L, LA, P, RGBA, CMYK, I;16, F ...) as 8-bit RGB."""
    from PIL import Image

    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        arr = np.asarray(img, dtype=np.float64)
        top = 65535.0 if img.mode.startswith("I") and arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / top * 255.0 + 0.5, 0, 255).astype(np.uint8), "L")
    return img.convert("RGB")


def eval_transforms(eval_facts: Mapping[str, Any]) -> List[Any]:
    """Validation's transforms after decoding, for a checkpoint's eval facts (RGB uint8 HWC in)."""
    from .data import create_transforms

    return create_transforms(False, int(eval_facts["image_size"]), crop_pct=eval_facts.get("crop_pct"),
                             interpolation=eval_facts.get("interpolation"), mean=eval_facts.get("mean"),
                             std=eval_facts.get("std"), inception_crop=bool(eval_facts.get("inception_crop")),
                             decode=False)


def preprocess(path: str, eval_facts: Mapping[str, Any], transforms: Optional[List[Any]] = None) -> np.ndarray:
    """One image file -> the normalized CHW float32 array validation computes for it.

    PIL decodes (it reads every mode: CMYK, 16-bit, palette ...; for 8-bit RGB JPEG/PNG its pixels
    equal MindSpore's Decode bit for bit), then validation's own C++ ops resize, crop and normalize.
    """
    from PIL import Image

    with Image.open(path) as img:
        rgb = np.asarray(_to_rgb(img), dtype=np.uint8)
    for op in transforms if transforms is not None else eval_transforms(eval_facts):
        rgb = op(rgb)
    return np.ascontiguousarray(rgb, dtype=np.float32)


def _load_one(path: str, facts: Mapping[str, Any], transforms: List[Any]
              ) -> Tuple[Optional[np.ndarray], Optional[str]]:
    from PIL import UnidentifiedImageError

    try:
        return preprocess(path, facts, transforms), None
    except UnidentifiedImageError:
        return None, "not an image file (PIL cannot identify it)"
    except (OSError, ValueError, SyntaxError, RuntimeError) as exc:  # truncated/corrupt files raise these
        return None, f"unreadable image ({exc})"


# ----------------------------------------------------------------------------- inference
def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax in float64 (stable), returned as float32."""
    z = logits.astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return (e / e.sum(axis=1, keepdims=True)).astype(np.float32)


def _top_k(probs: np.ndarray, k: int, names: Sequence[str]) -> List[Dict[str, Any]]:
    order = np.argsort(-probs, kind="stable")[:k]
    return [{"index": int(i), "label": names[int(i)], "prob": float(probs[i])} for i in order]


def predict(ckpt_path: str, paths: Sequence[str], top_k: int = 5,
            labels: Union[None, str, Sequence[str]] = None, batch_size: int = 32) -> List[Dict[str, Any]]:
    """Classify images; one dict per file: {"path", "top_k": [{"index", "label", "prob"}]} or {"path", "error"}."""
    if isinstance(paths, str):
        paths = [paths]
    if not isinstance(top_k, int) or top_k < 1:
        raise PredictError(f"top_k must be an integer >= 1, got {top_k!r}")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise PredictError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    entries = collect_images(paths)
    if not any(err is None for _, err in entries):
        missing = [path for path, err in entries if err]
        searched = [str(path) for path in paths if os.path.isdir(path)]
        reasons = [f"no such file or directory: {', '.join(missing)}"] if missing else []
        if searched or not paths:
            reasons.append(f"no images found in {', '.join(searched) or '(no paths given)'} "
                           f"(looked for {', '.join(IMAGE_EXTENSIONS)} files)")
        raise PredictError("; ".join(reasons))
    forward, meta, num_classes = _load_scorer(ckpt_path)
    names = class_names_for(meta, num_classes, labels)
    facts = meta.get("eval") or {}
    if not facts.get("image_size"):
        raise PredictError(f"{ckpt_path} records no eval image size; it cannot say how to preprocess")
    k = min(top_k, len(names))
    transforms = eval_transforms(facts)
    results: List[Dict[str, Any]] = []
    pending: List[Tuple[int, np.ndarray]] = []  # (index into results, preprocessed image)

    def flush() -> None:
        probs = softmax(forward(np.stack([a for _, a in pending])))
        for (i, _), p in zip(pending, probs):
            results[i]["top_k"] = _top_k(p, k, names)
        pending.clear()

    for path, err in entries:
        arr = None
        if err is None:
            arr, err = _load_one(path, facts, transforms)
        results.append({"path": path, "error": err} if err else {"path": path})
        if arr is not None:
            pending.append((len(results) - 1, arr))
            if len(pending) == batch_size:
                flush()
    if pending:
        flush()
    return results


def _load_scorer(path: str):
    """(images -> logits, meta with eval facts and class names, class count) for a model file.

    A checkpoint runs as validation runs it; an exported ONNX (onnxruntime) or MINDIR file with the
    preprocessing recorded inside it at export.
    """
    low = path.lower()
    if low.endswith((".onnx", ".mindir")):
        from .export import load_mindir, load_onnx

        if low.endswith(".onnx"):
            model = load_onnx(path)
            forward = model
        else:
            model = load_mindir(path)
            import mindspore as ms

            def forward(images):
                return model(ms.Tensor(images)).asnumpy()
        meta = model.export_meta
        if not meta:
            raise PredictError(f"{path} carries no mindcv_mnv2 preprocessing metadata (it was not written by "
                               f"python -m mindcv_mnv2.export); predict cannot know how to feed it: export it "
                               f"with this toolkit, or score it with validate.py and explicit --image_resize "
                               f"--mean --std")
        return forward, meta, int(meta["num_classes"])
    from .checkpoint import load_model
    from .engine.evaluator import inference_net

    net = load_model(path)
    return inference_net(net), getattr(net, "checkpoint_meta", None) or {}, int(net.num_classes)


# ----------------------------------------------------------------------------- CLI
def _print_text(results: Sequence[Mapping[str, Any]]) -> None:
    for r in results:
        if "error" in r:
            print(f"{r['path']}: ERROR: {r['error']}")
            continue
        print(r["path"])
        for rank, t in enumerate(r["top_k"], 1):
            print(f"  {rank}. {t['label']} ({t['index']}) {t['prob']:.4f}")


def main(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry point: 0 all classified, 1 some files failed, 2 bad request."""
    parser = argparse.ArgumentParser(prog="python -m mindcv_mnv2.predict",
                                     description="Classify images with a checkpoint (top-k + softmax).")
    parser.add_argument("--ckpt_path", required=True, help="checkpoint, or a model exported by mindcv_mnv2.export "
                                                          "(.onnx through onnxruntime, .mindir)")
    parser.add_argument("paths", nargs="+", help="image files and/or directories (walked recursively)")
    parser.add_argument("--top_k", type=int, default=5, help="classes to print per image")
    parser.add_argument("--labels", default=None, help="label file (one name per line, or 'index name' / "
                        "'wnid name' lines); default: the checkpoint's class names")
    parser.add_argument("--batch_size", type=int, default=32, help="images per inference batch")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    try:
        results = predict(args.ckpt_path, args.paths, top_k=args.top_k, labels=args.labels,
                          batch_size=args.batch_size)
    except ValueError as exc:  # PredictError, CheckpointError
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(results, indent=2))
    else:
        _print_text(results)
    failed = sum("error" in r for r in results)
    if failed:
        print(f"error: {failed} of {len(results)} file(s) could not be classified", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
