"""Continuing runs from checkpoints that are not ours (MindCV's training files), and which
checkpoints a run keeps (keep_checkpoint_max, latest_k / top_k)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")

from mindcv_mnv2.checkpoint import CheckpointError, read_checkpoint, save_checkpoint  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
MINDCV_CKPT = ROOT / "tests" / "fixtures" / "mindcv" / "mindcv_mobilenet_v2_035_trained.ckpt"


@pytest.fixture(scope="module")
def thousand_classes(tmp_path_factory):
    """An ImageFolder with MindCV's 1000 classes (one 32 px Fashion-MNIST-like image each, train and val)."""
    from PIL import Image

    root = tmp_path_factory.mktemp("in1k")
    rng = np.random.RandomState(0)
    for split in ("train", "val"):
        for c in range(1000):
            d = root / split / f"n{c:08d}"
            d.mkdir(parents=True)
            Image.fromarray(rng.randint(0, 255, (32, 32, 3), dtype=np.uint8)).save(d / "a.png")
    return root


def _cfg(data, run_dir, **over):
    from mindcv_mnv2.config import load_config
    from mindcv_mnv2.models.registry import model_defaults

    base = dict(model="mobilenet_v2_035", device_target="CPU", data_dir=str(data), ckpt_save_dir=str(run_dir),
                image_resize=32, batch_size=100, epoch_size=2, num_parallel_workers=2, opt="momentum", lr=0.01,
                warmup_epochs=0, weight_decay_filter="disable", mode=0)
    base.update(over)
    return load_config(overrides=base, model_defaults=model_defaults)


def test_mindcv_training_checkpoint_resumes_from_its_step(thousand_classes, tmp_path):
    """MindCV's files hold weights, moments.*, global_step, learning_rate: position from global_step."""
    from mindcv_mnv2.engine.trainer import Trainer

    tensors, meta = read_checkpoint(str(MINDCV_CKPT))
    assert meta == {} and int(tensors["global_step"][0]) == 2  # a foreign file, two updates in
    trainer = Trainer(_cfg(thousand_classes, tmp_path / "run", ckpt_path=str(MINDCV_CKPT), resume_opt=True))
    assert trainer.updates_per_epoch == 10
    assert (trainer.start_epoch, trainer.skip_steps, trainer._global_step()) == (0, 2, 2)
    params = trainer.step.parameters_dict()
    for name in ("moments.features.0.weight", "moments.classifier.1.weight", "features.4.layers.3.weight",
                 "features.1.moving_variance"):
        np.testing.assert_array_equal(params[name].asnumpy(), tensors[name], err_msg=name)
    assert trainer._current_lr() == pytest.approx(float(trainer.lr[2]))  # the recipe's schedule, at step 2


@pytest.mark.parametrize("strip, needle", [
    ("moments.", "optimizer state for this recipe's optimizer (momentum) is missing (e.g. moments."),
    ("global_step", "no training state inside (no global_step)"),
])
def test_mindcv_checkpoint_without_state_is_refused(strip, needle, thousand_classes, tmp_path, capsys):
    tensors, _ = read_checkpoint(str(MINDCV_CKPT))
    bad = tmp_path / "stripped.ckpt"
    save_checkpoint(str(bad), {k: v for k, v in tensors.items() if not k.startswith(strip)})
    from mindcv_mnv2.cli import train_main

    argv = ["--model", "mobilenet_v2_035", "--device_target", "CPU", "--data_dir", str(thousand_classes),
            "--image_resize", "32", "--batch_size", "100", "--opt", "momentum", "--ckpt_path", str(bad),
            "--resume_opt", "True", "--ckpt_save_dir", str(tmp_path / "run")]
    status = train_main(argv, "train.py")
    err = capsys.readouterr().err
    assert status == 2 and needle in err and "stripped.ckpt" in err, err
    assert len(err.strip().splitlines()) == 1, err
    assert not list((tmp_path / "run").glob("*.ckpt"))


def test_our_file_without_a_loop_position_cannot_resume(tmp_path):
    from mindcv_mnv2.engine.checkpointing import resume_position

    with pytest.raises(CheckpointError, match="can initialise weights .* but not resume"):
        resume_position("k.ckpt", {"format": "mindcv_mnv2/1", "model": "x"}, {"global_step": np.array([3])}, 10, 1)


# ----------------------------------------------------------------------------- keeping checkpoints
def _meta(epoch, top1):
    return {"train_state": {"epoch": epoch, "global_step": 10 * epoch, "last_metrics": {"top1": top1}}}


def _keep_run(tmp_path, policy, top1s, keep_max=2):
    from mindcv_mnv2.engine.checkpointing import CheckpointKeeper

    keeper = CheckpointKeeper(str(tmp_path), "m", keep_max=keep_max, policy=policy)
    for epoch, top1 in enumerate(top1s, start=1):
        keeper.save_epoch(epoch, 10, {"w": np.full(2, epoch, np.float32)}, _meta(epoch, top1))
    return sorted(p.name for p in tmp_path.glob("*.ckpt")), json.loads((tmp_path / "state.json").read_text())


def test_latest_k_keeps_the_newest(tmp_path):
    files, state = _keep_run(tmp_path, "latest_k", [50, 70, 60, 40, 45])
    assert files == ["m-4_10.ckpt", "m-5_10.ckpt"]
    assert [c["file"] for c in state["checkpoints"]] == files and state["latest"] == "m-5_10.ckpt"


def test_top_k_keeps_the_best_and_the_newest(tmp_path):
    files, state = _keep_run(tmp_path, "top_k", [50, 70, 60, 40, 45])
    # the best two by top-1 (epochs 2 and 3), except that the newest stays too so the run can resume
    assert files == ["m-2_10.ckpt", "m-5_10.ckpt"]
    assert state["latest"] == "m-5_10.ckpt"
    files, _ = _keep_run(tmp_path / "b", "top_k", [50, 70, 60, 80], keep_max=2)
    assert files == ["m-2_10.ckpt", "m-4_10.ckpt"]  # the newest is also among the best


def test_save_interval_and_policy_none(tmp_path):
    from mindcv_mnv2.engine.checkpointing import CheckpointKeeper

    keeper = CheckpointKeeper(str(tmp_path), "m", keep_max=10, save_interval=2)
    saved = [keeper.save_epoch(e, 10, {"w": np.zeros(1, np.float32)}, _meta(e, 1.0), last_epoch=e == 5)
             for e in range(1, 6)]
    assert [bool(p) for p in saved] == [False, True, False, True, True]  # every 2nd, and the last
    assert CheckpointKeeper(str(tmp_path / "n"), "m", policy=None).save_epoch(1, 10, {"w": np.zeros(1)}, {}) is None
