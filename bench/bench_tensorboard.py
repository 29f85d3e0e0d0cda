"""What TensorBoard event files cost: train.py on the CPU demo recipe with ``tensorboard`` on vs off.

    .venv/bin/python bench/bench_tensorboard.py            # full: 4,096 images (32 steps of 128), 5 reps (~4 min)
    .venv/bin/python bench/bench_tensorboard.py --quick    # smoke size (256 images, batch 32, one rep)

Both contenders run ``train.py -c configs/mobilenet_v2_0.35_fashion_mnist_cpu.yaml`` (0.35 @ 32 px,
graph mode, batch 128) for one epoch of the same images, validation off, with ``log_interval 1``:
the worst case, a step record and its TensorBoard scalars after every step (the recipe's own
interval, 50, writes 50x less often). Steady-state img/s (the epoch record, first step excluded)
and the whole process's wall time are compared; contenders alternate (off, on, off, on, ...) and
ratios are taken per repetition between neighbours. The "on" runs must have written an event file
with a point for every step. Because a shared 2-core machine's load moves end-to-end numbers by
more than the writer can cost, the writer is also timed alone, in this process (wall and CPU time per
step record, the latter including tensorboardX's background thread), and put against the time
of one training step. Result: bench/results/tensorboard.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (CACHE, FASHION, PROJECT_PY, RESULTS, ROOT, interleave, median, paired_ratios,  # noqa: E402
                     print_table, run_child, write_result)

RECIPE = "configs/mobilenet_v2_0.35_fashion_mnist_cpu.yaml"


def data_folder(images: int) -> Path:
    """data/fashion_mnist when prepared, else the first ``images`` Fashion-MNIST images, prepared once."""
    if (FASHION / "train").is_dir():
        return FASHION
    sub = CACHE / f"fashion_mnist_{images}"
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from mindcv_mnv2.tools.prepare_fashion_mnist import prepare_fashion_mnist

    prepare_fashion_mnist(str(sub), limit_train=images, limit_val=100, workers=1)
    return sub


def train_run(data_dir: Path, overrides: dict, scratch: Path):
    """A callable: one train.py run in a fresh run dir; its numbers from metrics.jsonl, and its event files."""
    def run():
        run_dir = Path(tempfile.mkdtemp(prefix="tb_", dir=scratch))
        shutil.rmtree(run_dir)
        args = [PROJECT_PY, "train.py", "-c", RECIPE, "--data_dir", str(data_dir), "--ckpt_save_dir", str(run_dir)]
        for k, v in overrides.items():
            args += [f"--{k}", str(v)]
        r = run_child(args, log=scratch / "last_tensorboard.log", env={"MNV2_NO_BARS": "1"})
        res = {"exit": r["exit"], "process_s": r["wall_s"], "load_before": r["load_before"],
               "load_after": r["load_after"], "img_per_s": float("nan")}
        metrics = run_dir / "metrics.jsonl"
        if r["exit"] == 0 and metrics.exists():
            recs = [json.loads(ln) for ln in metrics.read_text().splitlines() if ln.strip()]
            epoch = [x for x in recs if x.get("type") == "epoch"][-1]
            res.update(img_per_s=epoch["img_per_s"], epoch_s=epoch["epoch_time"],
                       steps=sum(x.get("type") == "step" for x in recs))
            tb = run_dir / "tensorboard"
            res["event_files"] = len(list(tb.iterdir())) if tb.is_dir() else 0
            res["event_bytes"] = sum(f.stat().st_size for f in tb.iterdir()) if tb.is_dir() else 0
            if tb.is_dir():
                from tensorboard.backend.event_processing.event_accumulator import SCALARS, EventAccumulator

                acc = EventAccumulator(str(tb), size_guidance={SCALARS: 0})
                acc.Reload()
                res["loss_points"] = len(acc.Scalars("train/loss"))
        else:
            res["error"] = (scratch / "last_tensorboard.log").read_text()[-2000:]
        shutil.rmtree(run_dir, ignore_errors=True)
        return res
    return run


def writer_cost(records: int, scratch: Path, gap_s: float = 0.002) -> dict:
    """The writer alone, in this process: ``records`` step records (4 scalars each), ``gap_s`` apart, then closed.

    "waits" is the time the training loop spends in Curves.write; CPU time (time.process_time, every
    thread of the process; the gaps are sleeps) also counts tensorboardX's background thread, which
    serialises and writes the events while the loop goes on, and shares the cores with training.
    """
    import time

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    from mindcv_mnv2.engine.curves import Curves

    logdir = Path(tempfile.mkdtemp(prefix="tb_writer_", dir=scratch))
    curves = Curves(str(logdir), loss_scale=lambda: 1024.0)  # loss-scale tag on: the most scalars per record
    curves.write({"type": "step", "global_step": 0, "loss": 2.3, "lr": 0.1, "img_per_s": 1.0})  # opens the file
    waited, cpu0 = 0.0, time.process_time()
    for step in range(1, records + 1):
        t = time.perf_counter()
        curves.write({"type": "step", "global_step": step, "loss": 2.3 / step, "lr": 0.1, "img_per_s": 640.0})
        waited += time.perf_counter() - t
        time.sleep(gap_s)  # training runs between two records
    t = time.perf_counter()
    curves.close()
    close_s, cpu = time.perf_counter() - t, time.process_time() - cpu0
    size = sum(f.stat().st_size for f in logdir.iterdir())
    shutil.rmtree(logdir, ignore_errors=True)
    return {"records": records, "gap_s": gap_s, "write_us_per_record": 1e6 * waited / records,
            "close_ms": 1e3 * close_s, "cpu_us_per_record": 1e6 * cpu / records, "bytes_per_record": size / records}


def main(argv=None) -> int:
    """Run the comparison; print the table, write bench/results/tensorboard.json."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--reps", type=int, default=5)
    args = ap.parse_args(argv)
    n, batch = (256, 32) if args.quick else (4096, 128)
    reps = 1 if args.quick else args.reps
    try:
        fm = data_folder(max(n, 1024))
    except (OSError, ValueError) as exc:
        print(f"needs Fashion-MNIST (apt-get install dataset-fashion-mnist): {exc}", file=sys.stderr)
        return 1
    ov = {"device_target": "CPU", "distribute": False, "epoch_size": 1, "warmup_epochs": 0, "decay_epochs": 1,
          "val_while_train": False, "log_interval": 1, "num_samples": n, "batch_size": batch}
    scratch = RESULTS / "tmp"
    scratch.mkdir(parents=True, exist_ok=True)
    contenders = {"tensorboard off": train_run(fm, {**ov, "tensorboard": False}, scratch),
                  "tensorboard on": train_run(fm, {**ov, "tensorboard": True}, scratch)}
    runs = interleave(contenders, reps)
    steps = n // batch
    writer = writer_cost(200 if args.quick else 2000, scratch)
    summary = {k: {"img_per_s": median(r["img_per_s"] for r in rs),
                   "x_off": median(paired_ratios(runs, k, "tensorboard off")),
                   "process_s": median(r["process_s"] for r in rs),
                   "process_x_off": median(paired_ratios(runs, k, "tensorboard off", key="process_s")),
                   "event_files": [r.get("event_files") for r in rs], "loss_points": [r.get("loss_points") for r in rs],
                   "exits": [r["exit"] for r in rs], "load": [r["load_before"][0] for r in rs]}
               for k, rs in runs.items()}
    print_table(["contender", "img/s (median)", "img/s x off (paired median)", "process s (median)",
                 "process s x off (paired median)", "load (1-min)"],
                [(k, v["img_per_s"], v["x_off"], v["process_s"], v["process_x_off"],
                  " ".join(f"{x:.2f}" for x in v["load"])) for k, v in summary.items()],
                title=f"CPU demo recipe, {n} images = {steps} steps of {batch}, log_interval 1, {reps} reps, "
                      f"{os.cpu_count()} cores")
    step_s = batch / summary["tensorboard off"]["img_per_s"]
    writer["cpu_fraction_of_step"] = writer["cpu_us_per_record"] * 1e-6 / step_s
    print_table(["records written", "loop waits (us/record)", "close (ms)", "CPU, all threads (us/record)",
                 "bytes/record", "CPU as a share of one training step"],
                [(writer["records"], writer["write_us_per_record"], writer["close_ms"],
                  writer["cpu_us_per_record"], writer["bytes_per_record"],
                  f"{100 * writer['cpu_fraction_of_step']:.3f}% of {1000 * step_s:.0f} ms")],
                title="the event-file writer alone (engine.curves.Curves, 4 scalars per record)")
    on = runs["tensorboard on"]
    complete = all(r.get("event_files") == 1 and r.get("loss_points") == steps for r in on)
    silent = all(r.get("event_files") == 0 for r in runs["tensorboard off"])
    if not (complete and silent):
        print(f"event files wrong: on {[(r.get('event_files'), r.get('loss_points')) for r in on]}, off "
              f"{[r.get('event_files') for r in runs['tensorboard off']]}", file=sys.stderr)
    path = write_result("tensorboard", {"images": n, "batch_size": batch, "steps": steps, "summary": summary,
                                        "writer": writer, "runs": runs}, quick=args.quick)
    print(f"wrote {path}", file=sys.stderr)
    return 1 if any(any(v["exits"]) for v in summary.values()) or not (complete and silent) else 0


if __name__ == "__main__":
    sys.exit(main())
