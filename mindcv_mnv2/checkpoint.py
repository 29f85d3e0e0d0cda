"""Checkpoint I/O: atomic saves, safe reads, strict loading with diagnoses, self-describing files.

Files are MindSpore ``.ckpt`` files, so MindCV and MindSpore tools read them. Besides the
tensors, a file written by this project holds one string entry ``mnv2_meta``: a JSON object

.. code-block:: text

    {
      "format": "mindcv_mnv2/1",
      "model": "mobilenet_v2_100",              # registry name
      "model_kwargs": {"width_mult": 1.0, "num_classes": 1000, "in_channels": 3,
                       "padding": "symmetric", "drop_rate": 0.2},
      "class_names": ["tench", ...] | null,     # index -> name, len == num_classes
      "eval": {"image_size": 224, "crop_pct": 0.875, "interpolation": "bilinear",
               "mean": [123.675, 116.28, 103.53], "std": [58.395, 57.12, 57.375]},
      # written by the training engine (optional for other writers; the engine may nest the
      # loop counters under "train_state"):
      "epoch": int, "global_step": int, "steps_per_epoch": int, "best_metric": float | null,
      "config": {...},                          # the run's resolved config
      "has_ema": bool                           # "ema.<param>" copies are in the file
    }

Readers must tolerate extra keys (e.g. "source" from the Keras converter); ``load_model`` only
needs "model_kwargs".

``model_meta()`` fills the first five keys consistently. Foreign files (MindCV's) have no meta;
``load_model`` then infers the width and class count from tensor shapes. MindSpore ModelZoo /
Hub MobileNetV2 files (``features.0.features.0.weight`` ...) are recognised by their names and
read under ours (interop_modelzoo); their meta is ``{"source": "mindspore-modelzoo", ...}``.

Tensor naming: model tensors use the network's parameter names (``features.0.weight`` ...);
EMA copies are ``ema.<name>``; optimizer and loop state (``moments.*``, ``global_step``,
``optimizer.*`` ...) are dropped by ``extract_model_state``.
"""
from __future__ import annotations

import binascii
import errno
import json
import os
import uuid
from typing import TYPE_CHECKING, Any, Dict, Iterable, List, Mapping, Optional, Tuple

import numpy as np

from .constants import DEFAULT_DROP_RATE, WIDTHS

if TYPE_CHECKING:
    from mindspore import nn

    from .models.mobilenetv2 import MobileNetV2

META_KEY = "mnv2_meta"
FORMAT = "mindcv_mnv2/1"
_CRC_MARK = b"crc_num"

# Optimizer / loop state that training networks save next to the model tensors, by owner:
# the optimizers' slots (MindSpore 2.10: Momentum moments; SGD accum, stat; RMSProp mean_square,
# moment, mean_grad; Adam moment1, moment2; AdamWeightDecay adam_m, adam_v), this project's train
# step (EMA copies, partial gradient sums, loss-scale counters) and MindCV's (accu_grads).
# tests/test_train_step.py checks that every optimizer the recipes can name is covered.
OPTIMIZER_SLOT_PREFIXES = ("moments.", "accum.", "stat.", "mean_square.", "moment.", "mean_grad.", "moment1.",
                           "moment2.", "adam_m.", "adam_v.")
EMA_PREFIX, GRAD_ACCUM_PREFIX = "ema.", "grad_accum."
TRAINING_STATE_PREFIXES = OPTIMIZER_SLOT_PREFIXES + (EMA_PREFIX, GRAD_ACCUM_PREFIX, "accu_grads.", "optimizer.")
TRAINING_STATE_NAMES = frozenset({
    "beta1_power", "beta2_power", "global_step", "learning_rate", "momentum", "scale_sense",
    "loss_scale", "epoch_num", "step_num", "current_iterator_step", "last_overflow_iterator_step",
    META_KEY})
# Widths whose networks load_model can recognise from tensor shapes: the registry's.
KNOWN_WIDTHS = tuple(WIDTHS.values())


from .errors import CheckpointError  # noqa: E402,F401  (raised here; re-exported)
from . import interop_modelzoo as modelzoo  # noqa: E402


