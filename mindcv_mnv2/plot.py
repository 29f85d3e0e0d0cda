"""Training curves of one or more runs in one PNG, read from their metrics.jsonl.

    python -m mindcv_mnv2.plot RUN_DIR [RUN_DIR ...] [-o curves.png]

The PNG is 1500 x 450 pixels with three panels: training loss against the global step (every
logged step's own loss as faint dots, and their exponential moving average, weight 0.9, as a
line), the learning rate against the global step, and validation top-1 against the epoch.
Several runs are overlaid, one colour each, labelled with their directory names. Only
metrics.jsonl is read, so runs made before TensorBoard support plot too; their step records held
the epoch's running mean as "loss" (no "loss_avg"), which is drawn as a line and labelled so.
"""
from __future__ import annotations

import argparse
import bisect
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Dict, List, Optional, Sequence

from .errors import PlotError, require_writable_dir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

WIDTH_PX, HEIGHT_PX, DPI = 1500, 450, 100
EMA_WEIGHT = 0.9
METRICS = "metrics.jsonl"
_FIX = "pass a run directory of train.py (its ckpt_save_dir, which holds metrics.jsonl)"


@dataclass
class RunCurves:
    """The plotted series of one run (resumed runs: each global step once, the latest record wins)."""

    name: str
    steps: List[int] = field(default_factory=list)  # global step of every logged step
    loss: List[float] = field(default_factory=list)
    per_step: List[bool] = field(default_factory=list)  # False: "loss" is the epoch's running mean (older files)
    lr: List[float] = field(default_factory=list)
    val_epochs: List[int] = field(default_factory=list)
    val_top1: List[float] = field(default_factory=list)


def _number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_run(run_dir: str, name: Optional[str] = None) -> RunCurves:
    """Read ``run_dir/metrics.jsonl`` into plottable series; PlotError if there is nothing to plot."""
    if not os.path.isdir(run_dir):
        raise PlotError(f"'{run_dir}' is not a folder; {_FIX}")
    path = os.path.join(run_dir, METRICS)
    if not os.path.isfile(path):
        raise PlotError(f"'{run_dir}' has no {METRICS}; {_FIX}")
    run = RunCurves(name or _basename(run_dir))
    val: Dict[int, float] = {}
    records = 0
    with open(path, encoding="utf-8", errors="replace") as fh:
        for line in fh:
            try:
                rec = json.loads(line)
            except ValueError:  # e.g. a last line cut short by a crash
                continue
            if not isinstance(rec, dict):
                continue
            if rec.get("type") == "step" and _number(rec.get("global_step")) and _number(rec.get("loss")):
                records += 1
                step = int(rec["global_step"])
                if run.steps and step <= run.steps[-1]:
                    # A resumed run went back to its checkpoint: what was logged after it is superseded
                    # (also one point per step where accumulation logs two batches at one update count).
                    cut = bisect.bisect_left(run.steps, step)
                    for series in (run.steps, run.loss, run.per_step, run.lr):
                        del series[cut:]
                run.steps.append(step)
                run.loss.append(float(rec["loss"]))
                run.per_step.append("loss_avg" in rec)
                run.lr.append(float(rec["lr"]) if _number(rec.get("lr")) else math.nan)
            elif rec.get("type") == "epoch" and _number(rec.get("epoch")):
                records += 1
                if _number(rec.get("top1")):
                    val[int(rec["epoch"])] = float(rec["top1"])  # a repeated epoch: the later record counts
    if not records:
        raise PlotError(f"'{path}' holds no step or epoch records yet; plot it once the run has logged its "
                        f"first log_interval steps")
    run.val_epochs = sorted(val)
    run.val_top1 = [val[e] for e in run.val_epochs]
    return run


def _basename(path: str) -> str:
    return os.path.basename(os.path.normpath(os.path.abspath(path)))


def ema(values: Sequence[float], weight: float = EMA_WEIGHT) -> List[float]:
    """Exponential moving average, debiased at the start (TensorBoard's smoothing)."""
    out, acc = [], 0.0
    for n, v in enumerate(values, 1):
        acc = acc * weight + (1.0 - weight) * v
        out.append(acc / (1.0 - weight ** n))
    return out


def _names(run_dirs: Sequence[str]) -> List[str]:
    """Directory names; parent/name where two runs share a name."""
    base = [_basename(d) for d in run_dirs]
    if len(set(base)) == len(base):
        return base
    return [os.path.join(_basename(os.path.dirname(os.path.abspath(d))), b) for d, b in zip(run_dirs, base)]


