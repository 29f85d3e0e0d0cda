"""What a run's checkpoints hold, which ones it keeps, and how a run continues from one.

Files use MindCV's names (``<model>-<epoch>_<steps_per_epoch>.ckpt``, ``<model>_best.ckpt``);
what each holds (epoch, step, metric) is read from the file's own metadata and from
``state.json``, never parsed from a file name. A checkpoint holds every Parameter of the compiled
train step (model, optimizer slots, EMA copies, loss-scale counters, and a partial gradient sum
when saved inside an accumulation cycle), so resuming is exact: the resumed run computes what the
uninterrupted one would have, bit for bit (tests/test_engine.py, tests/test_reliability.py).
"""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Dict, Iterable, List, Mapping, Optional

import numpy as np

from ..errors import ConfigError, require_writable_dir
from ..checkpoint import (EMA_PREFIX, GRAD_ACCUM_PREFIX, OPTIMIZER_SLOT_PREFIXES, CheckpointError,
                          model_meta, read_meta, save_checkpoint)
from ..interop_modelzoo import SOURCE as MODELZOO_SOURCE

log = logging.getLogger("mindcv_mnv2")
STATE_FILE = "state.json"
# Step state rebuilt from the recipe rather than restored: the LR array comes from the schedule.
REBUILT = ("learning_rate",)


# ----------------------------------------------------------------------------- run directory
def prepare_run_dir(path: str, resuming: bool) -> None:
    """Create the run directory; refuse one that cannot be written or that holds another run's checkpoints."""
    require_writable_dir(path, "ckpt_save_dir", ConfigError)
    existing = [f for f in os.listdir(path) if f.endswith(".ckpt")]
    if existing and not resuming:
        raise ConfigError(f"ckpt_save_dir: '{path}' already holds checkpoints of a run ({len(existing)} .ckpt files); "
                          f"continue it with --resume {path}, or pick a new --ckpt_save_dir (nothing was overwritten)")


# ----------------------------------------------------------------------------- run state
def run_tensors(step_params: Mapping[str, Any], lr_now: float, mid_cycle: bool = False) -> Dict[str, Any]:
    """Everything a checkpoint of a run holds: the step's Parameters plus the current LR (informative,
    as in MindCV files); partial gradient sums only when saved inside an accumulation cycle."""
    out = {n: p for n, p in step_params.items()
           if n not in REBUILT and (mid_cycle or not n.startswith(GRAD_ACCUM_PREFIX))}
    out["learning_rate"] = np.array(lr_now, np.float32)
    return out


def run_meta(model: str, model_kwargs: Mapping[str, Any], class_names: List[str], eval_facts: Mapping[str, Any],
             config: Mapping[str, Any], has_ema: bool, train_state: Mapping[str, Any]) -> Dict[str, Any]:
    """The self-description of a run's checkpoint: model, preprocessing, config, loop position."""
    meta = model_meta(model, model_kwargs, class_names, eval_facts)
    meta.update(has_ema=bool(has_ema), config=dict(config), train_state=dict(train_state))
    return meta


