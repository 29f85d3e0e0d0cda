"""Prototype: depthwise 3x3 convolution as a MindSpore AOT custom operator (C++), vs nn.Conv2d(group=C).

    .venv/bin/python bench/bench_aot_depthwise.py            # exactness + speed on MobileNetV2 shapes
    .venv/bin/python bench/bench_aot_depthwise.py --quick    # one small shape

Not wired into the model. bench/aot_depthwise/depthwise.cc (forward, input gradient, weight
gradient; NCHW float32, padding 1, stride 1 or 2; OpenMP over planes) is compiled at run time
with ``g++ -O3 -march=native -fopenmp -shared -fPIC`` into bench/aot_depthwise/build/ (needs g++,
nothing else). ``AotDepthwise`` is a Cell whose ``bprop`` calls the two gradient kernels, so it
trains in graph and PyNative mode.

The libgomp wait policy is set to PASSIVE before MindSpore loads libgomp: with the default
(spinning) policy the kernels' idle OpenMP threads compete with MindSpore's thread pool and the
swapped network trains ~3x SLOWER on the 2 cores; ``stock + OMP_WAIT_POLICY=PASSIVE`` shows the
setting alone does not speed up the stock network.

Checks: forward output, input gradient and weight gradient against ``nn.Conv2d(C, C, 3,
stride, pad_mode="pad", padding=1, group=C)`` with the same weight (max abs difference,
relative to the reference's scale). Speed: forward+backward (grad of sum(y * r) w.r.t. input
and weight) per call, graph mode jit O0, both implementations interleaved in blocks; medians,
ratio. Then the project's TrainStep (bench_train_step worker) with every depthwise conv swapped
(``swap_depthwise``) vs stock, interleaved child processes: the demo model (0.35@32, batch 128)
and 1.0@224 batch 32 (plus PyTorch channels_last there). Result: bench/results/aot_depthwise.json.
"""
from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

# Must precede the MindSpore import (which loads libgomp): the kernels' idle OpenMP threads sleep
# instead of spinning on the cores MindSpore's own thread pool needs.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

SRC = Path(__file__).resolve().parent / "aot_depthwise" / "depthwise.cc"
BUILD = SRC.parent / "build"


def build_library() -> Path:
    """Compile depthwise.cc once per source version; the .so path."""
    cxx = shutil.which(os.environ.get("CXX", "g++"))
    if cxx is None:
        raise RuntimeError("g++ not found: install it (apt-get install g++) to build the AOT kernel")
    stamp = int(SRC.stat().st_mtime)
    lib = BUILD / f"libdepthwise_{stamp}.so"
    if not lib.exists():
        BUILD.mkdir(parents=True, exist_ok=True)
        subprocess.run([cxx, "-O3", "-march=native", "-fopenmp", "-shared", "-fPIC", str(SRC), "-o", str(lib)],
                       check=True)
    return lib


def make_cells(lib: Path):
    """(AotDepthwise cell class, reference factory) bound to the compiled library."""
    import mindspore as ms
    from mindspore import nn, ops

    def out_hw(n: int, s: int) -> int:
        return (n + 2 - 3) // s + 1

    class AotDepthwiseOp(nn.Cell):
        """y = depthwise3x3(x, w) with the C++ forward and a bprop calling the C++ gradients."""

        def __init__(self, stride: int):
            super().__init__()
            s = int(stride)
            self.fwd = ops.Custom(f"{lib}:DwForwardS{s}",
                                  out_shape=lambda xs, ws: [xs[0], xs[1], out_hw(xs[2], s), out_hw(xs[3], s)],
                                  out_dtype=lambda xt, wt: xt, func_type="aot")
            self.grad_x = ops.Custom(f"{lib}:DwGradInputS{s}", out_shape=lambda xs, ws, gs: xs,
                                     out_dtype=lambda xt, wt, gt: xt, func_type="aot")
            self.grad_w = ops.Custom(f"{lib}:DwGradWeightS{s}", out_shape=lambda xs, gs: [xs[1], 1, 3, 3],
                                     out_dtype=lambda xt, gt: xt, func_type="aot")

        def construct(self, x, w):
            return self.fwd(x, w)

        def bprop(self, x, w, out, dout):
            return self.grad_x(x, w, dout), self.grad_w(x, dout)

    class AotDepthwise(nn.Cell):
        """A depthwise 3x3 conv layer (weight C x 1 x 3 x 3) backed by the AOT kernels."""

        def __init__(self, channels: int, stride: int, weight):
            super().__init__()
            self.op = AotDepthwiseOp(stride)
            # an existing Parameter (swap_depthwise) keeps its name and optimizer identity
            self.weight = weight if isinstance(weight, ms.Parameter) else ms.Parameter(ms.Tensor(weight),
                                                                                        name="weight")

        def construct(self, x):
            return self.op(x, self.weight)

    def reference(channels: int, stride: int, weight: np.ndarray):
        conv = nn.Conv2d(channels, channels, 3, stride, pad_mode="pad", padding=1, group=channels, has_bias=False)
        conv.weight.set_data(ms.Tensor(weight))
        return conv

    return AotDepthwise, reference


