"""The one configuration schema: every recipe key, its type, default and meaning.

Precedence is schema default < YAML recipe < command-line flag (only flags the user typed).
The result is an immutable :class:`Config` passed as an argument; nothing reads a global.
Each field's comment names the builder that consumes it (``[data.create_loader]`` etc.).
Imports only the standard library and yaml, so a config error never waits for MindSpore.
"""
from __future__ import annotations

import argparse
import dataclasses
import difflib
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Tuple, Union

import yaml

from .constants import (AUTO_AUGMENT_PREFIXES, CPU_ISA_CHOICES, DATA_CACHE_CHOICES, DEFAULT_CROP_PCT,
                        DEFAULT_DROP_RATE, DEFAULT_INTERPOLATION, DEPTHWISE_KERNELS, INTERPOLATIONS, OPTIMIZERS,
                        OUTPUT_STRIDES, PADDINGS, SCHEDULERS,
                        WEIGHT_DECAY_FILTERS)


from .errors import ConfigError  # noqa: F401  (raised here; re-exported for callers)


def _f(default: Any, comment: str, choices: Optional[Sequence[Any]] = None) -> Any:
    return field(default=default, metadata={"help": comment, "choices": choices})


# fmt: off
@dataclass(frozen=True)
class Config:
    """Every key of a training/validation recipe (MindCV names, defaults and meaning)."""

    # ---- system ------------------------------------------------------------------------
    mode: int = _f(0, "0 = graph mode, 1 = PyNative [engine.context.setup_context]", (0, 1))
    device_target: str = _f("auto", "CPU, GPU, Ascend, or auto = what this MindSpore build runs on [engine.context]",
                            ("auto", "CPU", "GPU", "Ascend"))
    distribute: bool = _f(False, "data-parallel over the launched processes (mpirun/msrun) [distributed.init_distributed]")
    val_while_train: bool = _f(False, "validate on val_split during training [engine.trainer]")
    val_interval: int = _f(1, "validate every N epochs when val_while_train [engine.trainer]")
    log_interval: int = _f(100, "print/log a training line every N steps [engine.trainer]")
    tensorboard: bool = _f(True, "write TensorBoard event files to <ckpt_save_dir>/tensorboard (rank 0) "
                                 "[engine.trainer -> engine.curves]")
    seed: int = _f(42, "seed for python, numpy, mindspore and the data pipeline [engine.context]")
    cpu_isa: str = _f("auto", "CPU only: instruction-set cap of MindSpore's oneDNN kernels; auto = the fastest "
                              "measured on this CPU (once, cached), DEFAULT = no cap; ONEDNN_MAX_CPU_ISA in the "
                              "environment wins [ops.cpu_isa.choose]", CPU_ISA_CHOICES)

    # ---- dataset -----------------------------------------------------------------------
    dataset: str = _f("imagenet", "dataset layout; imagenet and imagefolder both mean data_dir/<split>/<class>/<image> "
                                  "[data.create_loader]", ("imagenet", "imagefolder"))
    data_dir: str = _f("./", "root folder holding train_split and val_split [data.create_loader]")
    train_split: str = _f("train", "training sub-folder of data_dir [data.create_loader]")
    val_split: str = _f("val", "validation sub-folder of data_dir [data.create_loader]")
    dataset_download: bool = _f(False, "kept for MindCV recipes; must be False (nothing is downloaded)")
    num_parallel_workers: int = _f(8, "data-pipeline worker threads per process [data.create_loader]")
    data_cache: str = _f("off", "auto = training images decoded once into RAM and flipped/normalised per batch in "
                                "numpy when the recipe only flips (no random crop or colour ops), images already "
                                "have image_resize px and the split fits a quarter of free RAM; off = the per-image "
                                "MindSpore pipeline [data.create_loader]", DATA_CACHE_CHOICES)
    shuffle: bool = _f(True, "shuffle the training set every epoch [data.create_loader]")
    num_samples: Optional[int] = _f(None, "use only this many training images (None = all) [data.create_loader]")
    batch_size: int = _f(128, "images per device per step; global batch = batch_size x devices [data.create_loader]")
    drop_remainder: bool = _f(True, "drop the last partial training batch (validation never drops) [data.create_loader]")
    aug_repeats: int = _f(0, "repeated augmentation (MindCV key; only 0/1 supported here)")

    # ---- augmentation ------------------------------------------------------------------
    image_resize: Optional[int] = _f(None, "train crop / val crop size in px (None = the model's default size) "
                                           "[data.create_transforms]")
    scale: Tuple[float, float] = _f((0.08, 1.0), "random-resized-crop area range [data.create_transforms]")
    ratio: Tuple[float, float] = _f((0.75, 1.333), "random-resized-crop aspect-ratio range [data.create_transforms]")
    hflip: float = _f(0.5, "horizontal flip probability [data.create_transforms]")
    vflip: float = _f(0.0, "vertical flip probability [data.create_transforms]")
    color_jitter: Optional[float] = _f(0.4, "brightness/contrast/saturation jitter; None or 0 = off; "
                                            "ignored when auto_augment is set [data.create_transforms]")
    interpolation: Optional[str] = _f(None, f"resize interpolation (None = the model's default, {DEFAULT_INTERPOLATION}) "
                                            "[data.create_transforms]", (None, *INTERPOLATIONS))
    auto_augment: Optional[str] = _f(None, "randaug-m9-mstd0.5 / autoaug / autoaugr / trivialaugwide policy "
                                           "[data.create_transforms]")
    aug_splits: int = _f(0, "AugMix splits (MindCV key; only 0 supported here)")
    re_prob: float = _f(0.0, "random-erasing probability [data.create_transforms]")
    re_scale: Tuple[float, float] = _f((0.02, 0.33), "random-erasing area range [data.create_transforms]")
    re_ratio: Tuple[float, float] = _f((0.3, 3.3), "random-erasing aspect range [data.create_transforms]")
    re_value: Union[float, str] = _f(0, "random-erasing fill: a number or 'random' [data.create_transforms]")
    re_max_attempts: int = _f(10, "random-erasing tries per image [data.create_transforms]")
    mean: Optional[Tuple[float, float, float]] = _f(None, "per-channel mean on 0-255 pixels (None = the model's, "
                                                          "ImageNet's) [data.create_transforms]")
    std: Optional[Tuple[float, float, float]] = _f(None, "per-channel std on 0-255 pixels (None = the model's) "
                                                         "[data.create_transforms]")
    crop_pct: Optional[float] = _f(None, "val: resize shorter side to image_resize/crop_pct, then center-crop "
                                         f"(None = the model's, {DEFAULT_CROP_PCT}) [data.create_transforms]")
    inception_crop: bool = _f(False, "TF-slim/Inception val preprocessing: central crop of crop_pct of the image, "
                                     "then resize (instead of resize-then-crop) [data.create_transforms]")
    mixup: float = _f(0.0, "mixup beta-distribution alpha; 0 = off [data.create_loader]")
    cutmix: float = _f(0.0, "cutmix beta-distribution alpha; 0 = off [data.create_loader]")
    cutmix_prob: float = _f(1.0, "probability of applying mixup/cutmix to a batch [data.create_loader]")
    mixup_switch_prob: float = _f(0.5, "with both mixup and cutmix on, probability of cutmix [data.create_loader]")

    # ---- model -------------------------------------------------------------------------
    model: str = _f("mobilenet_v2_035_224", "registered model name, e.g. mobilenet_v2_075 [models.create_model]")
    num_classes: Optional[int] = _f(None, "classes; None = the number of class folders (train) or the checkpoint's "
                                          "(validate); when set, a check against them [engine.builders]")
    in_channels: int = _f(3, "input image channels [models.create_model]")
    drop_rate: Optional[float] = _f(None, f"dropout before the classifier (None = {DEFAULT_DROP_RATE}) "
                                          "[models.create_model]")
    drop_path_rate: Optional[float] = _f(None, "stochastic depth (MindCV key; not part of MobileNetV2, must be None/0)")
    output_stride: int = _f(32, "network stride: 16 or 8 keep later feature maps larger with dilation (same "
                                "parameters; for small images and dense tasks) [models.create_model]", OUTPUT_STRIDES)
    padding: str = _f("symmetric", "symmetric (MindCV/torchvision) or tf_same (TensorFlow/Keras weights) "
                                   "[models.create_model]", PADDINGS)
    depthwise_kernel: str = _f("auto", "aot = the project's C++ CPU kernels for the depthwise 3x3 conv and the training "
                                       "BatchNorm + ReLU6 (built once with g++; ~2x faster CPU training, same "
                                       "results to float rounding), native = MindSpore's nn.Conv2d / nn.BatchNorm2d, "
                                       "auto = aot on CPU, native elsewhere [ops.apply_depthwise_kernel]",
                               DEPTHWISE_KERNELS)
    freeze_layer: str = _f("none", "fine-tuning: none, backbone (only the classifier trains), or N (the first N "
                                   "entries of features frozen; ModelZoo's key) [engine.finetune]")
    filter_head: bool = _f(False, "with ckpt_path: load everything but the classifier (ModelZoo's key) "
                                  "[engine.trainer]")
    cache_features: bool = _f(True, "with freeze_layer: backbone and no random augmentation, compute the "
                                    "backbone's features once and train the head on them [engine.finetune]")
    pretrained: bool = _f(False, "initialise from ckpt_path (nothing is downloaded) [checkpoint.load_weights]")
    ckpt_path: str = _f("", "checkpoint to initialise from, or to score in validate.py [checkpoint.load_weights]")
    resume_opt: bool = _f(False, "with ckpt_path: also restore optimizer, EMA, epoch and step [engine.trainer]")
    resume: str = _f("", "run directory or checkpoint to resume exactly (model, optimizer, EMA, step) [engine.trainer]")
    keep_checkpoint_max: int = _f(10, "how many latest epoch checkpoints to keep [checkpoint.CheckpointKeeper]")
    ckpt_save_dir: str = _f("./ckpt", "run directory: checkpoints, config.yaml, metrics.jsonl, train.log "
                                      "[engine.trainer]")
    ckpt_save_interval: int = _f(1, "save a checkpoint every N epochs [checkpoint.CheckpointKeeper]")
    ckpt_save_policy: Optional[str] = _f("latest_k", "latest_k keeps the newest, top_k the best-scoring "
                                                     "[checkpoint.CheckpointKeeper]", (None, "latest_k", "top_k"))
    epoch_size: int = _f(90, "training epochs [engine.trainer]")
    dataset_sink_mode: bool = _f(True, "feed the device through a data queue where supported [engine.trainer]")
    ema: bool = _f(False, "keep an exponential moving average of the weights [engine.train_step]")
    ema_decay: float = _f(0.9999, "EMA decay per step [engine.train_step]")
    clip_grad: bool = _f(False, "clip gradients by global norm [engine.train_step]")
    clip_value: float = _f(15.0, "global-norm bound when clip_grad [engine.train_step]")
    layer_decay: Optional[float] = _f(None, "layer-wise LR decay (MindCV key; ViT-only, must be None)")
    gradient_accumulation_steps: int = _f(1, "accumulate gradients over N batches per update [engine.train_step]")

    # ---- optimizer ---------------------------------------------------------------------
    opt: str = _f("adam", "optimizer [optim.create_optimizer]", OPTIMIZERS)
    momentum: float = _f(0.9, "momentum (momentum, rmsprop) [optim.create_optimizer]")
    weight_decay: float = _f(1e-6, "L2 weight decay [optim.create_optimizer]")
    use_nesterov: bool = _f(False, "Nesterov momentum [optim.create_optimizer]")
    weight_decay_filter: str = _f("disable", "disable: decay all; auto / norm_and_bias: no decay on BN and biases "
                                             "[optim.create_optimizer]", WEIGHT_DECAY_FILTERS)
    eps: float = _f(1e-10, "optimizer epsilon (rmsprop, adam) [optim.create_optimizer]")
    rmsprop_decay: float = _f(0.9, "RMSProp moving-average decay (TF's 'decay'/rho) [optim.create_optimizer]")

    # ---- LR schedule (durations in epochs, converted to steps in optim.create_lr_schedule) -----
    scheduler: str = _f("cosine_decay", "LR schedule after warmup [optim.create_lr_schedule]", SCHEDULERS)
    lr: float = _f(0.001, "peak learning rate (for the whole global batch) [optim.create_lr_schedule]")
    min_lr: float = _f(1e-6, "cosine floor [optim.create_lr_schedule]")
    warmup_epochs: float = _f(3, "linear warmup length in epochs (fractions allowed) [optim.create_lr_schedule]")
    warmup_factor: float = _f(0.0, "warmup starts at lr x warmup_factor [optim.create_lr_schedule]")
    decay_epochs: float = _f(100, "cosine length / step-decay period in epochs (fractions allowed) "
                                  "[optim.create_lr_schedule]")
    decay_rate: float = _f(0.9, "multiplier per step/exponential decay period [optim.create_lr_schedule]")
    multi_step_decay_milestones: Tuple[float, ...] = _f((30, 60, 90), "epochs at which multi_step_decay multiplies "
                                                                       "by decay_rate [optim.create_lr_schedule]")
    lr_epoch_stair: bool = _f(False, "hold the LR constant within each epoch [optim.create_lr_schedule]")
    num_cycles: int = _f(1, "cosine restarts over decay_epochs [optim.create_lr_schedule]")
    cycle_decay: float = _f(1.0, "peak multiplier per cosine cycle [optim.create_lr_schedule]")

    # ---- loss --------------------------------------------------------------------------
    loss: str = _f("CE", "CE (softmax cross-entropy) or BCE (sigmoid binary cross-entropy) [optim.create_loss]",
                   ("CE", "BCE"))
    label_smoothing: float = _f(0.0, "label smoothing epsilon [optim.create_loss]")
    aux_factor: float = _f(0.0, "auxiliary-head loss weight (MindCV key; MobileNetV2 has none, must be 0)")
    reduction: str = _f("mean", "loss reduction over the batch [optim.create_loss]", ("mean", "sum"))

    # ---- mixed precision and loss scaling ----------------------------------------------
    amp_level: str = _f("O0", "O0 fp32, O1/O2 mixed, O3 fp16; CPU runs fp32 with a warning [engine.train_step]",
                        ("O0", "O1", "O2", "O3"))
    val_amp_level: str = _f("O0", "AMP level for evaluation [engine.evaluator]", ("O0", "O1", "O2", "O3"))
    amp_cast_list: Optional[str] = _f(None, "custom AMP cell list (MindCV key; must be None)")
    loss_scale_type: str = _f("fixed", "fixed or dynamic loss scaling (auto = dynamic) [engine.train_step]",
                              ("fixed", "dynamic", "auto"))
    loss_scale: float = _f(1.0, "(initial) loss scale [engine.train_step]")
    drop_overflow_update: bool = _f(False, "skip the update of a step whose gradients overflowed "
                                           "[engine.train_step]")
    eval_shuffle: bool = _f(False, "shuffle the validation set (has no effect on exact scores) [data.create_loader]")