def _output_path(output: str) -> str:
    """The PNG path, its folder created; PlotError when it cannot be written there."""
    if os.path.isdir(output):
        raise PlotError(f"-o: '{output}' is a folder; give a file name such as {os.path.join(output, 'curves.png')}")
    if not output.lower().endswith(".png"):
        raise PlotError(f"-o: '{output}' does not end in .png; the plot is written as a PNG file (e.g. curves.png)")
    require_writable_dir(os.path.dirname(os.path.abspath(output)), "-o", PlotError)
    return output


def plot_runs(run_dirs: Sequence[str], output: str) -> str:
    """Draw the runs' curves into one PNG of WIDTH_PX x HEIGHT_PX pixels at ``output``; returns its path."""
    if not run_dirs:
        raise PlotError(f"no run directory given; {_FIX}")
    runs = [read_run(d, n) for d, n in zip(run_dirs, _names(run_dirs))]
    output = _output_path(output)
    fig = draw(runs)
    try:
        fig.savefig(output, dpi=DPI, format="png")
    except OSError as exc:
        raise PlotError(f"-o: cannot write '{output}' ({exc.strerror}); choose a writable place") from None
    return output


def draw(runs: Sequence[RunCurves]) -> Figure:
    """The three-panel matplotlib Figure of these runs (Agg canvas, no pyplot state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    fig = Figure(figsize=(WIDTH_PX / DPI, HEIGHT_PX / DPI), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)  # the Agg (PNG) canvas: no display needed, and no pyplot state
    ax_loss, ax_lr, ax_val = fig.subplots(1, 3)
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        own = [(s, v) for s, v, p in zip(run.steps, run.loss, run.per_step) if p]
        if own:
            xs, ys = zip(*own)
            ax_loss.plot(xs, ys, ".", color=color, alpha=0.3, markersize=4, label=f"{run.name}: logged steps")
            ax_loss.plot(xs, ema(ys), "-", color=color, linewidth=1.8, label=f"{run.name}: EMA {EMA_WEIGHT}")
        old = [(s, v) for s, v, p in zip(run.steps, run.loss, run.per_step) if not p]
        if old:
            xs, ys = zip(*old)
            ax_loss.plot(xs, ys, "--", color=color, linewidth=1.5,
                         label=f"{run.name}: epoch running mean (older metrics.jsonl)")
        if run.steps:
            ax_lr.plot(run.steps, run.lr, "-", color=color, linewidth=1.8, label=run.name)
        if run.val_epochs:
            ax_val.plot(run.val_epochs, run.val_top1, "o-", color=color, linewidth=1.8, markersize=5, label=run.name)
    ax_loss.set(title="Training loss", xlabel="global step (optimizer updates)", ylabel="loss")
    ax_lr.set(title="Learning rate", xlabel="global step (optimizer updates)", ylabel="learning rate (per update)")
    ax_lr.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
    ax_val.set(title="Validation top-1", xlabel="epoch", ylabel="top-1 accuracy (%)")
    # whole epochs only, also when one epoch was scored (the default two ticks at least would be 4.8, 5.0, ...)
    ax_val.xaxis.set_major_locator(MaxNLocator(integer=True, min_n_ticks=1))
    for ax in (ax_loss, ax_lr, ax_val):
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize="small")
    if not any(run.val_epochs for run in runs):
        ax_val.text(0.5, 0.5, "no validation records\n(val_while_train: False)", ha="center", va="center",
                    transform=ax_val.transAxes, color="0.4")
    if not any(run.steps for run in runs):
        for ax in (ax_loss, ax_lr):
            ax.text(0.5, 0.5, "no step records", ha="center", va="center", transform=ax.transAxes, color="0.4")
    return fig


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, as every command of this toolkit
        print(f"{self.prog}: error: {message}", file=sys.stderr)
        sys.exit(2)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Command line: plot the given runs into one PNG; 0 done, 2 a folder or path that cannot be used."""
    console = bool(sys.argv) and os.path.basename(sys.argv[0]) == "mnv2-plot"  # pyproject.toml's script
    p = _Parser(prog="mnv2-plot" if console else "python -m mindcv_mnv2.plot", description=__doc__.splitlines()[0])
    p.add_argument("run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (ckpt_save_dir) holding metrics.jsonl")
    p.add_argument("-o", "--output", default="curves.png", help="PNG to write (default: curves.png); its folder is "
                                                               "created if missing")
    args = p.parse_args(argv)
    try:
        path = plot_runs(args.run_dirs, args.output)
    except PlotError as exc:
        print(f"{p.prog}: error: {exc}", file=sys.stderr)
        return exc.exit_code
    print(f"wrote {path} ({WIDTH_PX} x {HEIGHT_PX} px: training loss, learning rate, validation top-1)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
