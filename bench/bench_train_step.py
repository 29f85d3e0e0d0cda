"""Training-step throughput: the project's TrainStep (graph / PyNative) vs PyTorch eager on CPU.

    .venv/bin/python bench/bench_train_step.py            # full: 1.0@224 bs32 and 0.35@96 bs32
    .venv/bin/python bench/bench_train_step.py --quick    # smoke size (0.35@32, bs 8, 2 steps)

Each measurement runs in its own process (MindSpore's context is process-wide): the project's
``TrainStep`` built as ``train.py`` builds it (create_model, create_loss CE + label smoothing 0.1,
momentum SGD with weight decay 4e-5, loss scale 1024) on a fixed random batch, and a PyTorch
MobileNetV2 of the same shapes (bench/torch_mnv2.py; NCHW and channels_last; SGD momentum,
CE + label smoothing 0.1) run in bench/.venv. Contenders alternate (interleaved repetitions);
per process: first step (MindSpore: includes graph compilation), warm-up, then the median of
the timed steps. Ratios are taken per repetition between neighbouring runs (same load), then
their median. Result: bench/results/train_step.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

WIDTH_NAMES = {0.35: "mobilenet_v2_035", 0.5: "mobilenet_v2_050", 0.75: "mobilenet_v2_075",
               1.0: "mobilenet_v2_100", 1.3: "mobilenet_v2_130", 1.4: "mobilenet_v2_140"}


# ----------------------------------------------------------------------------- workers (child processes)
def ms_worker(args: argparse.Namespace) -> dict:
    """Time the project's TrainStep in this process; returns the measurement."""
    import numpy as np

    t_import = time.perf_counter()
    import mindcv_mnv2  # noqa: F401  (first: it sets OMP_WAIT_POLICY before MindSpore loads libgomp)
    import mindspore as ms

    from mindcv_mnv2.engine.context import setup_context
    from mindcv_mnv2.engine.train_step import TrainStep
    from mindcv_mnv2.models import create_model
    from mindcv_mnv2.optim import create_loss, create_optimizer

    setup_context(0 if args.mode == "graph" else 1, "CPU", seed=0)
    if args.mode == "graph" and args.jit_level != "O0":
        ms.set_context(jit_config={"jit_level": args.jit_level})
    if args.graph_kernel:
        ms.set_context(enable_graph_kernel=True)  # deprecated alias of jit O1's fusion; kept to compare
    if args.op_threads:  # CPU kernel thread pool (MindSpore's default: 25 threads, whatever the core count)
        ms.device_context.cpu.op_tuning.threads_num(args.op_threads)
    if args.dispatch_threads:
        ms.runtime.dispatch_threads_num(args.dispatch_threads)
    if args.affinity:
        ms.runtime.set_cpu_affinity(True)
    import_s = time.perf_counter() - t_import
    net = create_model(WIDTH_NAMES[args.width], num_classes=args.num_classes)
    swapped = 0
    if args.aot_depthwise:  # the project's C++ kernel (mindcv_mnv2.ops) in place of nn.Conv2d(group=C)
        from mindcv_mnv2.ops import swap_depthwise

        swapped = swap_depthwise(net)
    if args.aot_batchnorm:  # and its training BatchNorm (+ ReLU6) kernel: both = depthwise_kernel auto on CPU
        from mindcv_mnv2.ops import swap_batchnorm

        swapped += swap_batchnorm(net)
    loss_fn = create_loss("CE", args.num_classes, 0.1)
    lr = np.full(10_000, 0.01, np.float32)
    # fused momentum with the C++ kernels, as engine.builders chooses it for train.py
    opt = create_optimizer(net.trainable_params(), "momentum", lr, momentum=0.9, weight_decay=4e-5,
                           weight_decay_filter="norm_and_bias", fused=bool(args.aot_depthwise))
    step = TrainStep(net, loss_fn, opt, loss_scale=1024.0)
    step.set_train(True)
    rng = np.random.default_rng(0)
    x = ms.Tensor(rng.standard_normal((args.batch, 3, args.size, args.size)).astype(np.float32))
    y = ms.Tensor(rng.integers(0, args.num_classes, args.batch).astype(np.int32))
    names = [p.name for p in step.trainable_params()]
    assert len(names) == len(set(names)), "duplicate parameter names after the depthwise swap"
    return _time_steps(lambda: float(step(x, y).asnumpy()), args,
                       extra={"import_s": import_s, "aot_swapped": swapped})


def torch_worker(args: argparse.Namespace) -> dict:
    """Time a PyTorch eager training step of the same network in this process."""
    import torch
    from torch_mnv2 import MobileNetV2

    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    torch.manual_seed(0)
    net = MobileNetV2(args.width, args.num_classes)
    fmt = torch.channels_last if args.channels_last else torch.contiguous_format
    net = net.to(memory_format=fmt).train()
    decay = [p for n, p in net.named_parameters() if p.ndim > 1]
    rest = [p for n, p in net.named_parameters() if p.ndim <= 1]
    opt = torch.optim.SGD([{"params": decay, "weight_decay": 4e-5}, {"params": rest, "weight_decay": 0.0}],
                          lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=0.1)
    g = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, 3, args.size, args.size, generator=g).contiguous(memory_format=fmt)
    y = torch.randint(0, args.num_classes, (args.batch,), generator=g)

    def one() -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(net(x), y)
        loss.backward()
        opt.step()
        return float(loss)

    return _time_steps(one, args, extra={"torch": torch.__version__, "threads": torch.get_num_threads()})


