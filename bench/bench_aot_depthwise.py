"""The project's C++ depthwise 3x3 kernel (mindcv_mnv2.ops, MindSpore AOT custom ops) vs nn.Conv2d(group=C).

    .venv/bin/python bench/bench_aot_depthwise.py            # exactness + speed on MobileNetV2 shapes
    .venv/bin/python bench/bench_aot_depthwise.py --quick    # one small shape

mindcv_mnv2/ops/depthwise.cc (forward, input gradient, weight gradient; NCHW float32, padding 1,
stride 1 or 2; planes split over the kernels' thread team, ops/team.h) is compiled once per machine by
``mindcv_mnv2.ops.build_library`` (g++ -O3 -march=native). It is what ``depthwise_kernel: auto`` uses on CPU.

Checks: forward output, input gradient and weight gradient against ``nn.Conv2d(C, C, 3,
stride, pad_mode="pad", padding=1, group=C)`` with the same weight (max abs difference,
relative to the reference's scale). Speed: forward+backward (grad of sum(y * r) w.r.t. input
and weight) per call, graph mode jit O0, both implementations interleaved in blocks; medians,
ratio. Then the project's TrainStep (bench_train_step worker) with every depthwise conv swapped
vs stock, interleaved child processes: the demo model (0.35@32, batch 128) and 1.0@224 batch 32
and 0.35@96 (plus PyTorch channels_last), with the depthwise kernel alone and with the training
BatchNorm kernel too (what ``depthwise_kernel: auto`` runs). ``--with_active`` adds ``OMP_WAIT_POLICY=ACTIVE``,
which shows why the package sets libgomp's wait policy to PASSIVE (MindSpore's spinning OpenMP threads
starve its own thread pool).
Result: bench/results/aot_depthwise.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import mindcv_mnv2  # noqa: E402,F401  (sets OMP_WAIT_POLICY before MindSpore loads libgomp)
from _common import time_blocks  # noqa: E402


def make_cells():
    """(factory of the AOT layer, factory of the nn.Conv2d reference), both from (channels, stride, weight)."""
    import mindspore as ms
    from mindspore import nn

    from mindcv_mnv2.ops.depthwise import aot_depthwise

    def aot(channels: int, stride: int, weight: np.ndarray):
        return aot_depthwise(ms.Parameter(ms.Tensor(weight), name="weight"), stride)

    def reference(channels: int, stride: int, weight: np.ndarray):
        conv = nn.Conv2d(channels, channels, 3, stride, pad_mode="pad", padding=1, group=channels, has_bias=False)
        conv.weight.set_data(ms.Tensor(weight))
        return conv

    return aot, reference


class GradStep:
    """A compiled cell returning sum(net(x) * r) and its gradients w.r.t. x and the weight (as TrainStep does)."""

    @staticmethod
    def build(net, r):
        import mindspore as ms
        from mindspore import ParameterTuple, nn, ops

        class Wrapped(nn.Cell):
            def __init__(self, inner, upstream):
                super().__init__()
                self.inner = inner
                self.upstream = ms.Tensor(upstream)

            def construct(self, x):
                return (self.inner(x) * self.upstream).sum()

        class Step(nn.Cell):
            def __init__(self, wrapped):
                super().__init__()
                self.wrapped = wrapped
                self.weights = ParameterTuple(wrapped.trainable_params())

            def construct(self, x):
                return ops.value_and_grad(self.wrapped, 0, self.weights)(x)

        return Step(Wrapped(net, r))


def check_and_time(shape, stride: int, blocks: int, per_block: int, AotDepthwise, reference) -> dict:
    """Exactness of forward/gradients and the median fwd+bwd time of both implementations."""
    import mindspore as ms

    n, c, h, w = shape
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(np.float32)
    weight = (rng.standard_normal((c, 1, 3, 3)) * 0.3).astype(np.float32)
    oh, ow = (h + 2 - 3) // stride + 1, (w + 2 - 3) // stride + 1
    r = rng.standard_normal((n, c, oh, ow)).astype(np.float32)
    aot, ref = AotDepthwise(c, stride, weight), reference(c, stride, weight)
    xt = ms.Tensor(x)
    out = {"shape": list(shape), "stride": stride}
    y_a, y_r = aot(xt).asnumpy(), ref(xt).asnumpy()
    step_a, step_r = GradStep.build(aot, r), GradStep.build(ref, r)
    (_, (gx_a, (gw_a,))), (_, (gx_r, (gw_r,))) = step_a(xt), step_r(xt)
    for key, a, b in (("forward", y_a, y_r), ("grad_input", gx_a.asnumpy(), gx_r.asnumpy()),
                      ("grad_weight", gw_a.asnumpy(), gw_r.asnumpy())):
        out[f"{key}_max_abs_diff"] = float(np.abs(a - b).max())
        out[f"{key}_scale"] = float(np.abs(b).max())
    runners = {"aot": lambda: step_a(xt)[0].asnumpy(), "nn.Conv2d": lambda: step_r(xt)[0].asnumpy()}
    times = time_blocks(runners, blocks, per_block)
    for k, ts in times.items():
        out[f"{k}_ms"] = 1e3 * float(np.median(ts))
    out["speedup"] = out["nn.Conv2d_ms"] / out["aot_ms"]
    return out


def train_step_comparison(quick: bool, reps: int, with_active: bool = False) -> list:
    """The project's TrainStep with stock vs AOT depthwise convs (and PyTorch), interleaved child processes."""
    from _common import BENCH_PY, PROJECT_PY, have_bench_venv, interleave, median, paired_ratios, run_child

    step = str(Path(__file__).resolve().parent / "bench_train_step.py")
    cases = [(0.35, 32, 8, 10, 2, 0)] if quick else [(0.35, 32, 128, 10, 8, 2), (0.35, 96, 32, 1000, 8, 2),
                                                      (1.0, 224, 32, 1000, 4, 1)]
    out = []
    for width, size, batch, classes, steps, warm in cases:
        base = ["--width", str(width), "--size", str(size), "--batch", str(batch), "--num_classes", str(classes),
                "--steps", str(steps), "--warmup", str(warm)]

        def job(py, extra, env=None):
            def run():
                r = run_child([py, step, *extra, *base], env=env)
                res = dict(r["result"] or {"img_per_s": float("nan")})
                res.update(exit=r["exit"], load_before=r["load_before"], load_after=r["load_after"],
                           peak_rss_mib=r["peak_rss_mib"])
                return res
            return run

        both = ["--worker", "ms", "--aot_depthwise", "--aot_batchnorm"]  # what depthwise_kernel auto runs on CPU
        contenders = {"stock nn.Conv2d": job(PROJECT_PY, ["--worker", "ms"])}
        contenders["AOT depthwise"] = job(PROJECT_PY, ["--worker", "ms", "--aot_depthwise"])
        contenders["AOT depthwise + BatchNorm"] = job(PROJECT_PY, both)
        if with_active and not quick:
            contenders["AOT + OMP_WAIT_POLICY=ACTIVE"] = job(PROJECT_PY, both, {"OMP_WAIT_POLICY": "ACTIVE"})
        if have_bench_venv() and not quick:
            contenders["torch channels_last"] = job(BENCH_PY, ["--worker", "torch", "--channels_last"])
        print(f"== TrainStep {width}@{size} batch {batch}", file=sys.stderr)
        runs = interleave(contenders, reps)
        summary = {k: {"img_per_s": median(r["img_per_s"] for r in rs),
                       "x_stock": median(paired_ratios(runs, k, "stock nn.Conv2d")),
                       "first_step_s": median(r.get("first_step_s", float("nan")) for r in rs),
                       "load": [r["load_before"][0] for r in rs], "exits": [r["exit"] for r in rs]}
                   for k, rs in runs.items()}
        out.append({"width": width, "size": size, "batch": batch, "summary": summary, "runs": runs})
    return out


