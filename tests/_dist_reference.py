"""Run by tests/test_distributed.py in a fresh process: what 2 ranks compute, done by one process.

    python tests/_dist_reference.py RECIPE WORLD STEPS OUT.npz

One process, gradient accumulation over the WORLD ranks' batches (each rank's shard of each step,
BatchNorm over each shard separately, as each rank normalises its own), from the same seeded start;
OUT.npz holds the final parameters of the training step and, under ``start.``, the initial weights.
A fresh process, like the ranks: MindSpore's CPU kernels then run under the same instruction-set cap
(``cpu_isa: auto`` applies only before the process's first kernel), and this 10-step run carries a
rounding difference to O(1) weight differences (measured: 0.50 against 0.0055 for one stem weight,
oneDNN's AVX-512 code against its AVX2 code).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import numpy as np  # noqa: E402


def main() -> int:
    recipe, world, steps, out = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    import mindspore.dataset as ds

    from mindcv_mnv2.config import load_config
    from mindcv_mnv2.distributed import DistInfo
    from mindcv_mnv2.engine import builders
    from mindcv_mnv2.engine.context import setup_context
    from mindcv_mnv2.engine.train_step import AccumulateStep, ApplyAccumulated
    from mindcv_mnv2.models.registry import model_defaults

    cfg = load_config(recipe, overrides={"gradient_accumulation_steps": world, "distribute": False},
                      model_defaults=model_defaults)
    setup_context(cfg.mode, "CPU", cfg.seed, cfg.cpu_isa)
    loaders = [builders.build_train_loader(cfg, DistInfo(rank=r, world=world)) for r in range(world)]
    net = builders.build_model(cfg, builders.model_kwargs(cfg, len(loaders[0].class_names)), "CPU")
    start = {"start." + p.name: p.asnumpy().copy() for p in net.get_parameters()}  # asnumpy() may share memory
    lr = builders.build_lr(cfg, loaders[0].steps_per_epoch)
    optimizer = builders.build_optimizer(cfg, net, lr)
    step = builders.build_train_step(cfg, net, builders.build_loss(cfg, 10), optimizer, DistInfo())
    step.set_train(True)
    micro, apply = AccumulateStep(step), ApplyAccumulated(step)
    ds.config.set_seed(cfg.seed)  # epoch 0, as the trainer does
    iters = []
    for loader in loaders:
        loader.set_epoch(0)
        iters.append(loader.dataset.create_tuple_iterator(num_epochs=1))
    for _ in range(steps):
        for it in iters:
            loss = micro(*next(it))  # every rank's batch: gradients are only added up
        apply(loss)  # then the mean of all is applied
    np.savez(out, **start, **{n: p.asnumpy() for n, p in step.parameters_dict().items()})
    return 0


if __name__ == "__main__":
    sys.exit(main())