# fmt: on

    def replace(self, **changes: Any) -> "Config":
        """Return a validated copy with some keys changed."""
        for k in changes:
            _check_known(k, "replace()")
        merged = {**self.to_dict(), **changes}
        return build_config(merged, source="replace()")

    def to_dict(self) -> Dict[str, Any]:
        """Plain dict of every key (tuples become lists, as YAML writes them)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = list(v) if isinstance(v, tuple) else v
        return out

    def to_yaml(self) -> str:
        """The fully resolved config as YAML that loads back to the same Config."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)


FIELDS: Dict[str, dataclasses.Field] = {f.name: f for f in dataclasses.fields(Config)}
_HINTS = typing.get_type_hints(Config)

# Older MindCV spellings, translated so old recipe files load unchanged and train as they did there.
LEGACY_KEYS: Dict[str, Callable[[Any], Dict[str, Any]]] = {
    # MindCV before 0.3.0: True gave its "no decay" group no weight_decay key, so MindSpore decayed it
    # anyway (every parameter decayed); False left MindSpore's BatchNorm filter on. MindCV's own
    # migration (PR #752) maps them to 'disable' and 'auto'; so does this.
    "filter_bias_and_bn": lambda v: {"weight_decay_filter": "disable" if _to_bool(v, "filter_bias_and_bn")
                                     else "auto"},
    "dynamic_loss_scale": lambda v: {"loss_scale_type": "dynamic"} if _to_bool(v, "dynamic_loss_scale") else {},
}