def _time_steps(step, args: argparse.Namespace, extra: dict) -> dict:
    t0 = time.perf_counter()
    loss0 = step()
    first = time.perf_counter() - t0
    for _ in range(args.warmup):
        step()
    times = []
    for _ in range(args.steps):
        t = time.perf_counter()
        loss = step()
        times.append(time.perf_counter() - t)
    times.sort()
    med = times[len(times) // 2] if len(times) % 2 else 0.5 * (times[len(times) // 2 - 1] + times[len(times) // 2])
    return {"first_step_s": first, "step_s": times, "median_step_s": med, "img_per_s": args.batch / med,
            "loss_first": loss0, "loss_last": loss, **extra}


def worker_main(args: argparse.Namespace) -> int:
    """Child-process entry: one measurement, printed as one JSON line."""
    res = ms_worker(args) if args.worker == "ms" else torch_worker(args)
    print(json.dumps(res), flush=True)
    return 0


# ----------------------------------------------------------------------------- orchestration
def contenders(width: float, size: int, batch: int, steps: int, warmup: int, with_torch: bool,
               modes=("graph", "pynative"), layouts=("nchw", "channels_last")) -> dict:
    """name -> zero-argument callable that runs one measurement in a fresh process."""
    from _common import BENCH_PY, PROJECT_PY, run_child

    me = str(Path(__file__).resolve())
    common = ["--width", str(width), "--size", str(size), "--batch", str(batch), "--steps", str(steps),
              "--warmup", str(warmup)]

    def job(py, extra):
        def run():
            r = run_child([py, me, *extra, *common])
            res = dict(r["result"] or {"img_per_s": float("nan")})
            res.update(exit=r["exit"], peak_rss_mib=r["peak_rss_mib"], wall_s=r["wall_s"],
                       load_before=r["load_before"], load_after=r["load_after"])
            if r["exit"]:
                res["error"] = r["stdout_tail"]
            return res
        return run

    out = {f"mindspore_{m}": job(PROJECT_PY, ["--worker", "ms", "--mode", m]) for m in modes}
    if with_torch:
        for layout in layouts:
            out[f"torch_{layout}"] = job(BENCH_PY, ["--worker", "torch"] + (["--channels_last"] if layout != "nchw"
                                                                              else []))
    return out


def main(argv=None) -> int:
    """Parse arguments; run a worker or the whole interleaved comparison."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke size: 0.35@32, batch 8, 2 steps, 1 repetition")
    ap.add_argument("--reps", type=int, default=2, help="interleaved repetitions per contender")
    ap.add_argument("--worker", choices=("ms", "torch"), help=argparse.SUPPRESS)
    ap.add_argument("--mode", choices=("graph", "pynative"), default="graph")
    ap.add_argument("--jit_level", default="O0")
    ap.add_argument("--graph_kernel", action="store_true")
    ap.add_argument("--op_threads", type=int, default=0, help="CPU kernel threads (0 = MindSpore's default)")
    ap.add_argument("--dispatch_threads", type=int, default=0, help="runtime dispatch threads (0 = default)")
    ap.add_argument("--aot_depthwise", action="store_true", help="swap in mindcv_mnv2.ops's C++ depthwise kernel")
    ap.add_argument("--aot_batchnorm", action="store_true", help="swap in mindcv_mnv2.ops's C++ BatchNorm kernel")
    ap.add_argument("--affinity", action="store_true", help="mindspore.runtime.set_cpu_affinity(True)")
    ap.add_argument("--torch_threads", type=int, default=0)
    ap.add_argument("--channels_last", action="store_true")
    ap.add_argument("--width", type=float, default=1.0)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--num_classes", type=int, default=1000)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    args = ap.parse_args(argv)
    if args.worker:
        return worker_main(args)

    from _common import have_bench_venv, interleave, median, paired_ratios, print_table, write_result

    with_torch = have_bench_venv()
    if not with_torch:
        print("bench/.venv missing (bash bench/setup_venv.sh): PyTorch columns skipped", file=sys.stderr)
    if args.quick:  # PyNative + NCHW only: the smoke test must stay fast (no graph compile wait)
        cases = [(0.35, 32, 8, 2, 0)]
        reps = 1
        modes, layouts = ("pynative",), ("nchw",)
    else:
        cases = [(1.0, 224, 32, 3, 1), (0.35, 96, 32, 5, 1)]
        reps = args.reps
        modes, layouts = ("graph", "pynative"), ("nchw", "channels_last")
    results = []
    for width, size, batch, steps, warmup in cases:
        print(f"== width {width} @ {size}px, batch {batch}", file=sys.stderr)
        runs = interleave(contenders(width, size, batch, steps, warmup, with_torch, modes, layouts), reps)
        summary = {name: {"img_per_s": median(r["img_per_s"] for r in rs),
                          "first_step_s": median(r.get("first_step_s", float("nan")) for r in rs),
                          "peak_rss_mib": median(r["peak_rss_mib"] for r in rs),
                          "load": [r["load_before"][0] for r in rs]} for name, rs in runs.items()}
        base = next(iter(runs))  # mindspore_graph in full runs
        for name in summary:
            summary[name]["x_base"] = median(paired_ratios(runs, name, base))
        rows = [(name, s["img_per_s"], s["x_base"], s["first_step_s"], s["peak_rss_mib"],
                 " ".join(f"{x:.2f}" for x in s["load"])) for name, s in summary.items()]
        print_table(["contender", "img/s (median)", f"x {base} (paired median)", "first step s", "peak RSS MiB",
                     "load (1-min)"],
                    rows, title=f"train step, width {width} @ {size}px, batch {batch}")
        results.append({"width": width, "size": size, "batch": batch, "steps": steps, "reps": reps, "base": base,
                        "summary": summary, "runs": runs})
    path = write_result("train_step", {"cases": results}, quick=args.quick)
    print(f"wrote {path}", file=sys.stderr)
    bad = [r for c in results for rs in c["runs"].values() for r in rs if r.get("exit")]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
