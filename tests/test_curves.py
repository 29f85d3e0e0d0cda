"""Training curves: TensorBoard event files of real runs (fresh, stopped, resumed after a crash, disabled)
and the plot command (`python -m mindcv_mnv2.plot`) on synthetic and real metrics.jsonl files.

The 2-rank check (only rank 0 writes event files) is in tests/test_distributed.py, on its existing run.
"""
import json
import math
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mindcv_mnv2 import plot

from ._data_fixtures import fashion_mnist_subset
from ._events import read_scalars, steps
from .test_engine import make_cfg

ROOT = Path(__file__).resolve().parents[1]
TRAIN_IMAGES, VAL_IMAGES, BATCH = 320, 64, 32
SPE = TRAIN_IMAGES // BATCH  # 10 steps per epoch, every one logged
STOP_AT = (1, 5)  # SIGTERM arrives while epoch 2's 6th batch trains: the run stops at global step 16
TAGS = {"train/loss", "train/lr", "train/img_per_s", "train/loss_scale", "val/top1", "val/top5", "val/loss",
        "epoch/time_s"}


@pytest.fixture(scope="module")
def fm_curves(tmp_path_factory):
    """320 train / 64 val Fashion-MNIST PNGs at 32 px."""
    return fashion_mnist_subset(tmp_path_factory, "fm_curves", TRAIN_IMAGES, VAL_IMAGES)


def _cfg(data_dir, run_dir, **over):
    # dynamic loss scaling (a no-op for fp32 gradients at 1024) puts train/loss_scale on the curves too
    base = dict(mode=0, batch_size=BATCH, epoch_size=2, decay_epochs=2, log_interval=1, loss_scale_type="dynamic",
                loss_scale=1024.0)
    return make_cfg(data_dir, run_dir, **{**base, **over})


@pytest.fixture(scope="module")
def crashed_and_resumed(fm_curves, tmp_path_factory):
    """One graph-mode run, shared by the tests below: stopped by SIGTERM at global step 16 (its event
    files copied as the stop left them), then resumed from the epoch-1 checkpoint (global step 10), as
    after a crash past that checkpoint: steps 11-16 are trained and logged a second time."""
    import signal

    from mindcv_mnv2.engine.trainer import Interrupted, Trainer, train

    base = tmp_path_factory.mktemp("curves")
    run_dir = base / "run"
    real_next = Trainer._next_batch

    def stop_during_epoch_2(self, it, epoch, step):
        if (epoch, step) == STOP_AT:
            self.signals.received = signal.SIGTERM
        return real_next(self, it, epoch, step)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(Trainer, "_next_batch", stop_during_epoch_2)
        with pytest.raises(Interrupted, match="step 6"):
            train(_cfg(fm_curves, run_dir))
    at_stop = shutil.copytree(run_dir / "tensorboard", base / "tensorboard_at_stop")
    metrics_at_stop = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    resumed_at = time.time()
    train(_cfg(fm_curves, run_dir, resume=str(run_dir / f"mobilenet_v2_035-1_{SPE}.ckpt")))
    return {"run_dir": run_dir, "at_stop": at_stop, "metrics_at_stop": metrics_at_stop, "resumed_at": resumed_at}


@pytest.mark.slow
def test_a_run_writes_every_curve_at_its_global_step(crashed_and_resumed):
    """As the SIGTERM left them: one complete event file, every tag, each logged step once."""
    tb = crashed_and_resumed["at_stop"]
    assert len(list(tb.iterdir())) == 1
    scalars = read_scalars(tb)
    assert set(scalars) == TAGS
    stopped = SPE + STOP_AT[1] + 1  # 16
    for tag in ("train/loss", "train/lr", "train/loss_scale"):
        assert steps(scalars[tag]) == list(range(1, stopped + 1)), tag
    # no throughput for an epoch's first step: it includes graph compilation / the pipeline's start
    assert steps(scalars["train/img_per_s"]) == [s for s in range(1, stopped + 1) if s not in (1, SPE + 1)]
    for tag in ("val/top1", "val/top5", "val/loss", "epoch/time_s"):
        assert steps(scalars[tag]) == [SPE], tag
    assert all(v == 1024.0 for _, v, _ in scalars["train/loss_scale"])
    # the values are metrics.jsonl's: this step's own loss, the LR its update used
    records = {r["global_step"]: r for r in crashed_and_resumed["metrics_at_stop"] if r["type"] == "step"}
    for (step, loss, _), (_, lr, _) in zip(scalars["train/loss"], scalars["train/lr"]):
        assert loss == pytest.approx(records[step]["loss"], rel=1e-6)
        assert lr == pytest.approx(records[step]["lr"], rel=1e-6)
    epoch = next(r for r in crashed_and_resumed["metrics_at_stop"] if r["type"] == "epoch")
    assert scalars["val/top1"][0][1] == pytest.approx(epoch["top1"], rel=1e-6)
    assert scalars["epoch/time_s"][0][1] == pytest.approx(epoch["epoch_time"], rel=1e-6)