# MindCV keys accepted for recipe compatibility but only at a value this toolkit implements.
_ONLY_DEFAULT = {"aug_repeats": (0, 1), "aug_splits": (0,), "drop_path_rate": (None, 0, 0.0),
                 "layer_decay": (None,), "amp_cast_list": (None,), "aux_factor": (0, 0.0),
                 "dataset_download": (False,)}


# ---------------------------------------------------------------------------------------
# type coercion
_TRUE = {"true", "yes", "1", "on", "y"}
_FALSE = {"false", "no", "0", "off", "n"}


def _to_bool(v: Any, key: str) -> bool:
    if isinstance(v, bool):
        return v
    if isinstance(v, int) and v in (0, 1):
        return bool(v)
    if isinstance(v, str) and v.strip().lower() in _TRUE | _FALSE:
        return v.strip().lower() in _TRUE
    raise ConfigError(f"{key}: expected a boolean (true/false/yes/no/1/0), got {v!r}")


def _is_none(v: Any) -> bool:
    return v is None or (isinstance(v, str) and v.strip().lower() in ("none", "null", "~", ""))


def _to_number(v: Any, typ: type, key: str) -> Any:
    what = "an integer" if typ is int else "a number"
    if not isinstance(v, bool):
        if isinstance(v, (int, float)):
            if typ is float:
                return float(v)
            if isinstance(v, int) or v.is_integer():
                return int(v)
        elif isinstance(v, str):  # command-line text; also YAML 1.1 reads 3e-5 (no dot) as a string
            try:
                return typ(v.strip())
            except ValueError:
                pass
    raise ConfigError(f"{key}: expected {what}, got {v!r}")