def resume_position(path: str, meta: Mapping[str, Any], tensors: Mapping[str, np.ndarray], updates_per_epoch: int,
                    accumulate: int) -> Dict[str, Any]:
    """The loop position to continue from: our files say it; a MindCV file's follows from its global_step."""
    if meta.get("source") == MODELZOO_SOURCE:  # its moments are under ModelZoo's names and were not kept
        raise CheckpointError(f"{path}: a MindSpore ModelZoo checkpoint cannot resume a run here (its optimizer "
                              f"state and loop position are not carried over); initialise from its weights with "
                              f"--ckpt_path {path} without --resume_opt / --resume (a fresh optimizer)")
    ts = meta.get("train_state")
    if ts:
        if ts.get("updates_per_epoch") != updates_per_epoch:
            raise CheckpointError(f"{path}: saved with {ts.get('updates_per_epoch')} updates per epoch, this run "
                                  f"has {updates_per_epoch}; resume with the same data, batch_size and devices")
        return dict(ts)
    if meta or "global_step" not in tensors:  # ours without a loop position, or no optimizer step count
        raise CheckpointError(f"{path}: no training state inside (no global_step); it can initialise weights "
                              f"(--ckpt_path without --resume_opt) but not resume a run")
    # A MindCV training checkpoint: MindCV saves at epoch ends and records no epoch (its train.py
    # parses it from the file name); the optimizer's step count says where the run stood.
    step = int(np.asarray(tensors["global_step"]).reshape(-1)[0])
    log.info("%s is a MindCV checkpoint: continuing after its global_step %d = epoch %d + %d updates of %d",
             path, step, step // updates_per_epoch, step % updates_per_epoch, updates_per_epoch)
    return {"epoch": step // updates_per_epoch, "step_in_epoch": step % updates_per_epoch * accumulate,
            "global_step": step, "best_top1": None, "best_epoch": None}


def restore_run_tensors(path: str, step_params: Mapping[str, Any], model_names: Iterable[str],
                        tensors: Mapping[str, np.ndarray], opt: str) -> None:
    """Copy optimizer slots, loop counters, EMA copies and partial gradient sums into the step's
    Parameters (model weights are loaded by load_weights); a missing optimizer slot is an error."""
    import mindspore as ms

    model_names = set(model_names)
    missing = [n for n in step_params if n not in tensors and n not in REBUILT and n not in model_names]
    slots = [n for n in missing if n.startswith(OPTIMIZER_SLOT_PREFIXES) or n == "global_step"]
    if slots:
        raise CheckpointError(f"{path}: optimizer state for this recipe's optimizer ({opt}) is missing (e.g. "
                              f"{slots[0]}); was it saved with another optimizer? Initialise from it with "
                              f"--ckpt_path instead (a fresh optimizer)")
    for name, p in step_params.items():
        if name in tensors and name not in REBUILT and name not in model_names:
            p.set_data(ms.Tensor(tensors[name]).astype(p.dtype))
    if any(n.startswith(EMA_PREFIX) for n in missing):
        log.warning("%s holds no EMA weights: EMA restarts from the current weights", path)
        for name in model_names:
            if EMA_PREFIX + name in step_params and EMA_PREFIX + name not in tensors:
                step_params[EMA_PREFIX + name].set_data(step_params[name].value().copy())


def _write_json_atomic(path: str, data: Any) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(data, fh, indent=1)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class CheckpointKeeper:
    """Saves epoch / best / interrupt checkpoints of a run and prunes old ones."""

    def __init__(self, run_dir: str, model_name: str, keep_max: int = 10, save_interval: int = 1,
                 policy: Optional[str] = "latest_k", enabled: bool = True) -> None:
        self.run_dir = run_dir
        self.model_name = model_name
        self.keep_max = keep_max
        self.save_interval = save_interval
        self.policy = policy
        self.enabled = enabled
        self.state: Dict[str, Any] = {"checkpoints": [], "best": None, "latest": None}
        state_path = os.path.join(run_dir, STATE_FILE)
        if os.path.isfile(state_path):
            try:
                with open(state_path, encoding="utf-8") as fh:
                    self.state.update(json.load(fh))
            except (OSError, ValueError):
                log.warning("ignoring unreadable %s; checkpoint files are kept", state_path)

    def _record(self, name: str, meta: Mapping[str, Any], kind: str) -> Dict[str, Any]:
        ts = meta.get("train_state", {})
        return {"file": name, "kind": kind, "epoch": ts.get("epoch"), "global_step": ts.get("global_step"),
                "top1": (ts.get("last_metrics") or {}).get("top1")}

    def _save(self, name: str, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
        path = os.path.join(self.run_dir, name)
        save_checkpoint(path, tensors, meta)
        return path

    def _flush(self) -> None:
        _write_json_atomic(os.path.join(self.run_dir, STATE_FILE), self.state)

    def save_epoch(self, epoch: int, steps_per_epoch: int, tensors: Mapping[str, Any], meta: Mapping[str, Any],
                   last_epoch: bool = False) -> Optional[str]:
        """Write ``<model>-<epoch>_<steps>.ckpt`` when the interval (or the final epoch) says so."""
        if not self.enabled or self.policy is None:
            return None
        if epoch % self.save_interval and not last_epoch:
            return None
        name = f"{self.model_name}-{epoch}_{steps_per_epoch}.ckpt"
        path = self._save(name, tensors, meta)
        entries = [c for c in self.state["checkpoints"] if c["file"] != name]
        entries.append(self._record(name, meta, "epoch"))
        self.state["checkpoints"] = self._prune(entries)
        self.state["latest"] = name
        self._flush()
        return path

    def _prune(self, entries: List[Dict[str, Any]]) -> List[Dict[str, Any]]:
        if len(entries) <= self.keep_max:
            return entries
        if self.policy == "top_k":
            ranked = sorted(entries, key=lambda c: (c["top1"] is not None, c["top1"] or 0.0, c["global_step"] or 0))
        else:
            ranked = sorted(entries, key=lambda c: c["global_step"] or 0)
        keep = ranked[-self.keep_max:]
        if self.policy == "top_k" and entries[-1] not in keep:  # the newest stays resumable
            keep = keep[1:] + [entries[-1]]
        for c in entries:
            if c not in keep:
                try:
                    os.remove(os.path.join(self.run_dir, c["file"]))
                except FileNotFoundError:
                    pass
        return sorted(keep, key=lambda c: c["global_step"] or 0)

    def save_best(self, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> Optional[str]:
        """Write ``<model>_best.ckpt`` (called when validation top-1 improves)."""
        if not self.enabled:
            return None
        name = f"{self.model_name}_best.ckpt"
        path = self._save(name, tensors, meta)
        self.state["best"] = self._record(name, meta, "best")
        self._flush()
        return path

    def save_interrupt(self, tensors: Mapping[str, Any], meta: Mapping[str, Any]) -> Optional[str]:
        """Write ``<model>_interrupted.ckpt``, a mid-epoch resumable checkpoint."""
        if not self.enabled:
            return None
        name = f"{self.model_name}_interrupted.ckpt"
        path = self._save(name, tensors, meta)
        self.state["latest"] = name
        self._flush()
        return path

    def latest_path(self) -> Optional[str]:
        """The newest checkpoint of this run that still exists."""
        name = self.state.get("latest")
        if name and os.path.isfile(os.path.join(self.run_dir, name)):
            return os.path.join(self.run_dir, name)
        return None


def find_resume_checkpoint(resume: str) -> str:
    """A checkpoint file to resume from: the file itself, or a run directory's newest checkpoint."""
    if os.path.isfile(resume):
        return resume
    if not os.path.isdir(resume):
        raise CheckpointError(f"resume: '{resume}' is neither a checkpoint file nor a run directory")
    latest = CheckpointKeeper(resume, "").latest_path()
    if latest:
        return latest
    # No usable state.json: the newest readable checkpoint by the step stored inside it.
    best_step, best_path = -1, None
    for path in glob.glob(os.path.join(resume, "*.ckpt")):
        try:
            step = read_meta(path).get("train_state", {}).get("global_step", -1)
        except CheckpointError as exc:
            log.warning("skipping unreadable checkpoint %s: %s", path, exc)
            continue
        if step > best_step:
            best_step, best_path = step, path
    if best_path is None:
        raise CheckpointError(f"resume: no resumable checkpoint in run directory '{resume}'")
    return best_path
