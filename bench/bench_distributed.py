"""Data-parallel overhead: ``mpirun -n 2 python train.py`` vs one process, same recipe, same images per epoch.

    .venv/bin/python bench/bench_distributed.py            # full: CPU demo recipe, 12,800 images, 3 reps
    .venv/bin/python bench/bench_distributed.py --quick    # smoke size (1,024 images, one rep)

Both run the CPU demo recipe (Fashion-MNIST, 0.35 @ 32 px, batch 128 per process) for one epoch
over the same ``num_samples``: one process with batch 128, and two processes (``--distribute True``,
``--bind-to none``) each with batch 128 on its half, so the global batch doubles. Throughput is
the global images/s from rank 0's metrics.jsonl (steady state, after the first step). On this
2-core machine the single process already uses both cores (MindSpore's thread pool), so the
ratio shows what data parallelism costs or gains per core here, including the gradient
all-reduce (MindSpore's CPU collectives over its dynamic cluster); on multi-device hosts each rank
has its own device. Interleaved repetitions; medians and paired ratios.
Result: bench/results/distributed.json.
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (PROJECT_PY, RESULTS, fashion_folder, interleave, median, paired_ratios,  # noqa: E402
                     print_table, write_result)
from bench_train import project_run  # noqa: E402

RECIPE = "configs/mobilenet_v2_0.35_fashion_mnist_cpu.yaml"


def main(argv=None) -> int:
    """Run the comparison; print the table, write bench/results/distributed.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=3)
    args = ap.parse_args(argv)
    fm = fashion_folder(quick=args.quick)
    mpirun = Path(PROJECT_PY).parent / "mpirun"
    if fm is None or not mpirun.exists():
        print("needs data/fashion_mnist (python -m mindcv_mnv2.tools.prepare_fashion_mnist) and .venv/bin/mpirun",
              file=sys.stderr)
        return 1
    n = 256 if args.quick else 12800
    reps = 1 if args.quick else args.reps
    ov = {"device_target": "CPU", "batch_size": 128, "epoch_size": 1, "warmup_epochs": 0, "decay_epochs": 1,
          "val_while_train": False, "log_interval": 1, "num_samples": n}
    env = {"OMPI_ALLOW_RUN_AS_ROOT": "1", "OMPI_ALLOW_RUN_AS_ROOT_CONFIRM": "1", "GLOG_v": "3"}
    scratch = RESULTS / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    contenders = {
        "1 process": project_run(RECIPE, str(fm), {**ov, "distribute": False}, scratch),
        "mpirun -n 2": project_run(RECIPE, str(fm), {**ov, "distribute": True}, scratch,
                                   launcher=[str(mpirun), "-n", "2", "--bind-to", "none", "-x", "GLOG_v"], env=env),
    }
    runs = interleave(contenders, reps)
    summary = {k: {"img_per_s": median(r["img_per_s"] for r in rs),
                   "x_one": median(paired_ratios(runs, k, "1 process")),
                   "first_step_s": median(r.get("first_step_s", float("nan")) for r in rs),
                   "process_s": median(r["process_s"] for r in rs), "exits": [r["exit"] for r in rs],
                   "load": [r["load_before"][0] for r in rs]} for k, rs in runs.items()}
    print_table(["launch", "global img/s (median)", "x 1 process (paired median)", "first step s", "process s",
                 "load (1-min)"],
                [(k, v["img_per_s"], v["x_one"], v["first_step_s"], v["process_s"],
                  " ".join(f"{x:.2f}" for x in v["load"])) for k, v in summary.items()],
                title=f"CPU demo recipe, {n} images, batch 128 per process, {os.cpu_count()} cores")
    path = write_result("distributed", {"images": n, "summary": summary, "runs": runs}, quick=args.quick)
    print(f"wrote {path}", file=sys.stderr)
    return 1 if any(any(v["exits"]) for v in summary.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