@pytest.mark.slow
def test_resumed_run_continues_the_curves_with_each_step_once(crashed_and_resumed):
    run_dir, resumed_at = crashed_and_resumed["run_dir"], crashed_and_resumed["resumed_at"]
    assert len(list((run_dir / "tensorboard").iterdir())) == 2  # the first writer's file and the resumed one's
    scalars = read_scalars(run_dir / "tensorboard")
    assert set(scalars) == TAGS
    total = 2 * SPE
    for tag in ("train/loss", "train/lr", "train/loss_scale"):
        assert steps(scalars[tag]) == list(range(1, total + 1)), tag  # contiguous, no step twice
    # steps 11-16 come from the resumed run: the first run's points past the checkpoint are purged
    for step, _, wall in scalars["train/loss"]:
        assert (wall >= resumed_at) == (step > SPE), step
    assert steps(scalars["train/img_per_s"]) == [s for s in range(1, total + 1) if s not in (1, SPE + 1)]
    for tag in ("val/top1", "val/top5", "val/loss", "epoch/time_s"):
        assert steps(scalars[tag]) == [SPE, total], tag
    # metrics.jsonl holds steps 11-16 twice (it is appended to); the plot reads each step once, as TensorBoard
    lines = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert len([r for r in lines if r["type"] == "step"]) == total + STOP_AT[1] + 1
    run = plot.read_run(str(run_dir))
    assert run.steps == steps(scalars["train/loss"])
    assert run.loss == [pytest.approx(v, rel=1e-6) for _, v, _ in scalars["train/loss"]]
    assert run.val_epochs == [1, 2] and all(run.per_step)


@pytest.mark.slow
def test_plot_of_a_real_run(crashed_and_resumed, tmp_path):
    out = plot.plot_runs([str(crashed_and_resumed["run_dir"])], str(tmp_path / "real.png"))
    _assert_png(out)


@pytest.mark.slow
def test_tensorboard_false_writes_no_event_files(fm_curves, tmp_path):
    from mindcv_mnv2.engine.trainer import train

    run_dir = tmp_path / "off"
    # PyNative, one step: no graph to compile, and what is checked does not depend on the mode
    train(_cfg(fm_curves, run_dir, mode=1, tensorboard=False, epoch_size=1, num_samples=BATCH,
               val_while_train=False))
    assert (run_dir / "metrics.jsonl").is_file() and not (run_dir / "tensorboard").exists()


def test_event_files_that_cannot_be_written_do_not_stop_training(tmp_path):
    from mindcv_mnv2.engine.curves import Curves

    (tmp_path / "tensorboard").write_text("a file where the folder should be")
    curves = Curves(str(tmp_path / "tensorboard"))
    curves.write({"type": "step", "global_step": 1, "loss": 2.3, "lr": 0.1, "img_per_s": 500.0})
    curves.write({"type": "epoch", "global_step": 1, "top1": 10.0, "epoch_time": 1.0})
    curves.close()
    assert curves.logdir is None  # a warning, then off; metrics.jsonl still gets every record


# ---------------------------------------------------------------------------------- plot command
def _synthetic_run(folder: Path, lr: float, epochs: int = 3, spe: int = 40, legacy: bool = False) -> Path:
    """A metrics.jsonl as train.py writes it (legacy: step records before "loss_avg" existed)."""
    folder.mkdir(parents=True)
    rng, records, step = random.Random(lr), [], 0
    for epoch in range(1, epochs + 1):
        total = 0.0
        for i in range(1, spe + 1):
            step += 1
            loss = 2.3 * math.exp(-step * lr / 4) + 0.3 * rng.random()
            total += loss
            rec = {"type": "step", "epoch": epoch, "step": i, "global_step": step,
                   "lr": lr * 0.5 * (1 + math.cos(math.pi * step / (epochs * spe))), "img_per_s": 640.0, "time": 0}
            rec.update({"loss": total / i} if legacy else {"loss": loss, "loss_avg": total / i})
            records.append(rec)
        records.append({"type": "epoch", "epoch": epoch, "global_step": step, "loss": total / spe, "lr": rec["lr"],
                        "img_per_s": 640.0, "epoch_time": 8.0, "top1": 60 + 20 * lr * epoch, "top5": 95.0,
                        "val_loss": 0.9, "val_images": 500})
    (folder / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return folder


def _plot_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "mindcv_mnv2.plot", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)


