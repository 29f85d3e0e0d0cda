"""Exported files are first-class: ONNX scored through onnxruntime like a checkpoint, int8 ONNX,
the round trip for every registered width, and one clear error per bad request."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
pytest.importorskip("onnxruntime")

from mindcv_mnv2 import predict as P  # noqa: E402
from mindcv_mnv2.checkpoint import load_model, model_meta, save_checkpoint  # noqa: E402
from mindcv_mnv2.constants import WIDTHS  # noqa: E402
from mindcv_mnv2.export import ExportError, export_model, load_onnx, read_export_meta  # noqa: E402
from mindcv_mnv2.models import create_model  # noqa: E402

from ._data_fixtures import TINY_CLASSES, tiny_imagefolder  # noqa: F401  (fixture)
from ._nets import make_input_sensitive

SIZE = 48
EVAL = {"image_size": SIZE, "crop_pct": 0.9, "interpolation": "bicubic", "mean": [120.0, 115.0, 100.0],
        "std": [60.0, 58.0, 57.0]}
# Two float32 runtimes (MindSpore, onnxruntime) with their own kernels through ~50 layers: measured
# differences ~1e-6 of the logit scale; 1e-4 leaves room, a wrong layer is >= 1e-2 of it.
RTOL_OF_SCALE = 1e-4


def _photo_batch(folder, n=4):
    files = sorted(Path(folder).rglob("*.jpg"))[:n]
    return np.stack([P.preprocess(str(f), EVAL) for f in files])


def _checkpoint(path, width, folder, **kw):
    """A checkpoint of a registered width whose outputs depend on the input (tests/_nets.py)."""
    ms.set_seed(0)
    name = f"mobilenet_v2_{next(t for t, w in WIDTHS.items() if w == width)}"
    net = make_input_sensitive(create_model(name, num_classes=len(TINY_CLASSES), drop_rate=0.0, **kw),
                               _photo_batch(folder, 8))
    meta = model_meta(name, {"num_classes": len(TINY_CLASSES), **kw}, class_names=list(TINY_CLASSES),
                      eval_facts=EVAL)
    save_checkpoint(str(path), {p.name: p for p in net.get_parameters()}, meta)
    return str(path)


@pytest.fixture(scope="module")
def model035(tiny_imagefolder, tmp_path_factory):  # noqa: F811
    d = tmp_path_factory.mktemp("deploy")
    ckpt = _checkpoint(d / "m.ckpt", 0.35, tiny_imagefolder / "train")
    onnx_path = export_model(ckpt, "ONNX", output=str(d / "m.onnx"))
    return {"dir": d, "ckpt": ckpt, "onnx": onnx_path, "data": tiny_imagefolder}


@pytest.mark.slow
@pytest.mark.numerics
# The export path does not depend on the width (each width's shapes and parameter counts are
# tests/test_models.py's): the smallest (with output_stride 16), the default and the largest, whose
# last layer is widened (1280 x 1.4), at ~20 s each.
@pytest.mark.parametrize("width", [0.35, 1.0, 1.4])
def test_round_trip_of_three_widths(width, tiny_imagefolder, tmp_path):  # noqa: F811
    """MINDIR and ONNX give the checkpoint's logits; the metadata that scores them survives."""
    assert width in WIDTHS.values()
    from mindcv_mnv2.export import load_mindir

    kw = {"output_stride": 16} if width == 0.35 else {}
    ckpt = _checkpoint(tmp_path / "m.ckpt", width, tiny_imagefolder / "train", **kw)
    x = _photo_batch(tiny_imagefolder / "val", 3)
    ref = load_model(ckpt)(ms.Tensor(x)).asnumpy()
    assert np.abs(ref[0] - ref[1]).max() > 0.05 * np.abs(ref).max()  # the inputs are told apart
    for fmt in ("ONNX", "MINDIR"):
        out = export_model(ckpt, fmt, batch_size=3, output=str(tmp_path / f"m.{fmt.lower()}"))
        got = load_onnx(out)(x) if fmt == "ONNX" else load_mindir(out)(ms.Tensor(x)).asnumpy()
        assert np.abs(got - ref).max() <= RTOL_OF_SCALE * np.abs(ref).max(), fmt
        meta = read_export_meta(out)
        assert meta["class_names"] == list(TINY_CLASSES) and meta["num_classes"] == len(TINY_CLASSES)
        assert {k: meta["eval"][k] for k in EVAL} == EVAL
        assert meta["model_kwargs"]["width_mult"] == width and meta["model_kwargs"]["padding"] == "symmetric"
        assert meta["model_kwargs"]["output_stride"] == kw.get("output_stride", 32)