def _to_scalar(v: Any, typ: type, key: str) -> Any:
    if typ is bool:
        return _to_bool(v, key)
    if typ in (int, float):
        return _to_number(v, typ, key)
    if typ is str:
        if isinstance(v, str):
            return v
        if isinstance(v, bool):  # YAML 1.1 reads unquoted off/on/yes/no as booleans
            raise ConfigError(f"{key}: expected a string, got {v!r} (YAML reads unquoted off/on/yes/no as "
                              f"booleans); quote it, e.g. {key}: '{'on' if v else 'off'}'")
        raise ConfigError(f"{key}: expected a string, got {v!r} ({type(v).__name__})")
    raise TypeError(typ)  # pragma: no cover - schema bug


def _coerce(key: str, v: Any) -> Any:
    """Convert a YAML/CLI value to the schema type of ``key`` or raise ConfigError."""
    hint = _HINTS[key]
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Union and type(None) in args:  # Optional[X]
        if _is_none(v):
            return None
        hint = next(a for a in args if a is not type(None))
        origin, args = typing.get_origin(hint), typing.get_args(hint)
    if key == "freeze_layer" and isinstance(v, int) and not isinstance(v, bool):
        return str(v)  # YAML reads `freeze_layer: 5` as a number
    if key == "re_value":
        if isinstance(v, str) and v.strip().lower() == "random":
            return "random"
        return _to_scalar(v, float, key)
    if origin is tuple:
        if isinstance(v, str):
            v = [s for s in re.split(r"[,\s]+", v.strip("()[] ")) if s]
        if not isinstance(v, (list, tuple)):
            raise ConfigError(f"{key}: expected a list, got {v!r}")
        variadic = len(args) == 2 and args[1] is Ellipsis
        if not variadic and len(v) != len(args):
            raise ConfigError(f"{key}: expected {len(args)} values, got {len(v)} ({list(v)!r})")
        return tuple(_to_scalar(x, args[0], key) for x in v)
    return _to_scalar(v, hint, key)


