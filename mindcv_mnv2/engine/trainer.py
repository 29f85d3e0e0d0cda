"""The training loop: epochs of compiled steps, validation, checkpoints, resume, NaN stop.

train.py -> train(cfg) -> Trainer.fit() -> Trainer._train_epoch() -> TrainStep.
"""
from __future__ import annotations

import contextlib
import math
import os
import time
from typing import Any, Dict, Optional

import numpy as np

from ..checkpoint import load_weights, read_checkpoint
from ..config import Config, ConfigError
from ..distributed import DistInfo, init_distributed
from ..errors import Interrupted, TrainingDiverged  # noqa: F401  (raised here; re-exported)
from ..ops import cpu_isa, kernel_in_use
from . import builders
from .checkpointing import (CheckpointKeeper, find_resume_checkpoint, prepare_run_dir, restore_run_tensors,
                            resume_position, run_meta, run_tensors)
from .context import amp_level_for, setup_context
from . import finetune
from .curves import TENSORBOARD_DIR, Curves, tensorboard_available
from .evaluator import EvalNet, describe, evaluate, run_eval
from .train_step import AccumulateStep, ApplyAccumulated
from .progress import MetricsWriter, format_eta, progress_bar, setup_logging
from .signals import StopSignals


def train(cfg: Config, explicit_keys: Optional[frozenset] = None) -> Dict[str, Any]:
    """Run a whole training job described by ``cfg``; returns the final summary.

    ``explicit_keys`` are the keys the recipe or command line set (None: all of them); the others
    may be filled from a checkpoint the run starts from (see builders.model_kwargs).
    """
    return Trainer(cfg, explicit_keys).fit()