def _assert_png(path) -> None:
    from PIL import Image

    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == (plot.WIDTH_PX, plot.HEIGHT_PX)
        assert len(im.convert("RGB").getcolors(maxcolors=1 << 24)) > 50  # curves, text and colours, not a blank


def test_plot_one_and_several_runs(tmp_path):
    a = _synthetic_run(tmp_path / "lr_0.1", 0.1)
    b = _synthetic_run(tmp_path / "lr_0.05", 0.05)
    old = _synthetic_run(tmp_path / "before_tensorboard", 0.08, legacy=True)
    one = _plot_cli(str(a), "-o", str(tmp_path / "one.png"))
    assert one.returncode == 0, one.stderr
    _assert_png(tmp_path / "one.png")
    out = tmp_path / "new" / "folder" / "several.png"  # a missing -o folder is created
    several = _plot_cli(str(a), str(b), str(old), "-o", str(out))
    assert several.returncode == 0, several.stderr
    assert str(out) in several.stdout
    _assert_png(out)
    assert out.read_bytes() != (tmp_path / "one.png").read_bytes()


@pytest.mark.parametrize("epochs", [1, 5])
def test_validation_axis_shows_whole_epochs(tmp_path, epochs):
    """One scored epoch (the CPU demo validates only its last) gets the tick 1, not 0.8, 0.9, 1.0 ..."""
    run = plot.read_run(str(_synthetic_run(tmp_path / "r", 0.1, epochs=epochs)))
    ax_val = plot.draw([run]).axes[2]
    ax_val.figure.canvas.draw()
    lo, hi = ax_val.get_xlim()
    shown = [t for t in ax_val.get_xticks() if lo <= t <= hi]
    assert shown and all(float(t).is_integer() for t in shown), shown
    assert set(run.val_epochs) <= set(shown)


def test_read_run_keeps_each_step_once_after_a_resume(tmp_path):
    run = _synthetic_run(tmp_path / "r", 0.1, epochs=1, spe=15)
    lines = (run / "metrics.jsonl").read_text().splitlines()
    steps_ = [r for r in map(json.loads, lines) if r["type"] == "step"]
    # resumed from global step 10 after a crash at 15, then a line cut short by a later crash
    again = [dict(r, loss=r["loss"] + 1.0) for r in steps_[10:]]
    with open(run / "metrics.jsonl", "a") as fh:
        fh.writelines(json.dumps(r) + "\n" for r in again)
        fh.write('{"type": "step", "glob')
    got = plot.read_run(str(run))
    assert got.steps == list(range(1, 16))
    assert got.loss[:10] == [r["loss"] for r in steps_[:10]] and got.loss[10:] == [r["loss"] for r in again]
    assert got.val_epochs == [1] and got.name == "r"
    legacy = plot.read_run(str(_synthetic_run(tmp_path / "old", 0.1, epochs=1, legacy=True)))
    assert not any(legacy.per_step)


@pytest.mark.parametrize("case", ["no_metrics", "missing_folder", "empty_metrics", "pdf_output", "folder_output"])
def test_plot_refuses_with_one_line(tmp_path, case):
    good = _synthetic_run(tmp_path / "good", 0.1, epochs=1, spe=5)
    bare = tmp_path / "not_a_run"
    bare.mkdir()
    args, needle = {
        "no_metrics": ([str(bare)], f"'{bare}' has no metrics.jsonl"),
        "missing_folder": ([str(tmp_path / "nowhere")], "is not a folder"),
        "empty_metrics": ([str(bare)], "holds no step or epoch records"),
        "pdf_output": ([str(good), "-o", str(tmp_path / "c.pdf")], "does not end in .png"),
        "folder_output": ([str(good), "-o", str(tmp_path)], "is a folder"),
    }[case]
    if case == "empty_metrics":
        (bare / "metrics.jsonl").write_text("")
    proc = _plot_cli(*args)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.startswith("python -m mindcv_mnv2.plot: error: ") and needle in proc.stderr, proc.stderr
    if case == "no_metrics":
        assert "ckpt_save_dir" in proc.stderr  # the fix: point it at a run directory
    assert not list(tmp_path.glob("*.png")) and not (ROOT / "curves.png").exists()