# ----------------------------------------------------------------------------- writing
def save_checkpoint(path: str, params: Mapping[str, Any], meta: Optional[Mapping[str, Any]] = None) -> None:
    """Atomically write tensors (+ optional JSON meta) to a MindSpore .ckpt file (mode 0644)."""
    import mindspore as ms

    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"cannot save checkpoint to '{path}': it is a directory; give a file name")
    if not path.endswith(".ckpt"):
        raise CheckpointError(f"cannot save checkpoint to '{path}': the file name must end with .ckpt")
    directory = os.path.dirname(os.path.abspath(path))
    try:
        os.makedirs(directory, exist_ok=True)
    except OSError as e:
        raise CheckpointError(f"cannot save checkpoint '{path}': cannot create directory "
                              f"'{directory}' ({e.strerror or e})") from None
    if not os.access(directory, os.W_OK):
        raise CheckpointError(f"cannot save checkpoint '{path}': directory '{directory}' is not writable")
    if META_KEY in params:
        raise CheckpointError(f"cannot save checkpoint '{path}': '{META_KEY}' is reserved for the meta entry")
    entries = [{"name": str(name), "data": _as_tensor(name, value)} for name, value in params.items()]
    append = {META_KEY: _meta_json(meta, path)} if meta is not None else None

    # MindSpore appends ".ckpt" to other names and stages through "<stem>.tmp"; both live in our
    # directory so the final os.replace is atomic and a failed write leaves `path` untouched.
    _remove_stale_temporaries(directory, os.path.basename(path))
    tmp = os.path.join(directory, f".{os.path.basename(path)}.{os.getpid()}.{uuid.uuid4().hex[:8]}.ckpt")
    ms_stage = tmp[:-len(".ckpt")] + ".tmp"
    try:
        ms.save_checkpoint(entries, tmp, append_dict=append, crc_check=True)
        os.chmod(tmp, 0o644)
        _fsync(tmp)
        os.replace(tmp, path)
    except OSError as e:
        _remove_quietly(tmp, ms_stage)
        reason = "the disk is full" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise CheckpointError(f"cannot save checkpoint '{path}': {reason}; the previous file at that "
                              f"path (if any) is unchanged") from None
    except BaseException:
        _remove_quietly(tmp, ms_stage)
        raise


def _remove_stale_temporaries(directory: str, basename: str) -> None:
    """Delete temporaries of earlier saves of ``basename`` whose writer is gone (e.g. killed with -9)."""
    prefix = f".{basename}."
    for entry in os.listdir(directory):
        if not (entry.startswith(prefix) and entry.endswith((".ckpt", ".tmp"))):
            continue
        pid = entry[len(prefix):].split(".", 1)[0]
        if pid.isdigit() and int(pid) != os.getpid() and not _alive(int(pid)):
            _remove_quietly(os.path.join(directory, entry))


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def _as_tensor(name: str, value: Any):
    import mindspore as ms
    if isinstance(value, ms.Tensor):  # Parameter is a Tensor too
        return value
    try:
        return ms.Tensor(np.ascontiguousarray(np.asarray(value)))
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot save tensor '{name}': {type(value).__name__} is not array-like ({e})") from None


def _meta_json(meta: Mapping[str, Any], path: str) -> str:
    def default(o: Any) -> Any:
        if isinstance(o, np.generic):
            return o.item()
        if isinstance(o, np.ndarray):
            return o.tolist()
        if isinstance(o, (set, frozenset)):
            return sorted(o)
        raise TypeError(f"{type(o).__name__} is not JSON serialisable")
    try:
        return json.dumps(dict(meta), default=default, sort_keys=True)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"cannot save checkpoint '{path}': meta is not JSON serialisable ({e})") from None


def _fsync(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove_quietly(*paths: str) -> None:
    for p in paths:
        try:
            if os.path.lexists(p):
                os.chmod(p, 0o600)
                os.remove(p)
        except OSError:
            pass


# ----------------------------------------------------------------------------- reading
def read_checkpoint(path: str) -> Tuple[Dict[str, np.ndarray], Dict[str, Any]]:
    """All tensors of a .ckpt file as numpy arrays, plus its meta dict ({} for foreign files)."""
    import mindspore as ms

    path = os.fspath(path)
    _check_readable(path)
    fmt = "safetensors" if path.endswith(".safetensors") else "ckpt"
    crc = fmt == "ckpt" and _has_crc(path)
    try:
        raw = ms.load_checkpoint(path, crc_check=crc, format=fmt)
    except Exception as e:  # MindSpore reports bad files as ValueError/RuntimeError with long traces
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint '{path}': the file is truncated, corrupt or not "
                              f"a MindSpore checkpoint ({first})") from None
    tensors: Dict[str, np.ndarray] = {}
    meta: Dict[str, Any] = {}
    for name, value in raw.items():
        if name == META_KEY:
            try:
                meta = json.loads(value)
            except (TypeError, ValueError):
                raise CheckpointError(f"cannot read checkpoint '{path}': its '{META_KEY}' entry is not "
                                      f"valid JSON") from None
        elif not isinstance(value, str):
            tensors[name] = value.asnumpy()
    if not tensors:
        raise CheckpointError(f"cannot read checkpoint '{path}': it holds no tensors")
    if not meta:  # a foreign file: ModelZoo's names become ours here, so every reader gets them
        tensors, meta = modelzoo.translate(tensors)
    return tensors, meta