class Trainer:
    """Owns everything a run builds; ``fit()`` runs it."""

    def __init__(self, cfg: Config, explicit_keys: Optional[frozenset] = None) -> None:
        self.cfg = cfg
        self.device = setup_context(cfg.mode, cfg.device_target, cfg.seed, cfg.cpu_isa)
        self.dist: DistInfo = init_distributed(cfg.distribute, self.device)
        self.run_dir = cfg.ckpt_save_dir
        resume_path = self._resume_source()
        init_path = None if resume_path else self._init_source()
        if self.dist.is_main:
            prepare_run_dir(self.run_dir, resuming=bool(resume_path))
        self.log = setup_logging(self.run_dir, self.dist.rank, self.dist.world)
        self.metrics = MetricsWriter(os.path.join(self.run_dir, "metrics.jsonl") if self.dist.is_main else None)
        if self.device == "CPU":
            self.log.info(cpu_isa.describe())
        if cfg.dataset_sink_mode:
            # MindSpore has no device queue on CPU; on GPU/Ascend this engine also feeds each step
            # from the host (one compiled step per batch), which keeps NaN checks and progress exact.
            self.log.info("dataset_sink_mode: steps are fed from the host (%s)",
                          "no data sink on CPU" if self.device == "CPU" else "data sink not used by this engine")
        self.amp_level = amp_level_for(self.device, cfg.amp_level)

        self.train_loader = builders.build_train_loader(cfg, self.dist)
        self.class_names = list(self.train_loader.class_names)
        self.num_classes = len(self.class_names)
        self.val_loader = (builders.build_val_loader(cfg, self.dist, self.class_names)
                           if cfg.val_while_train else None)
        self.accum = cfg.gradient_accumulation_steps
        self.steps_per_epoch = self.train_loader.steps_per_epoch
        self.updates_per_epoch = max(self.steps_per_epoch // self.accum, 1)
        if self.accum > 1 and self.steps_per_epoch % self.accum:
            self.log.warning("gradient_accumulation_steps %d does not divide the %d steps of an epoch: the last %d "
                             "batches of each epoch are not used", self.accum, self.steps_per_epoch,
                             self.steps_per_epoch % self.accum)
            self.steps_per_epoch = self.updates_per_epoch * self.accum

        # The checkpoint the run starts from is read once: its architecture facts, then its tensors.
        tensors, meta = read_checkpoint(resume_path or init_path) if (resume_path or init_path) else ({}, {})
        self.model_kwargs = builders.model_kwargs(cfg, self.num_classes, meta.get("model_kwargs"), explicit_keys,
                                                  resume_path or init_path or "")
        self.net = builders.build_model(cfg, self.model_kwargs, self.device)
        if init_path:
            self._init_weights(init_path, tensors)
        elif resume_path:  # a file that cannot resume is refused before anything loads; then the
            # weights, once and before anything else: cached features (below) are computed from them
            position = resume_position(resume_path, meta, tensors, self.updates_per_epoch, self.accum)
            load_weights(self.net, tensors, strict=True, use_ema=False)
        self.n_frozen = builders.frozen_layers(cfg, self.net)
        frozen = finetune.freeze(self.net, self.n_frozen)
        self.val_features = None
        trained = self._feature_path() if self.n_frozen else self.net
        if self.amp_level != "O0":
            import mindspore as ms

            ms.amp.auto_mixed_precision(self.net, self.amp_level)
        self.lr = builders.build_lr(cfg, self.updates_per_epoch)
        self.optimizer = builders.build_optimizer(cfg, self.net, self.lr)
        self.loss_fn = builders.build_loss(cfg, self.num_classes)
        self.step = builders.build_train_step(cfg, trained, self.loss_fn, self.optimizer, self.dist, frozen)
        self.step.set_train(True)
        finetune.set_frozen_eval(self.net, self.n_frozen)
        self.micro_step = AccumulateStep(self.step) if self.accum > 1 else None
        self.apply_step = ApplyAccumulated(self.step) if self.accum > 1 else None
        self.keeper = CheckpointKeeper(self.run_dir, cfg.model, cfg.keep_checkpoint_max, cfg.ckpt_save_interval,
                                       cfg.ckpt_save_policy, enabled=self.dist.is_main)
        self.start_epoch, self.skip_steps = 0, 0
        self._host_step: Optional[int] = None  # optimizer updates, counted here (see _global_step)
        self.best: Dict[str, Any] = {"top1": None, "epoch": None}
        if resume_path:
            self._restore(resume_path, tensors, position)
        del tensors
        self.eval_net: Optional[EvalNet] = None
        self.signals = StopSignals()
        self.curves = self._open_curves(resumed=bool(resume_path))
        if self.dist.is_main:
            self._save_config()

    # ---- setup helpers ------------------------------------------------------------------
    def _resume_source(self) -> Optional[str]:
        cfg = self.cfg
        if cfg.resume:
            return find_resume_checkpoint(cfg.resume)
        if cfg.resume_opt:
            if not cfg.ckpt_path:
                raise ConfigError("resume_opt: True needs ckpt_path (the checkpoint to resume), or use --resume RUN_DIR")
            return find_resume_checkpoint(cfg.ckpt_path)
        return None

    def _init_source(self) -> Optional[str]:
        cfg = self.cfg
        if cfg.pretrained and not cfg.ckpt_path:
            raise ConfigError("pretrained: True needs ckpt_path pointing at a local checkpoint "
                              "(mindcv_mnv2 never downloads weights)")
        return cfg.ckpt_path or None

    def _init_weights(self, path: str, tensors: Dict[str, np.ndarray]) -> None:
        from ..checkpoint import is_training_state

        head = tensors.get("classifier.1.weight")
        drop = head is not None and (head.shape[0] != self.num_classes or self.cfg.filter_head)
        if drop:
            why = "filter_head" if head.shape[0] == self.num_classes else f"{head.shape[0]} classes, this run " \
                                                                            f"{self.num_classes}"
            self.log.warning("ckpt_path %s: classifier not loaded (%s): it starts from its random init "
                             "(fine-tuning)", path, why)
        state = [k for k in tensors if is_training_state(k) and not k.startswith("ema.")]
        if state:  # MindCV bug #697: the old head's optimizer slots broke fine-tuning there
            self.log.info("ckpt_path %s: its optimizer state is not used (%d tensors, e.g. %s): a run started "
                          "from a checkpoint has a fresh optimizer; --resume continues one", path, len(state),
                          sorted(state)[0])
        load_weights(self.net, tensors, strict=True, drop_classifier=drop, use_ema=True)
        self.log.info("initialised weights from %s", path)

    def _feature_path(self):
        """The cell the step trains: the whole network, or the head on cached backbone features."""
        cfg = self.cfg
        cached, why = builders.feature_cache_plan(cfg, self.n_frozen, len(self.net.features))
        self.log.info("freeze_layer %s: %d of %d entries of features frozen; %s", cfg.freeze_layer, self.n_frozen,
                      len(self.net.features), why)
        if not cached:
            return self.net
        extract = finetune.PooledFeatures(self.net)
        weights = finetune.weights_signature(self.net)
        feats = {}
        for name, loader, training in (("train", self.train_loader, True), ("val", self.val_loader, False)):
            if loader is None:
                continue
            batches, desc = builders.feature_batches(cfg, loader, training)
            path = os.path.join(self.run_dir, "features",
                                f"{name}_{finetune.cache_key(weights, loader.files, desc)}.npz")
            feats[name] = finetune.compute_or_load(path if self.dist.is_main else None, extract, batches, name)
        self.train_loader = finetune.FeatureLoader(feats["train"], self.train_loader, cfg.batch_size,
                                                   cfg.drop_remainder)
        if "val" in feats:
            self.val_features = feats["val"]
        return finetune.head_net(self.net)
    def _open_curves(self, resumed: bool) -> Curves:
        """TensorBoard scalars on rank 0 (engine.curves); a resumed run continues at its global step."""
        if not (self.dist.is_main and self.cfg.tensorboard):
            return Curves(None)
        if not tensorboard_available():
            self.log.warning("tensorboard: tensorboardX is not installed (pip install -r requirements.txt), so no "
                             "event files are written; metrics.jsonl has every number (tensorboard: False hides this)")
            return Curves(None)
        scale = None
        if self.step.dynamic:
            # The Parameter is looked up once: reading it through the cell attribute after each step made
            # MindSpore recompile the step of a second trainer in one process (measured: 12 s once).
            param = self.step.loss_scale
            scale = lambda: float(param.value().asnumpy())  # noqa: E731
        return Curves(os.path.join(self.run_dir, TENSORBOARD_DIR), self._global_step() if resumed else None, scale)

    def _record(self, record: Dict[str, Any]) -> None:
        """One record for tools: a line of metrics.jsonl and its TensorBoard scalars."""
        self.metrics.write(record)
        self.curves.write(record)

    def _save_config(self) -> None:
        path = os.path.join(self.run_dir, "config.yaml")
        tmp = path + ".tmp"
        with open(tmp, "w", encoding="utf-8") as fh:
            fh.write(self.cfg.to_yaml())
        os.replace(tmp, path)

    # ---- checkpoint contents (what they hold: engine.checkpointing) ----------------------------
    def _tensors(self, mid_cycle: bool = False) -> Dict[str, Any]:
        return run_tensors(self._run_params(), self._current_lr(), mid_cycle)

    def _meta(self, epoch: int, step_in_epoch: int = 0, last_metrics: Optional[Dict[str, Any]] = None
              ) -> Dict[str, Any]:
        cfg = self.cfg
        state = {"epoch": epoch, "step_in_epoch": step_in_epoch, "global_step": self._global_step(),
                 "steps_per_epoch": self.steps_per_epoch, "updates_per_epoch": self.updates_per_epoch,
                 "world": self.dist.world, "best_top1": self.best["top1"], "best_epoch": self.best["epoch"],
                 "last_metrics": last_metrics or {}}
        return run_meta(cfg.model, self.model_kwargs, self.class_names, builders.eval_facts(cfg), cfg.to_dict(),
                        cfg.ema, state)

    def _global_step(self) -> int:
        # Reading the optimizer's counter every step waits for the device and cost ~10% of the CPU
        # demo's throughput: it is read once and then counted here, except where an overflowing
        # step may skip its update (dynamic loss scale, drop_overflow_update) and only the device knows.
        if self._host_step is None or self.step.check_overflow:
            self._host_step = int(np.asarray(self.optimizer.global_step.asnumpy()).reshape(-1)[0])
        return self._host_step

    def _current_lr(self) -> float:
        return float(self.lr[min(self._global_step(), len(self.lr) - 1)])

    def _restore(self, path: str, tensors: Dict[str, np.ndarray], ts: Dict[str, Any]) -> None:
        """Optimizer slots, counters and EMA from the file (its weights are loaded), then the loop position."""
        restore_run_tensors(path, self.step.parameters_dict(), [p.name for p in self.net.get_parameters()], tensors,
                            self.cfg.opt)
        self.start_epoch = int(ts["epoch"])
        self.skip_steps = int(ts.get("step_in_epoch", 0))
        self.best = {"top1": ts.get("best_top1"), "epoch": ts.get("best_epoch")}
        self.log.info("resumed from %s: epoch %d, step %d of it, global step %d, lr %.6g", path, self.start_epoch,
                      self.skip_steps, self._global_step(), self._current_lr())

    def _write_skipped(self) -> None:
        skipped = list(getattr(self.train_loader, "skipped", []))
        if self.val_loader is not None:
            skipped += getattr(self.val_loader, "skipped", [])
        if skipped and self.dist.is_main:
            with open(os.path.join(self.run_dir, "skipped_files.txt"), "w", encoding="utf-8") as fh:
                fh.writelines(f"{path}\t{why}\n" for path, why in skipped)
            self.log.info("%d files in %s are not usable images and are skipped (listed in %s)", len(skipped),
                          self.cfg.data_dir, os.path.join(self.run_dir, "skipped_files.txt"))

    # ---- the loop --------------------------------------------------------------------------
    def fit(self) -> Dict[str, Any]:
        """Train from start_epoch to epoch_size, validating and checkpointing as configured."""
        cfg = self.cfg
        self.log.info("training %s (%d classes) on %s, %s mode: %d images/epoch on %d device(s), batch %d x %d = %d, "
                      "%d steps/epoch, %d epochs, depthwise kernel %s; run dir %s", cfg.model, self.num_classes, self.device,
                      "graph" if cfg.mode == 0 else "PyNative", self.train_loader.num_images_total, self.dist.world,
                      cfg.batch_size, self.dist.world, cfg.batch_size * self.dist.world, self.steps_per_epoch,
                      cfg.epoch_size, kernel_in_use(self.net), os.path.abspath(self.run_dir))
        if self.curves.logdir:
            self.log.info("TensorBoard: tensorboard --logdir %s", os.path.abspath(self.curves.logdir))
        self._write_skipped()
        self.signals.install()
        summary: Dict[str, Any] = {}
        try:
            for epoch in range(self.start_epoch, cfg.epoch_size):
                train_stats = self._train_epoch(epoch)
                val = self._maybe_validate(epoch)
                summary = self._end_epoch(epoch, train_stats, val)
        finally:  # also on Ctrl-C, SIGTERM, NaN or an error: complete event files
            self.signals.restore()
            self.curves.close()
        summary["run_dir"] = self.run_dir
        summary["best_checkpoint"] = (os.path.join(self.run_dir, f"{cfg.model}_best.ckpt")
                                      if self.best["top1"] is not None else None)
        summary["last_checkpoint"] = self.keeper.latest_path()
        return summary

    def _epoch_batches(self, epoch: int):
        import mindspore.dataset as ds

        # Order and augmentation of epoch e depend only on (seed, e), so a resumed run sees the same data.
        ds.config.set_seed(self.cfg.seed + epoch)
        self.train_loader.set_epoch(epoch)
        return self.train_loader.dataset.create_tuple_iterator(num_epochs=1)

    def _train_epoch(self, epoch: int) -> Dict[str, float]:
        cfg, spe = self.cfg, self.steps_per_epoch
        it = self._epoch_batches(epoch)
        first = self.skip_steps
        for _ in range(first):  # mid-epoch resume: the same batches, not trained again
            next(it)
        self.skip_steps = 0
        loss_sum, n_loss = 0.0, 0
        images_per_step = cfg.batch_size * self.dist.world
        t0 = time.perf_counter()
        t_first = None
        with progress_bar(spe - first, f"epoch {epoch + 1}/{cfg.epoch_size}", self.dist.is_main) as bar:
            for i in range(first, spe):
                images, labels = self._next_batch(it, epoch, i)
                lr_used = self._current_lr()  # the update this batch belongs to reads lr[global_step]
                micro = self.accum > 1 and (i + 1) % self.accum != 0
                if self.accum > 1:
                    loss = self.micro_step(images, labels)
                    if not micro:
                        loss = self.apply_step(loss)
                else:
                    loss = self.step(images, labels)
                if not micro and self._host_step is not None:
                    self._host_step += 1
                loss_v = float(loss.asnumpy())
                if not math.isfinite(loss_v):
                    self._diverged(epoch, i, loss_v)
                loss_sum, n_loss = loss_sum + loss_v, n_loss + 1
                if t_first is None:
                    t_first = time.perf_counter() - t0  # includes graph compilation
                    t0 = time.perf_counter()
                    self.signals.install()  # back on top of the handlers MindSpore installed meanwhile
                done = i + 1 - first
                speed = images_per_step * (done - 1) / max(time.perf_counter() - t0, 1e-9) if done > 1 else 0.0
                bar.update(1)
                bar.set_postfix(loss=f"{loss_sum / n_loss:.4f}", lr=f"{lr_used:.5f}", ips=f"{speed:.0f}")
                if (i + 1) % cfg.log_interval == 0 or i + 1 == spe:
                    eta = (spe - i - 1) * (time.perf_counter() - t0) / max(done - 1, 1)
                    if not bar.visible:  # people read the epoch's running mean; tools get both below
                        self.log.info("epoch %d/%d step %d/%d loss %.4f (mean) lr %.6f %.1f img/s eta %s", epoch + 1,
                                      cfg.epoch_size, i + 1, spe, loss_sum / n_loss, lr_used, speed, format_eta(eta))
                    # loss: this batch's own loss; loss_avg: mean over the epoch so far; lr: the rate this
                    # batch's update used; global_step: optimizer updates done after it
                    self._record({"type": "step", "epoch": epoch + 1, "step": i + 1,
                                  "global_step": self._global_step(), "loss": loss_v,
                                  "loss_avg": loss_sum / n_loss, "lr": lr_used, "img_per_s": speed})
                if self.signals.received is not None:
                    self._interrupt(epoch, i + 1)
        elapsed = time.perf_counter() - t0
        steady = images_per_step * max(spe - first - 1, 1) / max(elapsed, 1e-9)
        return {"loss": loss_sum / max(n_loss, 1), "img_per_s": steady, "first_step_s": t_first or 0.0,
                "time": elapsed + (t_first or 0.0), "lr": lr_used if spe > first else self._current_lr()}

    def _run_params(self) -> Dict[str, Any]:
        """Every Parameter of the run: the whole network's and the step's (which may train the head only)."""
        return {**{p.name: p for p in self.net.get_parameters()}, **self.step.parameters_dict()}

    def _maybe_validate(self, epoch: int) -> Optional[Dict[str, Any]]:
        cfg = self.cfg
        if self.val_loader is None or ((epoch + 1) % cfg.val_interval and epoch + 1 != cfg.epoch_size):
            return None
        if self.eval_net is None:
            net = builders.build_model(self.cfg, self.model_kwargs, self.device)
            self.eval_net = (_HeadEval(net) if self.val_features is not None
                             else EvalNet(net, amp_level_for(self.device, cfg.val_amp_level)))
        self.eval_net.load_from(self._run_params(), prefix="ema." if cfg.ema else "")
        if self.val_features is not None:  # the head on the cached features, this rank's share, exactly
            idx = self.val_loader.epoch_indices(0)
            bs = cfg.batch_size
            labels = np.asarray(self.val_loader.labels)
            batches = ((self.val_features[idx[s:s + bs]], labels[idx[s:s + bs]]) for s in range(0, len(idx), bs))
            return run_eval(self.eval_net, batches, len(idx), bs, self.dist, desc="validate")
        return evaluate(self.eval_net, self.val_loader, self.dist, desc="validate")

    def _end_epoch(self, epoch: int, train_stats: Dict[str, float], val: Optional[Dict[str, Any]]
                   ) -> Dict[str, Any]:
        cfg = self.cfg
        done = epoch + 1
        improved = val is not None and (self.best["top1"] is None or val["top1"] > self.best["top1"])
        if improved:
            self.best = {"top1": val["top1"], "epoch": done}
        record = {"type": "epoch", "epoch": done, "global_step": self._global_step(), "loss": train_stats["loss"],
                  "lr": train_stats["lr"], "img_per_s": train_stats["img_per_s"], "epoch_time": train_stats["time"]}
        if val is not None:
            record.update({"top1": val["top1"], "top5": val["top5"], "val_loss": val["loss"],
                           "val_images": val["num_images"]})
        skipped = len(getattr(self.train_loader, "skipped", []))
        if skipped:
            record["skipped_files"] = skipped
        tensors = self._tensors()
        meta = self._meta(done, 0, val)
        with self._saving():
            path = self.keeper.save_epoch(done, self.steps_per_epoch, tensors, meta,
                                          last_epoch=done == cfg.epoch_size)
            if improved:
                self.keeper.save_best(tensors, meta)
        self._record(record)
        line = (f"epoch {done}/{cfg.epoch_size}: loss {train_stats['loss']:.4f}  lr {train_stats['lr']:.6f}  "
                f"{train_stats['img_per_s']:.1f} img/s  {train_stats['time']:.1f}s")
        if val is not None:
            line += f"  | {describe(val, 'val')}  | best {self.best['top1']:.2f}% (epoch {self.best['epoch']})"
        if path:
            line += f"  | saved {os.path.basename(path)}"
        if skipped:
            line += f"  | {skipped} non-image/broken files skipped (see skipped_files.txt)"
        self.log.info(line)
        return {**record, "best_top1": self.best["top1"], "best_epoch": self.best["epoch"]}

    # ---- failure paths --------------------------------------------------------------------
    @contextlib.contextmanager
    def _saving(self):
        """Turn a failed save into one error that says what survived."""
        from ..checkpoint import CheckpointError

        try:
            yield
        except CheckpointError as exc:
            last = self.keeper.latest_path()
            kept = f"earlier checkpoints are intact (latest: {last})" if last else "no earlier checkpoint exists"
            raise CheckpointError(f"{exc}; {kept}. Free space or fix ckpt_save_dir, then --resume "
                                  f"{self.run_dir}") from None

    def _next_batch(self, it, epoch: int, step: int):
        """The next training batch; an undecodable image becomes a DataError after saving progress."""
        try:
            return next(it)
        except RuntimeError as exc:
            from ..data.loader import pipeline_error

            err = pipeline_error(exc, self.cfg.data_dir, self.cfg.train_split)
            if err is None:
                raise
            with self._saving():
                path = self.keeper.save_interrupt(self._tensors(mid_cycle=step % self.accum != 0), self._meta(epoch, step))
            raise type(err)(f"{err}. Progress was saved to {path}") from None

    def _diverged(self, epoch: int, step: int, loss: float) -> None:
        last = self.keeper.latest_path()
        where = f"last good checkpoint: {last}" if last else "no checkpoint was written before it"
        self.metrics.write({"type": "diverged", "epoch": epoch + 1, "step": step + 1,
                            "global_step": self._global_step(), "loss": loss})
        raise TrainingDiverged(f"loss became {loss} at epoch {epoch + 1}, step {step + 1} (global step "
                               f"{self._global_step()}); training stopped, {where}. Lower lr or enable "
                               f"clip_grad, then resume from that checkpoint")

    def _interrupt(self, epoch: int, steps_done: int) -> None:
        path = None
        if steps_done == self.steps_per_epoch:
            meta = self._meta(epoch + 1, 0)
        else:
            meta = self._meta(epoch, steps_done)
        with self._saving():
            # inside an accumulation cycle the partial gradient sum is part of the state
            path = self.keeper.save_interrupt(self._tensors(mid_cycle=steps_done % self.accum != 0), meta)
        raise Interrupted(f"{self.signals.name} received at epoch {epoch + 1}, step {steps_done}: saved resumable checkpoint "
                          f"{path}; continue with --resume {self.run_dir}")


class _HeadEval:
    """The classifier alone, in eval mode, on cached pooled features (EvalNet's interface)."""

    def __init__(self, net) -> None:
        self.head = finetune.head_net(net)
        self.head.set_train(False)
        self._params = {p.name: p for p in self.head.get_parameters()}

    def load_from(self, params: Dict[str, Any], prefix: str = "") -> None:
        """The classifier's (EMA) tensors from the run's Parameters."""
        for name, p in self._params.items():
            src = params.get(prefix + name, params[name])
            p.set_data(src.value() if hasattr(src, "value") else src)

    def __call__(self, features: np.ndarray) -> np.ndarray:
        import mindspore as ms

        return self.head(ms.Tensor(features)).asnumpy()

