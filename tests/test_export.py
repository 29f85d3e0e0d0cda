"""MINDIR / ONNX export: outputs match MindSpore, metadata travels, files are 0644, clear errors."""
from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
pytestmark = pytest.mark.numerics  # exported graphs against the checkpoint, to float rounding

from mindcv_mnv2.checkpoint import CheckpointError, load_model, model_meta, save_checkpoint  # noqa: E402
from mindcv_mnv2.export import (ExportError, export_model, load_mindir, main,  # noqa: E402
                                read_export_meta, run_fixed_batch)
from mindcv_mnv2.models import create_model  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SIZE = 64
NAMES = ["ant", "bee", "cat", "dog", "eel"]


def _randomized_state(net, rng):
    """Model tensors with random BN statistics and a non-trivial head, so logits are O(1)."""
    state = {}
    for p in net.get_parameters():
        a = p.asnumpy().copy()
        if p.name.endswith("moving_variance"):
            a = rng.uniform(0.5, 1.5, a.shape)
        elif p.name.endswith(("moving_mean", "beta")):
            a = rng.normal(0, 0.1, a.shape)
        elif p.name.endswith("gamma"):
            a = rng.uniform(0.8, 1.2, a.shape)
        elif p.name.startswith("classifier.1.weight"):
            a = rng.normal(0, 0.3, a.shape)
        state[p.name] = a.astype(np.float32)
    return state


def _make_ckpt(path, padding, with_ema):
    rng = np.random.RandomState(0 if padding == "symmetric" else 1)
    net = create_model("mobilenet_v2_035", num_classes=len(NAMES), padding=padding)
    state = _randomized_state(net, rng)
    if with_ema:  # EMA copies differ from the raw weights (a shifted classifier bias)
        state.update({f"ema.{k}": v for k, v in state.items()})
        state["ema.classifier.1.bias"] = state["classifier.1.bias"] + np.arange(len(NAMES), dtype=np.float32)
    meta = model_meta("mobilenet_v2_035", {"width_mult": 0.35, "num_classes": len(NAMES), "padding": padding},
                      class_names=NAMES, eval_facts={"image_size": SIZE})
    save_checkpoint(str(path), state, meta)
    return str(path)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("export")
    sym = _make_ckpt(d / "sym.ckpt", "symmetric", with_ema=True)
    tf = _make_ckpt(d / "tf.ckpt", "tf_same", with_ema=False)
    x = np.random.RandomState(7).randn(3, 3, SIZE, SIZE).astype(np.float32)
    refs = {
        "sym_ema": load_model(sym)(ms.Tensor(x)).asnumpy(),
        "sym_raw": load_model(sym, use_ema=False)(ms.Tensor(x)).asnumpy(),
        "tf": load_model(tf)(ms.Tensor(x)).asnumpy(),
    }
    assert refs["sym_ema"].std() > 0.1 and refs["tf"].std() > 0.1  # tolerances below are meaningful
    assert np.abs(refs["sym_ema"] - refs["sym_raw"]).max() > 0.5
    return {"dir": d, "sym": sym, "tf": tf, "x": x, "refs": refs}


def _mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


@pytest.mark.parametrize("which", ["sym", "tf"])
def test_onnx_matches_mindspore(setup, which):
    import onnxruntime as ort

    out = export_model(setup[which], "onnx", batch_size=2)  # format is case-insensitive
    assert out == os.path.splitext(setup[which])[0] + ".onnx"
    assert _mode(out) == 0o644
    sess = ort.InferenceSession(out, providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].name == "image" and sess.get_inputs()[0].shape[1:] == [3, SIZE, SIZE]
    ref = setup["refs"]["sym_ema" if which == "sym" else "tf"]
    got = sess.run(None, {"image": setup["x"]})[0]  # batch 3 through a batch-2 trace: dynamic axis
    assert got.shape == ref.shape
    assert np.abs(got - ref).max() < 1e-4
    meta = read_export_meta(out)
    assert meta["input_shape"] == [2, 3, SIZE, SIZE] and meta["dynamic_batch"] is True
    assert meta["class_names"] == NAMES and meta["eval"]["image_size"] == SIZE


def test_mindir_loads_and_matches(setup):
    out = str(setup["dir"] / "raw_b2.mindir")
    assert export_model(setup["sym"], "MINDIR", batch_size=2, output=out, use_ema=False) == out
    assert _mode(out) == 0o644
    assert not [p for p in os.listdir(setup["dir"]) if p.startswith(".")]  # no temporary files left
    cell = load_mindir(out)
    assert cell.input_shape == (2, 3, SIZE, SIZE)
    assert cell.export_meta["model"] == "mobilenet_v2_035" and cell.export_meta["class_names"] == NAMES
    x, ref = setup["x"], setup["refs"]["sym_raw"]  # --no_ema: the raw weights were exported
    got = cell(ms.Tensor(x[:2])).asnumpy()
    assert np.abs(got - ref[:2]).max() < 1e-5
    # documented: fixed-size batches for runtimes that honour the recorded shape
    assert np.abs(run_fixed_batch(cell, x, 2) - ref).max() < 1e-5


def test_mindir_default_size_and_ema(setup):
    out = export_model(setup["sym"], "MINDIR", output=str(setup["dir"] / "ema_default"))
    assert out.endswith("ema_default.mindir")
    cell = load_mindir(out)
    assert cell.input_shape == (1, 3, SIZE, SIZE)  # image size from the checkpoint's eval facts
    got = cell(ms.Tensor(setup["x"][:1])).asnumpy()
    assert np.abs(got - setup["refs"]["sym_ema"][:1]).max() < 1e-5


def test_bad_requests(setup, tmp_path):
    with pytest.raises(ExportError, match="unsupported export format 'TFLITE'"):
        export_model(setup["sym"], "TFLITE")
    with pytest.raises(ExportError, match="batch_size"):
        export_model(setup["sym"], "ONNX", batch_size=0)
    with pytest.raises(CheckpointError, match="does not exist"):
        export_model(str(tmp_path / "missing.ckpt"), "MINDIR")
    junk = tmp_path / "junk.ckpt"
    junk.write_bytes(b"not a checkpoint" * 10)
    with pytest.raises(CheckpointError, match="junk.ckpt"):
        export_model(str(junk), "MINDIR")
    with pytest.raises(ExportError, match="does not exist"):
        export_model(setup["sym"], "MINDIR", output=str(tmp_path / "no" / "dir" / "m.mindir"))
    with pytest.raises(ExportError, match="not a loadable MINDIR"):
        load_mindir(str(junk))


def test_cli_errors_are_one_line(setup, tmp_path, capsys):
    assert main(["--ckpt_path", str(tmp_path / "missing.ckpt"), "--format", "MINDIR"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error:") and "missing.ckpt" in err[0]

    proc = subprocess.run([sys.executable, "-m", "mindcv_mnv2.export", "--ckpt_path", setup["sym"],
                           "--format", "PT"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["error: unsupported export format 'PT'; choose one of MINDIR, ONNX"]
