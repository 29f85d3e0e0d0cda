"""validate.py's job: score one model file exactly: a checkpoint (ours or MindCV's), or an exported
MINDIR (MindSpore) or ONNX file (onnxruntime, fp32 or int8)."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Callable, Dict, List, NamedTuple, Optional

import numpy as np

from ..config import Config, ConfigError, resolve_model_defaults
from ..distributed import init_distributed
from . import builders
from .context import amp_level_for, setup_context
from .evaluator import EvalNet, describe, evaluate
from .progress import setup_logging

log = logging.getLogger("mindcv_mnv2")
_EVAL_KEYS = {"image_size": "image_resize", "crop_pct": "crop_pct", "interpolation": "interpolation",
              "mean": "mean", "std": "std"}


def _eval_config(cfg: Config, ckpt_eval: Dict[str, Any], explicit_keys: frozenset = frozenset()) -> Config:
    """Eval keys: the recipe's when given, else the checkpoint's, else the model registry's."""
    from ..models.registry import model_defaults

    fill = {key: ckpt_eval[k] for k, key in _EVAL_KEYS.items()
            if ckpt_eval.get(k) is not None and getattr(cfg, key) is None}
    if "inception_crop" not in explicit_keys and ckpt_eval.get("inception_crop") is not None:
        fill["inception_crop"] = bool(ckpt_eval["inception_crop"])  # how it was trained to be scored
    if fill:
        cfg = cfg.replace(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in fill.items()})
    return resolve_model_defaults(cfg, model_defaults)


def _check_path(ckpt_path: str) -> None:
    from ..checkpoint import CheckpointError

    if not ckpt_path:
        raise ConfigError("ckpt_path: validate.py scores a trained checkpoint; pass --ckpt_path FILE "
                          "(.ckpt, or an exported .mindir / .onnx). Refusing to score random weights")
    if not os.path.exists(ckpt_path):
        raise CheckpointError(f"ckpt_path: '{ckpt_path}' does not exist")
    if os.path.isdir(ckpt_path):
        raise CheckpointError(f"ckpt_path: '{ckpt_path}' is a directory; pass a checkpoint file inside it")


class Scorer(NamedTuple):
    """What validate() scores with, and what the model file says about itself."""

    forward: Callable[[np.ndarray], np.ndarray]  # NCHW float32 batch -> logits
    class_names: Optional[List[str]]
    cfg: Config  # the recipe completed with the file's facts (model, preprocessing, batch for MINDIR)
    num_outputs: Optional[int]


def validate(cfg: Config, use_ema: bool = True, output_json: Optional[str] = None,
             explicit_keys: frozenset = frozenset()) -> Dict[str, Any]:
    """Evaluate ``cfg.ckpt_path`` on ``data_dir/val_split``; returns top-1/top-5/loss/counts.

    Keys the user did not set (``explicit_keys`` lists those they did) are taken from a
    self-describing checkpoint: model name, architecture facts and the eval preprocessing.
    """
    from ..checkpoint import CheckpointError

    _check_path(cfg.ckpt_path)
    device = setup_context(cfg.mode, cfg.device_target, cfg.seed, cfg.cpu_isa)
    dist = init_distributed(cfg.distribute, device, require_launcher=False)  # recipes say distribute: True
    setup_logging(None, dist.rank, dist.world)
    if device == "CPU":
        from ..ops import cpu_isa

        log.info(cpu_isa.describe())
    if cfg.ckpt_path.lower().endswith(".mindir"):
        scorer = _load_mindir(cfg, explicit_keys)
    elif cfg.ckpt_path.lower().endswith(".onnx"):
        scorer = _load_onnx(cfg, explicit_keys)
    else:
        scorer = _load_ckpt(cfg, use_ema, device, explicit_keys)
    cfg = scorer.cfg
    loader = builders.build_val_loader(cfg, dist, scorer.class_names)
    folders = len(loader.class_names)
    if scorer.num_outputs is not None and folders != scorer.num_outputs:
        raise CheckpointError(f"{cfg.ckpt_path} predicts {scorer.num_outputs} classes but {cfg.data_dir}/"
                              f"{cfg.val_split} has {folders} class folders; score it on data with the classes it "
                              f"was trained on")
    metrics = evaluate(scorer.forward, loader, dist, desc="validate")
    metrics.update({"checkpoint": os.path.abspath(cfg.ckpt_path), "model": cfg.model, "image_size": cfg.image_resize,
                    "split": cfg.val_split, "preprocessing": builders.eval_facts(cfg)})
    if dist.is_main:
        log.info(describe(metrics, os.path.basename(cfg.ckpt_path)))
        if output_json:
            with open(output_json, "w", encoding="utf-8") as fh:
                json.dump(metrics, fh, indent=1)
    return metrics