# ---------------------------------------------------------------------------------------
# validation
def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, list(FIELDS) + list(LEGACY_KEYS), n=1, cutoff=0.6)
    return f"; did you mean '{close[0]}'?" if close else "; run with --print_config to see every key"


def _check_known(key: str, source: str) -> None:
    if key not in FIELDS:
        raise ConfigError(f"{source}: unknown key '{key}'{_suggest(key)}")


def _validate(cfg: Config) -> None:
    """Value ranges and cross-field rules; raises ConfigError naming the key."""
    for name, f in FIELDS.items():
        choices = f.metadata["choices"]
        v = getattr(cfg, name)
        if choices is not None and v not in choices:
            shown = ", ".join(str(c) for c in choices)
            raise ConfigError(f"{name}: {v!r} is not one of: {shown}")
    for name, allowed in _ONLY_DEFAULT.items():
        if getattr(cfg, name) not in allowed:
            raise ConfigError(f"{name}: {getattr(cfg, name)!r} is not supported by mindcv_mnv2 "
                              f"(allowed: {', '.join(map(str, allowed))}); remove the key")

    def need(cond: bool, key: str, msg: str) -> None:
        if not cond:
            raise ConfigError(f"{key}: {msg} (got {getattr(cfg, key)!r})")

    for key in ("batch_size", "epoch_size", "val_interval", "log_interval", "keep_checkpoint_max",
                "ckpt_save_interval", "gradient_accumulation_steps", "num_cycles", "in_channels", "re_max_attempts"):
        need(getattr(cfg, key) >= 1, key, "must be >= 1")
    need(cfg.num_parallel_workers >= 1, "num_parallel_workers", "must be >= 1")
    for key in ("num_samples", "num_classes", "image_resize"):
        v = getattr(cfg, key)
        need(v is None or v >= 1, key, "must be >= 1 or None")
    if cfg.image_resize is not None:
        need(cfg.image_resize >= 32, "image_resize", "must be >= 32 px (MobileNetV2 downsamples by 32)")
    for key in ("lr", "min_lr", "weight_decay", "momentum", "warmup_epochs", "warmup_factor", "label_smoothing",
                "mixup", "cutmix", "clip_value", "eps", "decay_rate", "cycle_decay"):
        need(getattr(cfg, key) >= 0, key, "must be >= 0")
    need(math.isfinite(cfg.lr), "lr", "must be finite")
    need(cfg.loss_scale > 0, "loss_scale", "must be > 0")
    need(cfg.decay_epochs > 0, "decay_epochs", "must be > 0")
    need(cfg.min_lr <= cfg.lr, "min_lr", f"must not exceed lr={cfg.lr}")
    for key in ("hflip", "vflip", "re_prob", "cutmix_prob", "mixup_switch_prob", "ema_decay"):
        need(0.0 <= getattr(cfg, key) <= 1.0, key, "must be within [0, 1]")
    need(cfg.label_smoothing < 1.0, "label_smoothing", "must be < 1")
    need(cfg.momentum < 1.0 or cfg.opt not in ("momentum", "rmsprop"), "momentum", "must be < 1")
    need(0 <= cfg.rmsprop_decay < 1, "rmsprop_decay", "must be within [0, 1)")
    need(cfg.color_jitter is None or cfg.color_jitter >= 0, "color_jitter", "must be >= 0 or None")
    if cfg.crop_pct is not None:
        need(0 < cfg.crop_pct <= 1, "crop_pct", "must be within (0, 1]")
    for key in ("scale", "ratio", "re_scale", "re_ratio"):
        lo, hi = getattr(cfg, key)
        need(0 < lo <= hi, key, "must be [min, max] with 0 < min <= max")
    need(cfg.scale[1] <= 1.0, "scale", "max must be <= 1.0 (a fraction of the image area)")
    if cfg.std is not None:
        need(all(s > 0 for s in cfg.std), "std", "values must be > 0")
    need(cfg.re_value == "random" or isinstance(cfg.re_value, float), "re_value", "must be a number or 'random'")
    ms = cfg.multi_step_decay_milestones
    need(list(ms) == sorted(ms) and all(m > 0 for m in ms), "multi_step_decay_milestones",
         "must be increasing positive epochs")
    if cfg.auto_augment is not None:
        need(cfg.auto_augment.split("-")[0] in AUTO_AUGMENT_PREFIXES, "auto_augment",
             f"policy must start with one of {', '.join(AUTO_AUGMENT_PREFIXES)}")
    fl = cfg.freeze_layer.strip().lower()
    need(fl in ("none", "backbone") or (fl.isdigit() and 0 <= int(fl) <= 23), "freeze_layer",
         "must be none, backbone, or an integer from 0 to 23 (entries of features to freeze)")
    need(cfg.model.startswith("mobilenet_v2"), "model", "this toolkit builds MobileNetV2 models (mobilenet_v2_*)")


