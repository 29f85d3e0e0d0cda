"""Which MindSpore CPU settings make the CPU recipes train faster (candidates for recipe defaults).

    .venv/bin/python bench/bench_settings.py            # full (~8 min): demo model 0.35@32, batch 128
    .venv/bin/python bench/bench_settings.py --quick    # two settings, tiny

Every setting is one child process of bench_train_step's MindSpore worker (the project's
TrainStep on a fixed batch, CE + label smoothing, momentum SGD), so settings never leak into
each other (MindSpore's context is process-wide). Settings tried against the engine's current
default (graph mode, jit_level O0, MindSpore's default thread pools):

- jit_level O1 (graph-kernel fusion) and O2;
- CPU kernel threads (``mindspore.device_context.cpu.op_tuning.threads_num``; MindSpore's
  default is 25 threads whatever the core count), runtime dispatch threads
  (``mindspore.runtime.dispatch_threads_num``), ``mindspore.runtime.set_cpu_affinity(True)``,
  ``OMP_NUM_THREADS``;
- batch size (images/s at 64 / 256 / 512 vs 128);
- PyNative for reference.

Data-side settings (``num_parallel_workers``) are in bench_data.py. Interleaved repetitions,
medians, ratio to the default. Result: bench/results/settings.json.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PROJECT_PY, interleave, median, paired_ratios, print_table, run_child, write_result  # noqa: E402

STEP = str(Path(__file__).resolve().parent / "bench_train_step.py")


def setting(width: float, size: int, batch: int, steps: int, warmup: int, extra=(), env=None):
    """A callable running one bench_train_step MindSpore worker with extra flags / environment."""
    def run():
        cmd = [PROJECT_PY, STEP, "--worker", "ms", "--width", str(width), "--size", str(size), "--batch",
               str(batch), "--steps", str(steps), "--warmup", str(warmup), "--num_classes", "10", *extra]
        r = run_child(cmd, env=env)
        res = dict(r["result"] or {"img_per_s": float("nan")})
        res.update(exit=r["exit"], peak_rss_mib=r["peak_rss_mib"], load_before=r["load_before"],
                   load_after=r["load_after"])
        if r["exit"]:
            res["error"] = r["stdout_tail"]
        return res
    return run


def main(argv=None) -> int:
    """Run the interleaved settings sweep; print the table and write bench/results/settings.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--width", type=float, default=0.35)
    ap.add_argument("--size", type=int, default=32)
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--steps", type=int, default=8)
    args = ap.parse_args(argv)
    if args.quick:
        w, s, b, steps, warm, reps = 0.35, 32, 8, 2, 0, 1
        table = {"default (graph, O0)": []}
        envs = {}
    else:
        w, s, b, steps, warm, reps = args.width, args.size, args.batch, args.steps, 2, args.reps
        table = {
            "default (graph, O0)": [],
            "jit_level O1": ["--jit_level", "O1"],
            "jit_level O2": ["--jit_level", "O2"],
            "op_threads 1": ["--op_threads", "1"],
            "op_threads 2": ["--op_threads", "2"],
            "op_threads 4": ["--op_threads", "4"],
            "dispatch_threads 2": ["--dispatch_threads", "2"],
            "set_cpu_affinity": ["--affinity"],
            "OMP_NUM_THREADS=2": [],
            f"batch {b // 2}": ["--batch", str(b // 2)],
            f"batch {b * 2}": ["--batch", str(b * 2)],
            f"batch {b * 4}": ["--batch", str(b * 4)],
            "PyNative": ["--mode", "pynative"],
        }
        envs = {"OMP_NUM_THREADS=2": {"OMP_NUM_THREADS": "2"}}
    contenders = {}
    for name, extra in table.items():
        # a later --batch overrides the base one (argparse keeps the last value)
        contenders[name] = setting(w, s, b, steps, warm, extra, envs.get(name))
    print(f"== settings sweep, width {w} @ {s}px, batch {b}", file=sys.stderr)
    runs = interleave(contenders, reps)
    summary = {k: {"img_per_s": median(r["img_per_s"] for r in rs),
                   "first_step_s": median(r.get("first_step_s", float("nan")) for r in rs),
                   "peak_rss_mib": median(r["peak_rss_mib"] for r in rs),
                   "load": [r["load_before"][0] for r in rs]} for k, rs in runs.items()}
    for k in summary:
        summary[k]["x_default"] = median(paired_ratios(runs, k, "default (graph, O0)"))
    rows = [(k, v["img_per_s"], v["x_default"], v["first_step_s"], v["peak_rss_mib"],
             " ".join(f"{x:.2f}" for x in v["load"])) for k, v in summary.items()]
    print_table(["setting", "img/s (median)", "x default (paired median)", "first step s", "peak RSS MiB", "load (1-min)"], rows,
                title=f"TrainStep settings, width {w} @ {s}px, batch {b}")
    path = write_result("settings", {"width": w, "size": s, "batch": b, "steps": steps, "reps": reps,
                                     "summary": summary, "runs": runs}, quick=args.quick)
    print(f"wrote {path}", file=sys.stderr)
    failed = [k for k, rs in runs.items() if any(r["exit"] for r in rs)]
    if failed:
        print(f"failed settings: {failed}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