@pytest.mark.numerics
def test_validate_scores_onnx_like_the_checkpoint(model035, tmp_path):
    """Same preprocessing (from the file), same exact counts, same JSON fields; and through the CLI."""
    from mindcv_mnv2.cli import validate_main

    out = {}
    for key in ("ckpt", "onnx"):
        path = tmp_path / f"{key}.json"
        status = validate_main(["--data_dir", str(model035["data"]), "--ckpt_path", model035[key], "--device_target",
                                "CPU", "--batch_size", "4", "--output_json", str(path)], "validate.py")
        assert status == 0
        out[key] = json.loads(path.read_text())
    ck, ox = out["ckpt"], out["onnx"]
    assert ox["num_images"] == ck["num_images"] == 15
    assert 0 < ck["correct_top1"] < 15 or ck["loss"] > 0.5  # not one constant prediction
    assert ox["correct_top1"] == ck["correct_top1"] and ox["correct_top5"] == ck["correct_top5"]
    assert ox["loss"] == pytest.approx(ck["loss"], rel=1e-4)  # float32 runtimes, as RTOL_OF_SCALE
    assert ox["preprocessing"] == ck["preprocessing"] and ox["preprocessing"]["interpolation"] == "bicubic"
    assert sorted(ox) == sorted(ck)


@pytest.mark.numerics
def test_predict_takes_onnx(model035):
    photos = [str(p) for p in sorted((model035["data"] / "val").rglob("*.jpg"))[:3]]
    a = P.predict(model035["ckpt"], photos, top_k=3)
    b = P.predict(model035["onnx"], photos, top_k=3)
    for x, y in zip(a, b):
        assert [t["label"] for t in x["top_k"]] == [t["label"] for t in y["top_k"]]
        np.testing.assert_allclose([t["prob"] for t in x["top_k"]], [t["prob"] for t in y["top_k"]], atol=1e-4)


def test_onnx_without_metadata_needs_the_preprocessing(model035, tmp_path, capsys):
    import onnx

    from mindcv_mnv2.cli import validate_main

    bare = tmp_path / "bare.onnx"
    m = onnx.load(model035["onnx"])
    del m.metadata_props[:]
    onnx.save(m, str(bare))
    base = ["--data_dir", str(model035["data"]), "--ckpt_path", str(bare), "--device_target", "CPU"]
    assert validate_main(base, "validate.py") == 2
    err = capsys.readouterr().err
    assert "carries no mindcv_mnv2 preprocessing metadata" in err and "--image_resize" in err
    assert len(err.strip().splitlines()) == 1
    given = ["--image_resize", str(SIZE), "--mean", *map(str, EVAL["mean"]), "--std", *map(str, EVAL["std"]),
             "--crop_pct", "0.9", "--interpolation", "bicubic"]
    assert validate_main(base + given, "validate.py") == 0  # scored once the user says how
    with pytest.raises(P.PredictError, match="no mindcv_mnv2 preprocessing metadata"):
        P.predict(str(bare), [str(next((model035["data"] / "val").rglob("*.jpg")))])


def test_bad_deploy_requests_are_one_line(model035, tmp_path, capsys):
    from mindcv_mnv2.cli import validate_main
    from mindcv_mnv2.export import main as export_main

    broken = tmp_path / "broken.onnx"
    broken.write_bytes(b"\x08\x07 not a protobuf model")
    cases = [
        (validate_main, ["--data_dir", str(model035["data"]), "--ckpt_path", str(broken)], "broken.onnx"),
        (validate_main, ["--data_dir", str(model035["data"]), "--ckpt_path", model035["onnx"], "--image_resize", "64"],
         "takes 48 px images"),
        (export_main, ["--ckpt_path", model035["ckpt"], "--format", "MINDIR", "--int8", "--calibration_dir",
                       str(model035["data"])], "--int8 writes ONNX"),
        (export_main, ["--ckpt_path", model035["ckpt"], "--format", "ONNX", "--int8", "--calibration_dir",
                       str(tmp_path)], "holds no image files"),
        (export_main, ["--ckpt_path", model035["ckpt"], "--format", "ONNX", "--int8"], "needs --calibration_dir"),
    ]
    for fn, argv, needle in cases:
        status = fn(argv, "validate.py") if fn is validate_main else fn(argv)
        err = capsys.readouterr().err
        assert status == 2 and needle in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["broken.onnx"]  # nothing half-written


@pytest.mark.slow
def test_int8_onnx_is_calibrated_scored_and_described(model035, tmp_path):
    from mindcv_mnv2.engine.validation import validate
    from mindcv_mnv2.config import load_config

    out = export_model(model035["ckpt"], "ONNX", output=str(tmp_path / "m_int8.onnx"), int8=True,
                       calibration_dir=str(model035["data"] / "train"), calibration_images=12)
    meta = read_export_meta(out)
    assert meta["int8"]["format"] == "QDQ" and meta["int8"]["calibration_images"] == 12
    assert meta["class_names"] == list(TINY_CLASSES)
    import onnx

    ops = {n.op_type for n in onnx.load(out).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    x = _photo_batch(model035["data"] / "val", 4)
    fp32, int8 = load_onnx(model035["onnx"])(x), load_onnx(out)(x)
    # int8 approximates fp32 (its accuracy cost on real data: BENCHMARKS.md). On this untrained random
    # network the approximation is coarse, but the logits still move together; wrong scales or zero
    # points would leave no correlation.
    corr = np.corrcoef(int8.ravel(), fp32.ravel())[0, 1]
    assert corr > 0.8  # measured 0.95
    cfg = load_config(overrides={"data_dir": str(model035["data"]), "ckpt_path": out, "device_target": "CPU",
                                 "batch_size": 5})
    m = validate(cfg)
    assert m["num_images"] == 15 and 0 <= m["correct_top1"] <= 15
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m_int8.onnx"]  # no temporary files left