def _translate_legacy(values: Mapping[str, Any]) -> Dict[str, Any]:
    """Replace older MindCV key spellings; the current spelling wins within one source."""
    out = {k: v for k, v in values.items() if k not in LEGACY_KEYS}
    for k, v in values.items():
        if k in LEGACY_KEYS:
            for nk, nv in LEGACY_KEYS[k](v).items():
                out.setdefault(nk, nv)
    return out


def build_config(values: Mapping[str, Any], source: str = "config") -> Config:
    """Make a validated Config from a mapping of (possibly legacy, possibly string) values."""
    given = _translate_legacy(values)
    for k in given:
        _check_known(k, source)
    merged = {k: f.default for k, f in FIELDS.items()}
    merged.update(given)
    cfg = Config(**{k: _coerce(k, v) for k, v in merged.items()})
    _validate(cfg)
    return cfg


def read_yaml(path: str) -> Dict[str, Any]:
    """Read a recipe file into a dict; missing/unreadable/non-mapping files raise ConfigError."""
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path!r} (pass -c/--config with an existing YAML file, "
                          f"e.g. configs/mobilenet_v2_0.75_ascend.yaml)")
    try:
        with open(path, encoding="utf-8") as fh:
            data = yaml.safe_load(fh)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: a recipe must be a mapping of key: value, got {type(data).__name__}")
    return data


