"""Short real training runs: loss goes down (graph and PyNative), checkpoints are complete and
self-describing, resume continues exactly, NaN stops loudly, validation counts are exact."""
import json
import math
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mindcv_mnv2.config import load_config
from mindcv_mnv2.models.registry import model_defaults

from ._data_fixtures import fashion_mnist_subset, tiny_imagefolder  # noqa: F401  (fixtures)

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow  # every test here trains or validates for real
TRAIN_IMAGES, VAL_IMAGES, BATCH = 2000, 500, 64
STEPS = TRAIN_IMAGES // BATCH  # 31 steps per epoch


@pytest.fixture(scope="module")
def fashion_mnist_tiny(tmp_path_factory):
    """2000 train / 500 val real Fashion-MNIST images: enough for the recipe below to learn every time."""
    return fashion_mnist_subset(tmp_path_factory, "fm_engine", TRAIN_IMAGES, VAL_IMAGES)


def make_cfg(data_dir, run_dir, **over):
    """A small deterministic recipe that learns reliably: no random augmentation or dropout.

    Chosen by measurement (5 seeds x ONEDNN_MAX_CPU_ISA unset/AVX2/SSE41, two epochs): epoch-2 mean
    loss 0.48-0.56x epoch 1's, final top-1 40.6-57.8%. Stride 16 keeps 2x2 maps at 32 px (stride 32
    leaves 1x1 maps, and 640 images at lr 0.05 without warm-up trained above chance-level loss on
    AVX-512). lr 0 gives a ratio of 1.00 and 10.2% top-1 (chance), so the bounds below tell them apart.
    """
    base = dict(model="mobilenet_v2_035", device_target="CPU", data_dir=str(data_dir), ckpt_save_dir=str(run_dir),
                image_resize=32, batch_size=BATCH, epoch_size=2, num_parallel_workers=2, scale=(1.0, 1.0),
                ratio=(1.0, 1.0), hflip=0.0, color_jitter=0.0, drop_rate=0.0, opt="momentum", lr=0.05,
                warmup_epochs=0.3, scheduler="cosine_decay", decay_epochs=2, min_lr=0.0, weight_decay=1e-4,
                weight_decay_filter="norm_and_bias", val_while_train=True, log_interval=5, crop_pct=1.0,
                output_stride=16, mean=(72.94,) * 3, std=(90.02,) * 3, keep_checkpoint_max=5)
    base.update(over)
    return load_config(overrides=base, model_defaults=model_defaults)


def assert_learned(epochs):
    """The bounds a working trainer always clears on make_cfg's recipe and a broken one never does."""
    # measured: ratio 0.48-0.56 when training works, 1.00 with lr 0
    assert epochs[1]["loss"] < 0.75 * epochs[0]["loss"], [e["loss"] for e in epochs]
    # measured: 40.6-57.8% when training works, 10.2% (chance) with lr 0
    assert epochs[1]["top1"] > 25.0, [e["top1"] for e in epochs]


def read_jsonl(path):
    return [json.loads(line) for line in open(path, encoding="utf-8")]


def model_tensors(path):
    from mindcv_mnv2.checkpoint import extract_model_state, read_checkpoint

    tensors, meta = read_checkpoint(str(path))
    return extract_model_state(tensors, use_ema=False), tensors, meta


@pytest.fixture(scope="module")
def graph_run(fashion_mnist_tiny, tmp_path_factory):  # noqa: F811
    """Two epochs in graph mode, straight through (also the reference for resume)."""
    from mindcv_mnv2.engine.trainer import train

    run_dir = tmp_path_factory.mktemp("graph_run")
    cfg = make_cfg(fashion_mnist_tiny, run_dir, mode=0, ema=True, ema_decay=0.99)
    summary = train(cfg)
    return cfg, run_dir, summary