def main(argv=None) -> int:
    """Build, check, time; print the table and write bench/results/aot_depthwise.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--blocks", type=int, default=3)
    ap.add_argument("--per_block", type=int, default=3)
    ap.add_argument("--reps", type=int, default=2, help="repetitions of the TrainStep comparison")
    ap.add_argument("--kernels_only", action="store_true", help="skip the TrainStep comparison")
    ap.add_argument("--with_active", action="store_true", help="also time OMP_WAIT_POLICY=ACTIVE (why PASSIVE)")
    args = ap.parse_args(argv)
    import mindspore as ms

    from _common import loadavg, print_table, write_result

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O0"})
    from mindcv_mnv2.ops import build_library

    lib = build_library()
    AotDepthwise, reference = make_cells()
    if args.quick:
        cases, blocks, per = [((4, 8, 10, 10), 1), ((4, 8, 9, 9), 2)], 1, 2
    else:
        cases = [((256, 96, 16, 16), 1),     # the CPU demo's bottleneck (0.35 @ 32 px, batch 256)
                 ((128, 48, 16, 16), 2),     # 0.35 @ 32 px, a stride-2 block, batch 128
                 ((32, 96, 112, 112), 2),    # 1.0 @ 224 px, block 2, batch 32
                 ((32, 144, 56, 56), 1)]     # 1.0 @ 224 px, block 3, batch 32
        blocks, per = args.blocks, args.per_block
    rows, recs = [], []
    for shape, stride in cases:
        load0 = loadavg()
        rec = check_and_time(shape, stride, blocks, per, AotDepthwise, reference)
        rec["load"] = [load0[0], loadavg()[0]]
        recs.append(rec)
        rows.append((f"{tuple(shape)} s{stride}", rec["nn.Conv2d_ms"], rec["aot_ms"], rec["speedup"],
                     max(rec[f"{k}_max_abs_diff"] / max(rec[f"{k}_scale"], 1e-12)
                         for k in ("forward", "grad_input", "grad_weight")),
                     f"{rec['load'][0]:.2f}-{rec['load'][1]:.2f}"))
        print(f"  {shape} s{stride}: conv {rec['nn.Conv2d_ms']:.1f} ms, aot {rec['aot_ms']:.1f} ms",
              file=sys.stderr, flush=True)
    print_table(["input (N,C,H,W) stride", "nn.Conv2d fwd+bwd ms", "AOT fwd+bwd ms", "speedup",
                 "max rel. diff (fwd, dx, dw)", "load (1-min)"], rows, title="depthwise 3x3, median per call")
    steps = [] if args.kernels_only else train_step_comparison(args.quick, 1 if args.quick else args.reps,
                                                                   args.with_active)
    for c in steps:
        print_table(["TrainStep", "img/s (median)", "x stock (paired median)", "first step s", "load (1-min)"],
                    [(k, v["img_per_s"], v["x_stock"], v["first_step_s"], " ".join(f"{x:.2f}" for x in v["load"]))
                     for k, v in c["summary"].items()],
                    title=f"TrainStep {c['width']}@{c['size']} batch {c['batch']} with the C++ kernels")
    path = write_result("aot_depthwise", {"cases": recs, "blocks": blocks, "per_block": per,
                                          "library": str(lib.name), "train_step": steps}, quick=args.quick)
    print(f"wrote {path}", file=sys.stderr)
    bad = [r for r in recs if max(r[f"{k}_max_abs_diff"] / max(r[f"{k}_scale"], 1e-12)
                                  for k in ("forward", "grad_input", "grad_weight")) > 1e-4]
    bad += [k for c in steps for k, v in c["summary"].items() if any(v["exits"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