def _read_recipe(path: str) -> Dict[str, Any]:
    """A recipe file's keys, checked against the schema and with legacy spellings translated."""
    data = read_yaml(path)
    for k in data:
        if k not in FIELDS and k not in LEGACY_KEYS:
            raise ConfigError(f"{path}: unknown key '{k}'{_suggest(k)}")
    return _translate_legacy(data)


# ---------------------------------------------------------------------------------------
# command line
def _flag_type(key: str) -> Tuple[Optional[str], Callable[[str], Any]]:
    hint = _HINTS[key]
    args = typing.get_args(hint)
    inner = next((a for a in args if a is not type(None)), hint) if type(None) in args else hint
    if typing.get_origin(inner) is tuple:
        return "+", str
    if inner is bool:
        return "?", str
    return None, str


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # argparse would exit(2) with usage spam
        raise ConfigError(message)


def make_parser(prog: str, extra: Optional[Callable[[argparse.ArgumentParser], None]] = None) -> argparse.ArgumentParser:
    """An argparse parser with one flag per schema key; unset flags stay absent."""
    p = _Parser(prog=prog, description="Keys and defaults: see --print_config.", allow_abbrev=False,
                argument_default=argparse.SUPPRESS)
    p.add_argument("-c", "--config", help="YAML recipe (MindCV format)")
    p.add_argument("--print_config", action="store_true", help="print the resolved config as YAML and exit")
    for key, f in FIELDS.items():
        nargs, typ = _flag_type(key)
        kw: Dict[str, Any] = {"help": f.metadata["help"], "type": typ}
        if nargs == "?":
            kw.update(nargs="?", const="true")
        elif nargs:
            kw["nargs"] = nargs
        p.add_argument(f"--{key}", **kw)
    for key in LEGACY_KEYS:
        p.add_argument(f"--{key}", nargs="?", const="true", help=argparse.SUPPRESS)
    if extra:
        extra(p)
    return p


