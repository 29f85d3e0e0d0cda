"""MindCV 0.3.0's training pipeline, assembled from its own factories, timed per step (bench/.venv).

    bench/.venv/bin/python bench/mindcv_train.py -c configs/mobilenet_v2_1.0_ascend.yaml \
        data_dir=/path/to/folder batch_size=32 num_samples=192 num_parallel_workers=2

MindCV's train.py is not in its wheel; this script makes the same calls in the same order
(create_dataset -> create_transforms -> create_loader -> create_model -> create_loss ->
create_scheduler -> create_optimizer -> create_trainer -> Model.train) with the YAML recipe's
values (dataset_sink_mode included: MindCV's recipes say True), for one epoch, without checkpoint or
validation callbacks. It prints one JSON line:
first step (includes graph compilation) and steady images/s over the later steps, defined as
the project's trainer defines them (images of steps 2..N over the time from the end of step 1
to the end of step N).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import yaml


def _value(text: str):
    return yaml.safe_load(text)


def load_recipe(path: str, overrides) -> dict:
    """The YAML recipe with key=value overrides applied (values parsed as YAML scalars/lists)."""
    with open(path, encoding="utf-8") as fh:
        cfg = yaml.safe_load(fh) or {}
    for item in overrides:
        key, _, val = item.partition("=")
        cfg[key] = _value(val)
    return cfg


def build_and_train(cfg: dict) -> dict:
    """Assemble MindCV's pipeline from cfg and train one epoch; timings."""
    import mindspore as ms
    import numpy as np
    from mindspore.train import Callback

    from mindcv.data import create_dataset, create_loader, create_transforms
    from mindcv.loss import create_loss
    from mindcv.models import create_model
    from mindcv.optim import create_optimizer
    from mindcv.scheduler import create_scheduler
    from mindcv.utils import create_trainer, set_seed

    ms.set_device("CPU")
    ms.set_context(mode=cfg.get("mode", 0))
    if cfg.get("mode", 0) == 0:
        ms.set_context(jit_config={"jit_level": cfg.get("jit_level", "O0")})
    set_seed(cfg.get("seed", 42))
    workers = cfg.get("num_parallel_workers", 8)
    dataset = create_dataset(name=cfg.get("dataset", ""), root=cfg["data_dir"], split=cfg.get("train_split", "train"),
                             shuffle=cfg.get("shuffle", True), num_samples=cfg.get("num_samples"),
                             num_parallel_workers=workers, download=False)
    num_classes = cfg.get("num_classes") or dataset.num_classes()
    if cfg.get("dataset", "") == "imagenet" and cfg.get("num_classes") and cfg["num_classes"] != dataset.num_classes():
        num_classes = dataset.num_classes()
    transforms = create_transforms(dataset_name=cfg.get("dataset", ""), is_training=True,
                                   image_resize=cfg.get("image_resize", 224), scale=tuple(cfg.get("scale", (0.08, 1.0))),
                                   ratio=tuple(cfg.get("ratio", (0.75, 1.333))), hflip=cfg.get("hflip", 0.5),
                                   vflip=cfg.get("vflip", 0.0), color_jitter=cfg.get("color_jitter", 0.4),
                                   interpolation=cfg.get("interpolation", "bilinear"),
                                   auto_augment=cfg.get("auto_augment"),
                                   mean=cfg.get("mean", [123.675, 116.28, 103.53]),
                                   std=cfg.get("std", [58.395, 57.12, 57.375]), re_prob=cfg.get("re_prob", 0.0))
    loader = create_loader(dataset=dataset, batch_size=cfg["batch_size"], drop_remainder=cfg.get("drop_remainder", True),
                           is_training=True, mixup=cfg.get("mixup", 0.0), cutmix=cfg.get("cutmix", 0.0),
                           cutmix_prob=cfg.get("cutmix_prob", 1.0), num_classes=num_classes, transform=transforms,
                           num_parallel_workers=workers)
    steps = loader.get_dataset_size()
    from mindcv.models import is_model

    name = cfg["model"]
    if not is_model(name) and is_model(name + "_224"):  # MindCV names 224 px widths < 1 with a suffix
        name += "_224"
    network = create_model(model_name=name, num_classes=num_classes, in_channels=cfg.get("in_channels", 3),
                           pretrained=False)  # MindCV's MobileNetV2 takes no drop_rate
    if cfg.get("drop_rate") == 0:  # a step-by-step comparison needs the same (no) dropout on both sides
        from mindspore import nn

        network.classifier[0] = nn.Identity()
    if cfg.get("init_ckpt"):  # start from a given checkpoint (bench_vs_mindcv_steps.py: one init for both)
        params = ms.load_checkpoint(cfg["init_ckpt"])
        not_loaded, _ = ms.load_param_into_net(network, params, strict_load=True)
        if not_loaded:
            raise SystemExit(f"init_ckpt: {len(not_loaded)} parameters not loaded, e.g. {not_loaded[0]}")
    loss = create_loss(name=cfg.get("loss", "CE"), reduction=cfg.get("reduction", "mean"),
                       label_smoothing=cfg.get("label_smoothing", 0.0))
    lr = create_scheduler(steps, scheduler=cfg.get("scheduler", "cosine_decay"), lr=cfg.get("lr", 0.1),
                          min_lr=cfg.get("min_lr", 0.0), warmup_epochs=int(cfg.get("warmup_epochs", 0)),
                          decay_epochs=max(int(cfg.get("decay_epochs", 1)), 1), num_epochs=cfg.get("epoch_size", 1))
    loss_scale = float(cfg.get("loss_scale", 1.0))
    optimizer = create_optimizer(network.trainable_params(), opt=cfg.get("opt", "momentum"), lr=lr,
                                 weight_decay=float(cfg.get("weight_decay", 0.0)), momentum=cfg.get("momentum", 0.9),
                                 nesterov=cfg.get("use_nesterov", False),
                                 weight_decay_filter=cfg.get("weight_decay_filter", "disable"), loss_scale=loss_scale)
    trainer = create_trainer(network, loss, optimizer, metrics={"acc"}, amp_level=cfg.get("amp_level", "O0"),
                             amp_cast_list=None, loss_scale_type=cfg.get("loss_scale_type", "fixed"),
                             loss_scale=loss_scale, drop_overflow_update=cfg.get("drop_overflow_update", False),
                             ema=cfg.get("ema", False), clip_grad=cfg.get("clip_grad", False))

    class StepTimes(Callback):
        """Wall-clock time at the end of every step, plus the last loss."""

        def __init__(self):
            super().__init__()
            self.ends, self.t0, self.loss, self.losses = [], None, None, []

        def on_train_begin(self, run_context):
            self.t0 = time.perf_counter()

        def on_train_step_end(self, run_context):
            out = run_context.original_args().net_outputs
            out = out[0] if isinstance(out, (tuple, list)) else out
            self.loss = float(out.asnumpy())
            self.losses.append(self.loss)
            self.ends.append(time.perf_counter())

    timer = StepTimes()
    t_call = time.perf_counter()
    trainer.train(cfg.get("epoch_size", 1), loader, callbacks=[timer],
                  dataset_sink_mode=bool(cfg.get("dataset_sink_mode", False)))
    ends = timer.ends
    bs = cfg["batch_size"]
    if cfg.get("save_final"):  # every parameter of the trained network, for a tensor-by-tensor comparison
        np.savez(cfg["save_final"], **{p.name: p.asnumpy() for p in network.get_parameters()})
    steady = bs * (len(ends) - 1) / (ends[-1] - ends[0]) if len(ends) > 1 else float("nan")
    return {"steps": len(ends), "batch_size": bs, "first_step_s": ends[0] - t_call if ends else float("nan"),
            "img_per_s": steady, "train_call_s": time.perf_counter() - t_call, "loss_last": timer.loss,
            "losses": timer.losses, "lr": [float(v) for v in np.asarray(lr).ravel()] if cfg.get("save_final") else None,
            "num_classes": num_classes, "mindcv": __import__("mindcv").__version__, "mindspore": ms.__version__}


def main(argv=None) -> int:
    """Parse -c RECIPE key=value ...; train; print the JSON result line."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-c", "--config", required=True)
    ap.add_argument("overrides", nargs="*", help="key=value (YAML values)")
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    res = build_and_train(load_recipe(args.config, args.overrides))
    res["process_s"] = time.perf_counter() - t0
    print(json.dumps(res), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