def _load_ckpt(cfg: Config, use_ema: bool, device: str, explicit_keys: frozenset) -> Scorer:
    from ..checkpoint import CheckpointError, load_weights, read_checkpoint

    tensors, meta = read_checkpoint(cfg.ckpt_path)
    head = tensors.get("classifier.1.weight")
    if head is None:
        raise CheckpointError(f"{cfg.ckpt_path}: no classifier.1.weight inside; not a MobileNetV2 checkpoint of "
                              f"this toolkit or MindCV")
    ckpt_classes = int(head.shape[0])
    num_classes = cfg.num_classes or ckpt_classes
    if num_classes != ckpt_classes:
        raise CheckpointError(f"{cfg.ckpt_path}: has {ckpt_classes} classes but num_classes is {num_classes}")
    if meta.get("model") and "model" not in explicit_keys:
        cfg = cfg.replace(model=meta["model"])
    kwargs = builders.model_kwargs(cfg, num_classes, meta.get("model_kwargs"), explicit_keys, cfg.ckpt_path)
    cfg = _eval_config(cfg, meta.get("eval") or {}, explicit_keys)
    net = builders.build_model(cfg, kwargs, device)
    has_ema = any(k.startswith("ema.") for k in tensors)
    load_weights(net, tensors, strict=True, use_ema=use_ema)
    log.info("loaded %s (%s weights, %d classes)", cfg.ckpt_path, "EMA" if use_ema and has_ema else "raw",
             num_classes)
    return Scorer(EvalNet(net, amp_level_for(device, cfg.val_amp_level)), meta.get("class_names"), cfg, num_classes)


def _exported_config(cfg: Config, path: str, info: Optional[Dict[str, Any]], input_shape,
                     explicit_keys: frozenset) -> Config:
    """The recipe completed with what an exported file says: model, preprocessing, its fixed input size."""
    if info is None:  # made elsewhere: the user says how to preprocess, or we refuse to guess
        missing = [k for k in ("image_resize", "mean", "std") if k not in explicit_keys]
        if missing:
            raise ConfigError(f"{path} carries no mindcv_mnv2 preprocessing metadata (it was not written by "
                              f"python -m mindcv_mnv2.export): give --{' --'.join(missing)} (and --crop_pct, "
                              f"--interpolation if they differ from 0.875, bilinear) to score it")
    else:
        if info.get("model") and "model" not in explicit_keys:
            cfg = cfg.replace(model=info["model"])
        cfg = _eval_config(cfg, info.get("eval") or {}, explicit_keys)
    size = input_shape[-1] if input_shape else None
    if size is not None:
        if "image_resize" in explicit_keys and cfg.image_resize != size:
            raise ConfigError(f"image_resize: {path} takes {size} px images (fixed at export) but the recipe says "
                              f"{cfg.image_resize}; drop --image_resize, or export again with --image_size "
                              f"{cfg.image_resize}")
        cfg = cfg.replace(image_resize=int(size))
    if input_shape and input_shape[0] is not None:  # a graph exported for one batch size
        cfg = cfg.replace(batch_size=int(input_shape[0]))
    return resolve_model_defaults(cfg, _model_defaults())


def _model_defaults():
    from ..models.registry import model_defaults

    return model_defaults


def _load_mindir(cfg: Config, explicit_keys: frozenset = frozenset()) -> Scorer:
    """An exported graph: its batch size and input size are fixed, its eval facts travel inside it."""
    import mindspore as ms

    from ..export import load_mindir

    cell = load_mindir(cfg.ckpt_path)
    info = cell.export_meta
    cfg = _exported_config(cfg, cfg.ckpt_path, info, cell.input_shape, explicit_keys)

    def forward(images):
        return cell(ms.Tensor(images)).asnumpy()

    return Scorer(forward, (info or {}).get("class_names"), cfg, (info or {}).get("num_classes"))


def _load_onnx(cfg: Config, explicit_keys: frozenset = frozenset()) -> Scorer:
    """An ONNX file through onnxruntime (fp32 or int8); dynamic batch unless exported otherwise."""
    from ..export import load_onnx

    model = load_onnx(cfg.ckpt_path)
    info = model.export_meta
    cfg = _exported_config(cfg, cfg.ckpt_path, info, model.input_shape, explicit_keys)
    classes = (info or {}).get("num_classes") or (model.num_classes if isinstance(model.num_classes, int) else None)
    return Scorer(model, (info or {}).get("class_names"), cfg, classes)