def parse_args(argv: Sequence[str], prog: str = "train.py",
               extra: Optional[Callable[[argparse.ArgumentParser], None]] = None,
               model_defaults: Optional[Callable[[str], Mapping[str, Any]]] = None,
               ) -> Tuple[Config, argparse.Namespace]:
    """Parse ``argv`` into (Config, namespace of extra flags); defaults < YAML < typed flags.

    ``model_defaults(name)`` returns the registry's eval facts for a model (image size,
    crop_pct, interpolation, mean, std); they fill keys the recipe leaves as None and it
    raises ConfigError for an unknown model name.
    """
    parser = make_parser(prog, extra)
    ns, unknown = parser.parse_known_args(list(argv))
    if unknown:
        bad = next(u for u in unknown if u.startswith("-")) if any(u.startswith("-") for u in unknown) else unknown[0]
        key = bad.lstrip("-").split("=")[0]
        hint = _suggest(key) if bad.startswith("-") else "; values must follow a --key flag"
        raise ConfigError(f"command line: unknown argument '{bad}'{hint}")
    cfg_path = getattr(ns, "config", None)
    values = _read_recipe(cfg_path) if cfg_path else {}
    values.update(_translate_legacy({k: v for k, v in vars(ns).items() if k in FIELDS or k in LEGACY_KEYS}))
    cfg = build_config(values, source=cfg_path or "command line")
    if model_defaults is not None:
        cfg = resolve_model_defaults(cfg, model_defaults)
    extras = argparse.Namespace(**{k: v for k, v in vars(ns).items() if k not in FIELDS and k not in LEGACY_KEYS})
    extras.explicit_keys = frozenset(_translate_legacy(values))  # keys the recipe or the command line set
    return cfg, extras


def resolve_model_defaults(cfg: Config, model_defaults: Callable[[str], Mapping[str, Any]]) -> Config:
    """Fill None eval keys (image_resize, crop_pct, interpolation, mean, std) from the model registry."""
    try:
        facts = model_defaults(cfg.model)
    except KeyError as exc:
        raise ConfigError(f"model: {exc.args[0] if exc.args else cfg.model}") from None
    fill = {k: v for k, v in facts.items() if k in FIELDS and getattr(cfg, k) is None}
    return cfg.replace(**fill) if fill else cfg


def load_config(path: Optional[str] = None, overrides: Optional[Mapping[str, Any]] = None,
                model_defaults: Optional[Callable[[str], Mapping[str, Any]]] = None) -> Config:
    """Python API: defaults < YAML file < overrides, validated."""
    values = {**(_read_recipe(path) if path else {}), **_translate_legacy(overrides or {})}
    cfg = build_config(values, source=path or "overrides")
    return resolve_model_defaults(cfg, model_defaults) if model_defaults else cfg