@pytest.mark.numerics  # learning and bit-exact resume hold on every CPU
def test_graph_training_lowers_loss_and_writes_everything(graph_run):
    cfg, run_dir, summary = graph_run
    records = read_jsonl(run_dir / "metrics.jsonl")
    steps = [r for r in records if r["type"] == "step"]
    epochs = [r for r in records if r["type"] == "epoch"]
    assert [e["epoch"] for e in epochs] == [1, 2]
    assert len(steps) == 2 * (STEPS // 5 + 1)  # every log_interval and at each epoch's end
    assert_learned(epochs)
    # a step record holds what that step did: the LR its update used, its own loss, the epoch's mean
    from mindcv_mnv2.engine.builders import build_lr

    lrs = build_lr(cfg, STEPS)
    assert [r["lr"] for r in steps] == [pytest.approx(float(lrs[r["global_step"] - 1]), rel=1e-6) for r in steps]
    assert all(r["loss"] != r["loss_avg"] for r in steps if r["step"] > 1)  # not the running mean under another name
    assert epochs[0]["lr"] == pytest.approx(float(lrs[STEPS - 1]))
    for e in epochs:
        assert e["val_images"] == VAL_IMAGES and 0.0 <= e["top1"] <= e["top5"] <= 100.0
    assert summary["best_top1"] == max(e["top1"] for e in epochs)
    names = sorted(os.listdir(run_dir))
    assert f"mobilenet_v2_035-1_{STEPS}.ckpt" in names and f"mobilenet_v2_035-2_{STEPS}.ckpt" in names
    assert "mobilenet_v2_035_best.ckpt" in names and "config.yaml" in names and "train.log" in names
    assert load_config(str(run_dir / "config.yaml")) == cfg  # the saved config is the resolved one


def test_checkpoint_is_self_describing_and_complete(graph_run):
    cfg, run_dir, _ = graph_run
    weights, tensors, meta = model_tensors(run_dir / f"mobilenet_v2_035-2_{STEPS}.ckpt")
    assert len(weights) == 262
    assert any(k.startswith("moments.") for k in tensors) and "global_step" in tensors
    assert meta["model"] == "mobilenet_v2_035" and meta["model_kwargs"]["num_classes"] == 10
    assert meta["class_names"][0] == "0_tshirt_top" and len(meta["class_names"]) == 10
    assert meta["eval"]["image_size"] == 32
    ts = meta["train_state"]
    assert (ts["epoch"], ts["global_step"], ts["steps_per_epoch"]) == (2, 2 * STEPS, STEPS)
    # the trainer counts updates on the host; the optimizer's own counter, saved beside it, must agree
    assert int(np.asarray(tensors["global_step"]).reshape(-1)[0]) == ts["global_step"]
    assert meta["config"]["lr"] == cfg.lr
    assert os.stat(run_dir / f"mobilenet_v2_035-2_{STEPS}.ckpt").st_mode & 0o200  # not left read-only
    from mindcv_mnv2.checkpoint import load_model

    net = load_model(str(run_dir / f"mobilenet_v2_035-2_{STEPS}.ckpt"))  # no config needed
    assert net.checkpoint_meta["class_names"] == meta["class_names"]


@pytest.fixture(scope="module")
def half_run(fashion_mnist_tiny, tmp_path_factory):  # noqa: F811
    """The first of graph_run's two epochs as a run of its own (epoch_size 1, the same LR curve half)."""
    from mindcv_mnv2.engine.trainer import train

    run_dir = tmp_path_factory.mktemp("half_run")
    train(make_cfg(fashion_mnist_tiny, run_dir, mode=0, epoch_size=1, decay_epochs=2, ema=True, ema_decay=0.99))
    return run_dir


def assert_same_run(ref_ckpt, got_ckpt):
    """Same process, same data order, same kernels: a continued run is the uninterrupted one, bit for
    bit (weights, BN statistics, optimizer slots, EMA copies, step counter)."""
    _, tensors_a, meta_a = model_tensors(ref_ckpt)
    _, tensors_b, meta_b = model_tensors(got_ckpt)
    assert meta_b["train_state"]["global_step"] == meta_a["train_state"]["global_step"]
    assert sorted(tensors_a) == sorted(tensors_b)
    for name in tensors_a:
        np.testing.assert_array_equal(tensors_b[name], tensors_a[name], err_msg=name)


@pytest.mark.numerics  # learning and bit-exact resume hold on every CPU
def test_resume_continues_exactly(graph_run, half_run, fashion_mnist_tiny, tmp_path):  # noqa: F811
    from mindcv_mnv2.engine.trainer import train

    cfg, ref_dir, _ = graph_run
    run_dir = shutil.copytree(half_run, tmp_path / "interrupted")
    summary = train(make_cfg(fashion_mnist_tiny, run_dir, mode=0, resume=str(run_dir), ema=True, ema_decay=0.99))
    assert summary["epoch"] == 2
    assert_same_run(ref_dir / f"mobilenet_v2_035-2_{STEPS}.ckpt", run_dir / f"mobilenet_v2_035-2_{STEPS}.ckpt")
    lines = read_jsonl(run_dir / "metrics.jsonl")
    assert [r["epoch"] for r in lines if r["type"] == "epoch"] == [1, 2]


def test_ckpt_path_with_resume_opt_continues_exactly(graph_run, half_run, fashion_mnist_tiny, tmp_path):  # noqa: F811
    """MindCV's spelling, --ckpt_path X --resume_opt True, into a new run directory: the same run."""
    from mindcv_mnv2.engine.trainer import train

    _, ref_dir, _ = graph_run
    run_dir = tmp_path / "continued"
    train(make_cfg(fashion_mnist_tiny, run_dir, mode=0, ckpt_path=str(half_run / f"mobilenet_v2_035-1_{STEPS}.ckpt"),
                   resume_opt=True, ema=True, ema_decay=0.99))
    assert_same_run(ref_dir / f"mobilenet_v2_035-2_{STEPS}.ckpt", run_dir / f"mobilenet_v2_035-2_{STEPS}.ckpt")
    assert not (run_dir / f"mobilenet_v2_035-1_{STEPS}.ckpt").exists()  # epoch 1 was not trained again


def test_interrupt_inside_accumulation_cycle_resumes_exactly(fashion_mnist_tiny, tmp_path, monkeypatch):  # noqa: F811
    """The partial gradient sum is saved with the interrupt checkpoint and restored.

    PyNative (mode 1): three runs without graph compilation (on 10 batches they took 23 s against 63 s
    in graph mode), and what is saved and restored does not depend on the mode (graph-mode resume: the
    tests above).
    """
    import signal

    from mindcv_mnv2.engine.trainer import Interrupted, Trainer, train

    over = dict(mode=1, epoch_size=1, decay_epochs=1, batch_size=32, gradient_accumulation_steps=2, num_samples=128,
                val_while_train=False)  # 4 batches = 2 updates
    train(make_cfg(fashion_mnist_tiny, tmp_path / "ref", **over))
    real_next = Trainer._next_batch

    def stop_after_batch_3(self, it, epoch, step):
        if (epoch, step) == (0, 2):  # batch index 2 is the third: one batch into the second cycle
            self.signals.received = signal.SIGTERM
        return real_next(self, it, epoch, step)

    monkeypatch.setattr(Trainer, "_next_batch", stop_after_batch_3)
    run_dir = tmp_path / "run"
    with pytest.raises(Interrupted, match="step 3"):
        train(make_cfg(fashion_mnist_tiny, run_dir, **over))
    monkeypatch.setattr(Trainer, "_next_batch", real_next)
    _, saved, meta = model_tensors(run_dir / "mobilenet_v2_035_interrupted.ckpt")
    assert meta["train_state"]["step_in_epoch"] == 3 and meta["train_state"]["global_step"] == 1
    partial = [v for k, v in saved.items() if k.startswith("grad_accum.")]
    assert partial and any(np.abs(v).max() > 0 for v in partial)  # the half-summed gradients are in the file
    train(make_cfg(fashion_mnist_tiny, run_dir, resume=str(run_dir), **over))
    assert_same_run(tmp_path / "ref" / "mobilenet_v2_035-1_4.ckpt", run_dir / "mobilenet_v2_035-1_4.ckpt")


def test_new_run_refuses_a_used_run_dir(graph_run, fashion_mnist_tiny):  # noqa: F811
    from mindcv_mnv2.config import ConfigError
    from mindcv_mnv2.engine.trainer import Trainer

    _, run_dir, _ = graph_run
    before = sorted(os.listdir(run_dir))
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume"):
        Trainer(make_cfg(fashion_mnist_tiny, run_dir, mode=0))
    assert sorted(os.listdir(run_dir)) == before


def test_pynative_trains_like_graph_with_accumulation_and_clipping(fashion_mnist_tiny, tmp_path):  # noqa: F811
    """Mode 1 (PyNative) and mode 0 (graph) run the same step: same weights after the same updates."""
    from mindcv_mnv2.engine.trainer import train

    over = dict(epoch_size=1, batch_size=16, gradient_accumulation_steps=2, clip_grad=True, clip_value=1.0,
                val_while_train=False, num_samples=64)  # 4 batches of 16 = 2 updates
    weights = {}
    for mode in (1, 0):
        run_dir = tmp_path / f"mode{mode}"
        train(make_cfg(fashion_mnist_tiny, run_dir, mode=mode, **over))
        weights[mode], _, meta = model_tensors(run_dir / "mobilenet_v2_035-1_4.ckpt")
        assert meta["train_state"]["global_step"] == 2
    changed = [n for n in weights[0] if not np.allclose(weights[0][n], weights[1][n], rtol=1e-3, atol=1e-4)]
    assert not changed, f"PyNative and graph differ in {changed[:5]}"
    from mindcv_mnv2.models import create_model

    import mindspore as ms

    ms.set_seed(42)
    fresh = {p.name: p.asnumpy() for p in create_model("mobilenet_v2_035", num_classes=10).get_parameters()}
    moved = np.abs(weights[1]["features.0.weight"] - fresh["features.0.weight"]).max()
    assert moved > 1e-4  # the step really updated the weights


def test_nan_loss_stops_with_step_and_keeps_last_good(fashion_mnist_tiny, tmp_path):  # noqa: F811
    from mindcv_mnv2.engine.trainer import TrainingDiverged, train

    run_dir = tmp_path / "nan"
    # epoch 1 trains normally, then the LR is multiplied by 1e30 and the loss explodes
    # (mixup/cutmix with label smoothing on: the soft-label path through the compiled step)
    cfg = make_cfg(fashion_mnist_tiny, run_dir, mode=0, epoch_size=3, scheduler="multi_step_decay",
                   multi_step_decay_milestones=(1,), decay_rate=1e30, val_while_train=False, mixup=0.2,
                   cutmix=1.0, label_smoothing=0.1, num_samples=320)  # 5 steps per epoch
    with pytest.raises(TrainingDiverged) as info:
        train(cfg)
    msg = str(info.value)
    assert "epoch 2" in msg and "step" in msg and "mobilenet_v2_035-1_5.ckpt" in msg
    _, _, meta = model_tensors(run_dir / "mobilenet_v2_035-1_5.ckpt")  # still loads
    assert meta["train_state"]["epoch"] == 1
    records = read_jsonl(run_dir / "metrics.jsonl")
    assert records[-1]["type"] == "diverged" and records[-1]["epoch"] == 2
    first_epoch = [r for r in records if r["type"] == "epoch"][0]
    assert math.isfinite(first_epoch["loss"]) and first_epoch["loss"] > 0


def test_amp_falls_back_on_cpu_with_a_warning(caplog):
    from mindcv_mnv2.engine.context import amp_level_for

    with caplog.at_level("WARNING", logger="mindcv_mnv2"):
        assert amp_level_for("CPU", "O3") == "O0"
    assert "O3 is not supported on CPU" in caplog.text
    assert amp_level_for("GPU", "O2") == "O2" and amp_level_for("Ascend", "O3") == "O3"


def test_initial_weights_depend_on_the_seed_alone(tmp_path):
    """build_model draws the same weights whatever numpy's global generator did before (a distributed
    start-up, other tests), other weights for another seed, and leaves that generator where it was."""
    from mindcv_mnv2.config import load_config
    from mindcv_mnv2.engine import builders

    def stem(seed: int, draws_before: int):
        cfg = load_config(None, overrides={"model": "mobilenet_v2_035", "seed": seed, "data_dir": str(tmp_path)},
                          model_defaults=model_defaults)
        np.random.seed(1234)
        np.random.random(draws_before)
        state = np.random.get_state()
        net = builders.build_model(cfg, {"num_classes": 10}, "CPU")
        after = np.random.get_state()
        assert np.array_equal(state[1], after[1]) and state[2] == after[2]  # the global stream is untouched
        return net.features[0].weight.asnumpy().copy()

    first = stem(42, 0)
    np.testing.assert_array_equal(first, stem(42, 7))
    assert not np.array_equal(first, stem(43, 0))


def _biased_checkpoint(path, favourite, num_classes=3):
    """A checkpoint whose prediction is known: zero classifier weights, bias favouring one class."""
    from mindcv_mnv2.checkpoint import model_meta, save_checkpoint
    from mindcv_mnv2.models import create_model

    net = create_model("mobilenet_v2_035", num_classes=num_classes)
    params = {p.name: p.asnumpy() for p in net.get_parameters()}
    params["classifier.1.weight"][:] = 0.0
    bias = np.zeros(num_classes, np.float32)
    bias[favourite] = 2.0
    params["classifier.1.bias"] = bias
    meta = model_meta("mobilenet_v2_035", {"num_classes": num_classes, "padding": "symmetric"})
    save_checkpoint(str(path), params, meta)
    return bias


@pytest.mark.parametrize("batch_size", [4, 15, 64])
def test_validate_counts_are_exact(tiny_imagefolder, tmp_path, batch_size):  # noqa: F811
    ckpt = tmp_path / "biased.ckpt"
    bias = _biased_checkpoint(ckpt, favourite=1)
    out = tmp_path / "m.json"
    proc = subprocess.run([sys.executable, "validate.py", "--data_dir", str(tiny_imagefolder), "--ckpt_path",
                           str(ckpt), "--batch_size", str(batch_size), "--image_resize", "32",
                           "--device_target", "CPU", "--output_json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.load(open(out))
    # 15 images, 5 per class; every prediction is class 1 -> exactly 5 correct
    assert m["num_images"] == 15 and m["correct_top1"] == 5
    assert m["top1"] == pytest.approx(100 * 5 / 15) and m["top5"] == 100.0
    logp = bias - np.log(np.exp(bias).sum())
    assert m["loss"] == pytest.approx(-np.mean(np.repeat(logp, 5)), rel=1e-5)
    assert "top-1 33.33%" in proc.stdout


def test_validate_refuses_to_score_nothing(tiny_imagefolder, tmp_path):  # noqa: F811
    base = [sys.executable, "validate.py", "--data_dir", str(tiny_imagefolder), "--device_target", "CPU"]
    for extra, needle in ((["--ckpt_path", ""], "Refusing to score random weights"),
                          (["--ckpt_path", str(tmp_path / "missing.ckpt")], "does not exist"),
                          (["--ckpt_path", str(tmp_path)], "is a directory")):
        proc = subprocess.run(base + extra, cwd=ROOT, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 2, (extra, proc.stderr[-1500:])
        assert needle in proc.stderr and "Traceback" not in proc.stderr
        assert "top-1" not in proc.stdout


def test_validate_ckpt_and_exported_mindir_agree(graph_run, tmp_path):
    """validate() scores our checkpoint (EMA weights) and its MINDIR export identically."""
    from mindcv_mnv2.engine.validation import validate
    from mindcv_mnv2.export import export_model

    cfg, run_dir, summary = graph_run
    ckpt = str(run_dir / f"mobilenet_v2_035-2_{STEPS}.ckpt")
    base = cfg.replace(ckpt_path=ckpt, val_while_train=False)
    from_ckpt = validate(base)
    assert from_ckpt["num_images"] == VAL_IMAGES
    # the trainer validated the same (EMA) weights at the end of epoch 2
    last = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["type"] == "epoch"][-1]
    assert from_ckpt["top1"] == pytest.approx(last["top1"]) and from_ckpt["loss"] == pytest.approx(last["val_loss"])
    mindir = export_model(ckpt, "MINDIR", batch_size=BATCH, output=str(tmp_path / "m.mindir"))
    from_mindir = validate(base.replace(ckpt_path=mindir, batch_size=7))  # the graph's own batch size wins
    assert from_mindir["correct_top1"] == from_ckpt["correct_top1"]
    assert from_mindir["loss"] == pytest.approx(from_ckpt["loss"], rel=1e-5)
    raw = validate(base, use_ema=False)
    assert raw["num_images"] == VAL_IMAGES and raw["loss"] != pytest.approx(from_ckpt["loss"], rel=1e-6)


def test_fine_tune_onto_new_classes(graph_run, tiny_imagefolder, tmp_path, capsys):  # noqa: F811
    """ckpt_path with another class count: backbone loaded, classifier re-initialised for 3 classes."""
    from mindcv_mnv2.engine.trainer import train

    _, run_dir, _ = graph_run
    source = run_dir / f"mobilenet_v2_035-2_{STEPS}.ckpt"
    out = tmp_path / "ft"
    # PyNative: loading and re-initialising are the subject, not the compiled step (3 updates of lr 0)
    cfg = make_cfg(tiny_imagefolder, out, mode=1, epoch_size=1, batch_size=8, lr=0.0, val_while_train=False,
                   ckpt_path=str(source), pretrained=True, mean=None, std=None)
    train(cfg)
    assert "classifier not loaded (10 classes, this run 3): it starts from its random init" in capsys.readouterr().out
    tuned, _, meta = model_tensors(out / "mobilenet_v2_035-1_3.ckpt")  # 24 images / 8
    from mindcv_mnv2.checkpoint import extract_model_state, read_checkpoint

    src = extract_model_state(read_checkpoint(str(source))[0], use_ema=True)  # initialisation takes the EMA weights
    assert tuned["classifier.1.weight"].shape[0] == 3 and meta["class_names"] == ["cat_a", "cat_b", "cat_c"]
    # lr 0: every loaded weight stays exactly as loaded (BN statistics still move: they are not weights)
    np.testing.assert_array_equal(tuned["features.0.weight"], src["features.0.weight"])
    np.testing.assert_array_equal(tuned["features.19.layers.6.weight"], src["features.19.layers.6.weight"])


def test_tf_slim_recipe_trains_and_its_checkpoint_scores_as_trained(fashion_mnist_tiny, tmp_path):  # noqa: F811
    """configs/mobilenet_v2_1.0_slim_gpu.yaml (RMSProp, x0.98 every 2.5 epochs, EMA, inception crop) on CPU."""
    from mindcv_mnv2.config import parse_args
    from mindcv_mnv2.engine.trainer import train

    run_dir = tmp_path / "slim"
    argv = ["-c", str(ROOT / "configs" / "mobilenet_v2_1.0_slim_gpu.yaml"), "--device_target", "CPU",
            "--distribute", "False", "--data_dir", str(fashion_mnist_tiny), "--ckpt_save_dir", str(run_dir),
            "--model", "mobilenet_v2_035", "--image_resize", "32", "--batch_size", "16", "--num_samples", "320",
            "--epoch_size", "1", "--decay_epochs", "0.5", "--val_interval", "1", "--num_parallel_workers", "2",
            "--mean", "72.94", "72.94", "72.94", "--std", "90.02", "90.02", "90.02", "--lr", "0.01", "--num_classes", "10"]
    cfg = parse_args(argv, model_defaults=model_defaults)[0]
    assert (cfg.opt, cfg.scheduler, cfg.ema, cfg.inception_crop, cfg.eps) == ("rmsprop", "step_decay", True, True, 1.0)
    summary = train(cfg)
    epochs = [r for r in read_jsonl(run_dir / "metrics.jsonl") if r["type"] == "epoch"]
    assert len(epochs) == 1 and all(math.isfinite(e["loss"]) for e in epochs)
    _, tensors, meta = model_tensors(summary["last_checkpoint"])
    for prefix in ("mean_square.", "moment.", "ema."):  # RMSProp's slots and the EMA copies are saved
        assert any(k.startswith(prefix) for k in tensors), prefix
    assert meta["eval"]["inception_crop"] is True
    # 20 updates per epoch, x0.98 every 0.5 epochs (10 updates): the step-decay schedule really runs
    from mindcv_mnv2.engine.builders import build_lr  # what the trainer steps through

    np.testing.assert_allclose(build_lr(cfg, 20)[[0, 9, 10, 19]], 0.01 * np.array([1, 1, 0.98, 0.98]), rtol=1e-6)
    # validate.py without the recipe: the checkpoint says how it is scored (EMA weights, inception crop)
    out = tmp_path / "v.json"
    proc = subprocess.run([sys.executable, "validate.py", "--data_dir", str(fashion_mnist_tiny), "--ckpt_path",
                           summary["last_checkpoint"], "--device_target", "CPU", "--output_json", str(out)],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    m = json.load(open(out))
    assert m["preprocessing"]["inception_crop"] is True and m["preprocessing"]["image_size"] == 32
    assert m["correct_top1"] == round(epochs[-1]["top1"] * VAL_IMAGES / 100)  # the trainer's own last score
    assert m["loss"] == pytest.approx(epochs[-1]["val_loss"], rel=1e-5)