def swap_depthwise(net) -> int:
    """Replace every 3x3 depthwise nn.Conv2d (pad 1, no dilation) in ``net`` by AotDepthwise; the count.

    The new cell shares the conv's weight Parameter, so names and values are unchanged.
    """
    from mindspore import nn

    AotDepthwise, _ = make_cells(build_library())
    swapped = 0
    for _, parent in list(net.cells_and_names()):
        for key, child in list(parent.name_cells().items()):
            if not (type(child) is nn.Conv2d and child.group == child.in_channels == child.out_channels
                    and tuple(child.kernel_size) == (3, 3) and tuple(child.dilation) == (1, 1)
                    and child.pad_mode == "pad" and tuple(child.stride)[0] in (1, 2)):
                continue
            pad = child.padding if isinstance(child.padding, int) else tuple(child.padding)
            if pad not in (1, (1, 1, 1, 1)):
                continue
            new = AotDepthwise(child.in_channels, int(tuple(child.stride)[0]), child.weight)
            if isinstance(parent, nn.SequentialCell):
                parent[int(key)] = new
            else:
                setattr(parent, key, new)
            swapped += 1
    return swapped


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
    for fn in runners.values():
        fn()
    times = {k: [] for k in runners}
    for _ in range(blocks):
        for k, fn in runners.items():
            for _ in range(per_block):
                t = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t)
    for k, ts in times.items():
        out[f"{k}_ms"] = 1e3 * float(np.median(ts))
    out["speedup"] = out["nn.Conv2d_ms"] / out["aot_ms"]
    return out


def train_step_comparison(quick: bool, reps: int) -> list:
    """The project's TrainStep with stock vs AOT depthwise convs (and PyTorch), interleaved child processes."""
    from _common import BENCH_PY, PROJECT_PY, have_bench_venv, interleave, median, paired_ratios, run_child

    step = str(Path(__file__).resolve().parent / "bench_train_step.py")
    cases = [(0.35, 32, 8, 10, 2, 0)] if quick else [(0.35, 32, 128, 10, 8, 2), (1.0, 224, 32, 1000, 4, 1)]
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

        contenders = {"stock nn.Conv2d": job(PROJECT_PY, ["--worker", "ms"])}
        if not quick:
            contenders["stock + OMP_WAIT_POLICY=PASSIVE"] = job(PROJECT_PY, ["--worker", "ms"],
                                                                {"OMP_WAIT_POLICY": "PASSIVE"})
        contenders["AOT depthwise"] = job(PROJECT_PY, ["--worker", "ms", "--aot_depthwise"])
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
    args = ap.parse_args(argv)
    import mindspore as ms

    from _common import loadavg, print_table, write_result

    ms.set_device("CPU")
    ms.set_context(mode=ms.GRAPH_MODE, jit_config={"jit_level": "O0"})
    lib = build_library()
    AotDepthwise, reference = make_cells(lib)
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
    steps = [] if args.kernels_only else train_step_comparison(args.quick, 1 if args.quick else args.reps)
    for c in steps:
        print_table(["TrainStep", "img/s (median)", "x stock (paired median)", "first step s", "load (1-min)"],
                    [(k, v["img_per_s"], v["x_stock"], v["first_step_s"], " ".join(f"{x:.2f}" for x in v["load"]))
                     for k, v in c["summary"].items()],
                    title=f"TrainStep {c['width']}@{c['size']} batch {c['batch']} with the AOT depthwise kernels")
    path = write_result("aot_depthwise", {"cases": recs, "blocks": blocks, "per_block": per,
                                          "library": str(lib.name), "train_step": steps}, quick=args.quick)
    print(f"wrote {path}", file=sys.stderr)
    bad = [r for r in recs if max(r[f"{k}_max_abs_diff"] / max(r[f"{k}_scale"], 1e-12)
                                  for k in ("forward", "grad_input", "grad_weight")) > 1e-4]
    bad += [k for c in steps for k, v in c["summary"].items() if any(v["exits"])]
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