def read_meta(path: str) -> Dict[str, Any]:
    """The meta dict of a checkpoint ({} for files without one)."""
    return read_checkpoint(path)[1]


def _check_readable(path: str) -> None:
    if not os.path.exists(path):
        raise CheckpointError(f"checkpoint '{path}' does not exist; check the path (e.g. --ckpt_path)")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint '{path}' is a directory; give the path of a .ckpt file")
    if not path.endswith((".ckpt", ".safetensors")):
        raise CheckpointError(f"checkpoint '{path}' is not a MindSpore checkpoint: expected a .ckpt "
                              f"(or .safetensors) file")
    size = os.path.getsize(path)
    if size == 0:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes): an interrupted copy? "
                              f"use another checkpoint")
    if not os.access(path, os.R_OK):
        raise CheckpointError(f"checkpoint '{path}' is not readable (permission denied)")


def _has_crc(path: str) -> bool:
    """Our files end with MindSpore's CRC trailer; verify it ourselves for a precise message."""
    with open(path, "rb") as f:
        data = f.read()
    if len(data) < 17 or data[-17:-10] != _CRC_MARK:
        return False
    if binascii.crc32(data[:-17], 0) != int.from_bytes(data[-10:], byteorder="big"):
        raise CheckpointError(f"cannot read checkpoint '{path}': the CRC check failed, the file is "
                              f"damaged; use another checkpoint")
    return True


# ----------------------------------------------------------------------------- model state
def is_training_state(name: str) -> bool:
    """True for optimizer/loop entries (moments.*, global_step, ...) and EMA copies."""
    return name in TRAINING_STATE_NAMES or name.startswith(TRAINING_STATE_PREFIXES)


def extract_model_state(tensors: Mapping[str, np.ndarray], use_ema: bool = True) -> Dict[str, np.ndarray]:
    """The model tensors of a checkpoint; EMA copies ("ema.<name>") replace raw weights if use_ema."""
    state = {k: v for k, v in tensors.items() if not is_training_state(k)}
    if use_ema:
        for k, v in tensors.items():
            if k.startswith(EMA_PREFIX) and k[len(EMA_PREFIX):] in state:
                state[k[len(EMA_PREFIX):]] = v
    return state


def _to_numpy(source: Mapping[str, Any]) -> Dict[str, np.ndarray]:
    out = {}
    for k, v in source.items():
        if isinstance(v, str):
            continue
        out[k] = v.asnumpy() if hasattr(v, "asnumpy") else np.asarray(v)
    return out


# ----------------------------------------------------------------------------- loading
def load_weights(net: nn.Cell, source: Any, strict: bool = True, drop_classifier: bool = False,
                 use_ema: bool = True) -> Dict[str, List[str]]:
    """Copy checkpoint tensors into `net` (names unchanged); strict: one error lists every problem.

    Returns a report {"loaded", "missing", "unexpected", "mismatched", "skipped"} of names.
    drop_classifier=True skips the checkpoint's classifier.* tensors (fine-tuning: the head keeps its init).
    """
    import mindspore as ms

    label = f"'{source}'" if isinstance(source, (str, os.PathLike)) else "(in-memory state)"
    tensors = read_checkpoint(os.fspath(source))[0] if isinstance(source, (str, os.PathLike)) \
        else modelzoo.translate(_to_numpy(source))[0]  # e.g. ms.load_checkpoint() of a ModelZoo file
    state = extract_model_state(tensors, use_ema)
    params = {p.name: p for p in net.get_parameters()}
    report: Dict[str, List[str]] = {"loaded": [], "missing": [], "unexpected": [], "mismatched": [],
                                    "skipped": []}
    for name, arr in state.items():
        p = params.get(name)
        if p is None:
            report["unexpected"].append(name)
        elif drop_classifier and name.startswith("classifier."):
            report["skipped"].append(name)
        elif tuple(arr.shape) != tuple(p.shape):
            report["mismatched"].append(name)
    handled = set(state) - set(report["unexpected"])
    report["missing"] = [n for n in params if n not in handled]
    if strict and (report["missing"] or report["unexpected"] or report["mismatched"]):
        raise CheckpointError(_mismatch_message(label, net, state, params, report))
    bad = set(report["mismatched"]) | set(report["skipped"])
    for name in state:
        if name in params and name not in bad:
            p = params[name]
            p.set_data(ms.Tensor(np.ascontiguousarray(state[name]), dtype=p.dtype))
            report["loaded"].append(name)
    return report


