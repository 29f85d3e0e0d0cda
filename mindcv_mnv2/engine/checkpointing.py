"""Which checkpoints a run writes and keeps, and how a run directory is resumed.

Files use MindCV's names (``<model>-<epoch>_<steps_per_epoch>.ckpt``, ``<model>_best.ckpt``);
what each holds (epoch, step, metric) is read from the file's own metadata and from
``state.json``, never parsed from a file name.
"""
from __future__ import annotations

import glob
import json
import logging
import os
from typing import Any, Dict, List, Mapping, Optional

from ..checkpoint import CheckpointError, read_meta, save_checkpoint

log = logging.getLogger("mindcv_mnv2")
STATE_FILE = "state.json"


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