def load_pretrained(net: nn.Cell, path: str, use_ema: bool = True) -> Dict[str, List[str]]:
    """Strict load of pretrained weights into ``net``: a different class count drops the head (fine-tuning)."""
    tensors = read_checkpoint(path)[0]
    state = extract_model_state(tensors, use_ema)
    w = state.get("classifier.1.weight")
    drop = False
    if w is not None and getattr(net, "num_classes", None) is not None and w.shape[0] != net.num_classes:
        print(f"warning: checkpoint '{path}' has {w.shape[0]} classes, the model {net.num_classes}: "
              f"the classifier is not loaded and keeps its random init (fine-tuning)")
        drop = True
    return load_weights(net, state, strict=True, drop_classifier=drop, use_ema=False)


def _mismatch_message(label: str, net, state: Mapping[str, np.ndarray], params: Mapping[str, Any],
                      report: Mapping[str, List[str]]) -> str:
    lines = [f"checkpoint {label} does not fit the model"]
    lines += _likely_causes(net, state, params)

    def listing(title: str, names: List[str], fmt) -> None:
        if names:
            shown = ", ".join(fmt(n) for n in names[:6])
            more = f" ... and {len(names) - 6} more" if len(names) > 6 else ""
            lines.append(f"{title} ({len(names)}): {shown}{more}")

    listing("shape mismatch", report["mismatched"],
            lambda n: f"{n} checkpoint {tuple(state[n].shape)} vs model {tuple(params[n].shape)}")
    listing("missing from checkpoint", report["missing"], str)
    listing("unexpected in checkpoint", report["unexpected"], str)
    return "; ".join(lines)  # one line: command-line errors are one line each


def _likely_causes(net, state: Mapping[str, np.ndarray], params: Mapping[str, Any]) -> List[str]:
    causes = []
    ck_w = infer_width(state)
    net_w = getattr(net, "width_mult", None)
    if ck_w is not None and net_w is not None and abs(ck_w - net_w) > 1e-6:
        stem = state["features.0.weight"].shape[0]
        causes.append(f"likely cause: checkpoint is width {ck_w} (features.0.weight has {stem} output "
                      f"channels) but the model is width {net_w}; build the matching model "
                      f"(e.g. mobilenet_v2_{int(round(ck_w * 100)):03d}) or use load_model()")
    w = state.get("classifier.1.weight")
    if w is not None and "classifier.1.weight" in params and (ck_w is None or net_w is None
                                                               or abs(ck_w - net_w) <= 1e-6):
        if w.shape[0] != params["classifier.1.weight"].shape[0]:
            causes.append(f"likely cause: checkpoint has {w.shape[0]} classes, model has "
                          f"{params['classifier.1.weight'].shape[0]}: pass drop_classifier=True (fine-tuning) "
                          f"or a matching num_classes")
    if not any(k.startswith("features.") for k in state):
        sample = ", ".join(list(state)[:3])
        causes.append(f"likely cause: this is not a MobileNetV2 checkpoint of this project or MindCV "
                      f"(tensor names look like: {sample})")
    return causes


def infer_width(state: Mapping[str, np.ndarray]) -> Optional[float]:
    """The registry width whose backbone shapes all match `state`, or None."""
    from .models.mobilenetv2 import param_shapes

    if "features.0.weight" not in state:
        return None
    in_ch = int(state["features.0.weight"].shape[1])
    for w in KNOWN_WIDTHS:
        shapes = param_shapes(w, 1, in_ch)
        if all(tuple(state[k].shape) == s for k, s in shapes.items()
               if not k.startswith("classifier.") and k in state) and \
                shapes["features.0.weight"] == tuple(state["features.0.weight"].shape) and \
                "features.20.weight" in state and \
                shapes["features.20.weight"] == tuple(state["features.20.weight"].shape):
            return w
    return None


def infer_model_kwargs(state: Mapping[str, np.ndarray], label: str = "checkpoint") -> Dict[str, Any]:
    """MobileNetV2 kwargs (width_mult, num_classes, in_channels) from a state's tensor shapes."""
    w = infer_width(state)
    if w is None or "classifier.1.weight" not in state:
        stem = state.get("features.0.weight")
        desc = f"features.0.weight {tuple(stem.shape)}" if stem is not None else "no features.0.weight"
        raise CheckpointError(f"{label}: cannot recognise a MobileNetV2 of width {KNOWN_WIDTHS} with a "
                              f"classifier from its tensor shapes ({desc}, {len(state)} model tensors)")
    return {"width_mult": w, "num_classes": int(state["classifier.1.weight"].shape[0]),
            "in_channels": int(state["features.0.weight"].shape[1])}


def model_meta(name: str, model_kwargs: Mapping[str, Any], class_names: Optional[Iterable[str]] = None,
               eval_facts: Optional[Mapping[str, Any]] = None) -> Dict[str, Any]:
    """The model part of a checkpoint meta: model, model_kwargs, class_names, eval (+ format)."""
    from .models.registry import get_spec

    spec = get_spec(name)
    kwargs = {"width_mult": spec.width_mult, "num_classes": 1000, "in_channels": 3,
              "padding": "symmetric", "drop_rate": DEFAULT_DROP_RATE}
    kwargs.update(dict(model_kwargs))
    names = list(class_names) if class_names is not None else None
    if names is not None and len(names) != int(kwargs["num_classes"]):
        raise CheckpointError(f"model_meta: {len(names)} class names for num_classes="
                              f"{kwargs['num_classes']}")
    facts = {"image_size": spec.image_size, "crop_pct": spec.crop_pct,
             "interpolation": spec.interpolation, "mean": list(spec.mean), "std": list(spec.std)}
    for k, v in dict(eval_facts or {}).items():
        key = "image_size" if k == "image_resize" else k
        facts[key] = list(v) if isinstance(v, tuple) else v
    return {"format": FORMAT, "model": spec.name, "model_kwargs": kwargs, "class_names": names,
            "eval": facts}


def load_model(path: str, use_ema: bool = True, **overrides: Any) -> MobileNetV2:
    """Rebuild the network a checkpoint describes (or infer it for MindCV / ModelZoo files), load, eval mode.

    `overrides` replace MobileNetV2 kwargs (e.g. padding, output_stride, drop_rate). The meta is
    attached as `net.checkpoint_meta`.
    """
    from .models.mobilenetv2 import MobileNetV2
    from .models.registry import REGISTRY

    tensors, meta = read_checkpoint(path)
    state = extract_model_state(tensors, use_ema)
    if meta.get("model_kwargs"):
        kwargs = dict(meta["model_kwargs"])
        meta = dict(meta)
    else:
        kwargs = infer_model_kwargs(state, f"checkpoint '{path}'")
        name = next(n for n, s in REGISTRY.items() if s.width_mult == kwargs["width_mult"])
        # A foreign (e.g. MindCV) file: describe what was inferred, with the registry's eval facts.
        meta = {**model_meta(name, kwargs), **meta, "format": "foreign", "inferred": True}
        meta["model_kwargs"]["drop_rate"] = DEFAULT_DROP_RATE
        if "global_step" in tensors:
            meta.setdefault("global_step", int(np.asarray(tensors["global_step"]).reshape(-1)[0]))
    kwargs.update(overrides)
    try:
        net = MobileNetV2(**kwargs)
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"checkpoint '{path}': cannot build its model from {kwargs}: {e}") from None
    try:
        load_weights(net, state, strict=True, use_ema=False)
    except CheckpointError as e:
        raise CheckpointError(str(e).replace("(in-memory state)", f"'{path}'", 1)) from None
    net.set_train(False)
    net.checkpoint_meta = meta
    return net
