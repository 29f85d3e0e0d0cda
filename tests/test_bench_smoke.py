"""Smoke runs of the benchmark scripts in bench/: each still runs end to end at its --quick size.

No timing assertions (the machine is shared; BENCHMARKS.md holds the measurements). Each test
runs one script as a user would (``python bench/X.py --quick``) and checks what it wrote to
bench/results/X.quick.json. PyTorch and MindCV 0.3.0 live in the separate bench venv
(``bash bench/setup_venv.sh``); without it the scripts leave those contenders out and the
checks that need them skip with that reason.
"""
from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
BENCH_PY = BENCH / ".venv" / "bin" / "python"
HAVE_BENCH_VENV = BENCH_PY.exists()
NO_VENV = "bench/.venv (PyTorch, MindCV 0.3.0) not set up: run `bash bench/setup_venv.sh`"

sys.path.insert(0, str(BENCH))
pytestmark = pytest.mark.slow


def _photos_or_skip() -> None:
    import _common

    if _common.photo_source() is None:
        pytest.skip("ai-benchmark's photos are not installed (pip install ai-benchmark==0.1.2)")


def _quick(script: str, *extra: str, timeout: float = 240) -> dict:
    """Run bench/<script> --quick; its JSON result (fails with the script's stderr tail)."""
    proc = subprocess.run([sys.executable, str(BENCH / script), "--quick", *extra], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)
    assert proc.returncode == 0, f"{script} --quick exited {proc.returncode}:\n{proc.stderr[-3000:]}"
    assert "| " in proc.stdout, f"{script} printed no table:\n{proc.stdout[-1000:]}"
    name = script.removeprefix("bench_").removesuffix(".py")
    return json.loads((RESULTS / f"{name}.quick.json").read_text())


def _positive(x) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x) and x > 0


def test_common_helpers(tmp_path, monkeypatch):
    """Photo ImageFolder layout, paired ratios, table printing and JSON writing."""
    import _common

    _photos_or_skip()
    monkeypatch.setattr(_common, "CACHE", tmp_path / "cache")
    monkeypatch.setattr(_common, "RESULTS", tmp_path / "results")
    root = _common.photo_folder(per_class_train=3, per_class_val=2, classes=4)
    train = sorted(p.name for p in (root / "train").iterdir())
    assert train == ["class_00", "class_01", "class_02", "class_03"]
    assert all(len(list((root / "train" / c).iterdir())) == 3 for c in train)
    assert len(list((root / "val" / "class_03").iterdir())) == 2
    assert _common.photo_folder(per_class_train=3, per_class_val=2, classes=4) == root  # cached
    runs = {"a": [{"v": 2.0}, {"v": 9.0}], "b": [{"v": 1.0}, {"v": 3.0}]}
    assert _common.paired_ratios(runs, "a", "b", "v") == [2.0, 3.0]
    text = _common.print_table(["x", "y"], [("r", 1.23456)])
    assert text.splitlines()[-1] == "| r | 1.23 |"
    path = _common.write_result("t", {"v": 1}, quick=True)
    data = json.loads(path.read_text())
    assert path.name == "t.quick.json" and data["v"] == 1 and data["machine"]["cores"] >= 1
    assert len(data["machine"]["loadavg"]) == 3


def test_mindcv_recipe_overrides():
    """The MindCV driver reads the project's recipe and applies typed key=value overrides."""
    import mindcv_train

    cfg = mindcv_train.load_recipe(str(ROOT / "configs" / "mobilenet_v2_1.0_ascend.yaml"),
                                   ["batch_size=32", "scale=[0.5, 1.0]", "dataset_sink_mode=false", "model=x"])
    assert cfg["batch_size"] == 32 and cfg["scale"] == [0.5, 1.0] and cfg["dataset_sink_mode"] is False
    assert cfg["model"] == "x" and cfg["opt"] == "momentum"


@pytest.mark.skipif(not HAVE_BENCH_VENV, reason=NO_VENV)
def test_torch_baseline_has_the_project_shapes():
    """The PyTorch baseline has exactly the project's trainable parameter count at every width."""
    from mindcv_mnv2.summary import model_summary

    code = ("import sys, json; sys.path.insert(0, 'bench'); from torch_mnv2 import MobileNetV2, num_trainable; "
            "print(json.dumps({w: num_trainable(MobileNetV2(w, 1000)) for w in (0.35, 0.75, 1.0, 1.4)}))")
    out = subprocess.run([str(BENCH_PY), "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    counts = json.loads(out.stdout.strip().splitlines()[-1])
    for w, n in counts.items():
        assert n == model_summary(float(w), 224, 1000)["params_trainable"], w


def test_train_step_quick():
    """Project TrainStep (PyNative) and, with the bench venv, PyTorch eager: both train."""
    data = _quick("bench_train_step.py")
    summary = data["cases"][0]["summary"]
    assert _positive(summary["mindspore_pynative"]["img_per_s"])
    run = data["cases"][0]["runs"]["mindspore_pynative"][0]
    assert math.isfinite(run["loss_first"]) and math.isfinite(run["loss_last"])
    if HAVE_BENCH_VENV:
        assert _positive(summary["torch_nchw"]["img_per_s"]) and _positive(summary["torch_nchw"]["x_base"])


def test_train_quick():
    """train.py as a user runs it and (with the bench venv) MindCV 0.3.0's pipeline, same recipe and photos."""
    _photos_or_skip()
    data = _quick("bench_train.py")
    case = data["cases"][0]
    proj = case["runs"]["project_train.py"][0]
    assert proj["exit"] == 0 and _positive(proj["img_per_s"]) and proj["steps"] == 3
    assert _positive(proj["peak_rss_mib"])
    if HAVE_BENCH_VENV:
        mcv = case["runs"]["mindcv_0.3.0 sink off"][0]
        assert mcv["exit"] == 0 and mcv["steps"] == 3 and mcv["num_classes"] == 10 and _positive(mcv["img_per_s"])


def test_data_quick():
    """Project loader (1, 2 workers; from memory for the demo recipe) and the PIL+numpy baseline deliver images."""
    _photos_or_skip()
    data = _quick("bench_data.py")
    names = [c["case"] for c in data["cases"]]
    assert names[:2] == ["photos_train_224", "photos_val_224"]
    for case in data["cases"]:
        contenders = set(case["summary"])
        assert {"project_2_workers", "pil_numpy_1_thread"} <= contenders, case["case"]
        if case["case"] == "fashion_mnist_demo_train_32":
            assert "project_data_cache" in contenders
        else:
            assert "project_1_worker" in contenders, case["case"]
        for contender in contenders:
            assert _positive(case["summary"][contender]["img_per_s"]), (case["case"], contender)


def test_eval_quick():
    """EvalNet and onnxruntime run the exported network and agree on the logits."""
    data = _quick("bench_eval.py")
    case = data["cases"][0]
    assert _positive(case["mindspore_evalnet"]["img_per_s"]) and _positive(case["onnxruntime"]["img_per_s"])
    assert case["logit_scale"] > 0.1  # informative logits (the script calibrates BN and scales the head)
    # float32 through ~50 layers in two runtimes: measured ~1e-6 of the logit scale; 1e-4 is room, a
    # layer out of place is ~1
    assert case["max_abs_diff"] <= 1e-4 * case["logit_scale"]


def test_isa_ops_quick():
    """oneDNN's stem convolution and the cpu_isa probe, timed in child processes under two caps."""
    data = _quick("bench_isa_ops.py")
    assert data["caps"] == ["DEFAULT", "SSE41"]
    for cap in data["caps"]:
        summary = data["summary"][cap]
        assert _positive(summary["probe_ms"]) and _positive(summary["layers"]["0.35@32 stem 3->16"]), cap


def test_pooling_quick():
    """ReduceMean against the matrix-product pool, forward + backward: both timed, values equal to rounding."""
    data = _quick("bench_pooling.py")
    case = data["cases"][0]
    assert set(case["ms"]) == {"ReduceMean", "MatMul"} and all(_positive(v) for v in case["ms"].values())
    assert case["max_abs_diff"] < 1e-5  # means of 4 unit-normal values: float32 rounding is ~1e-7


def test_kernels_quick():
    """The folded network's C++ operators called without MindSpore: all 20, in order, each timed."""
    data = _quick("bench_kernels.py")
    case = data["cases"][0]
    ops = [o["op"] for o in case["ops"]]
    assert len(ops) == 20 and ops[0].startswith("stem") and ops[-1] == "pool + classifier", ops
    assert all(_positive(o["median_ms"]) for o in case["ops"]) and _positive(case["img_per_s"])


def test_kernels_missing_library_is_one_clear_error(tmp_path):
    """--lib naming no file: one argparse error naming it, exit 2, no traceback."""
    missing = tmp_path / "nowhere.so"
    proc = subprocess.run([sys.executable, str(BENCH / "bench_kernels.py"), "--quick", "--lib", str(missing)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and f"--lib {missing}: no such file" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_latency_quick():
    """Batch-1 latency row with TF-slim's MACs for 0.35 @ 96 (~11M)."""
    data = _quick("bench_latency.py")
    row = data["rows"][0]
    assert (row["width"], row["size"]) == (0.35, 96)
    assert 10 < row["macs_m"] < 12 and 1.5 < row["params_m"] < 1.8
    assert _positive(row["mindspore_ms"]) and _positive(row["onnxruntime_ms"])


def test_settings_quick():
    """The settings sweep runs the default setting in a child process."""
    data = _quick("bench_settings.py")
    assert _positive(data["summary"]["default (graph, O0)"]["img_per_s"])
    assert data["runs"]["default (graph, O0)"][0]["exit"] == 0


def test_distributed_quick():
    """mpirun -n 2 and one process both train the demo recipe; global throughput recorded for both."""
    import _common

    if _common.fashion_folder(quick=True) is None:
        pytest.skip("Fashion-MNIST IDX files are not installed (apt-get install dataset-fashion-mnist)")
    data = _quick("bench_distributed.py", timeout=400)
    for launch in ("1 process", "mpirun -n 2"):
        assert data["summary"][launch]["exits"] == [0] and _positive(data["summary"][launch]["img_per_s"]), launch


def test_cluster_start_crash_is_told_from_a_training_crash(tmp_path):
    """Only a SIGSEGV before the first logged step counts as MindSpore's cluster start-up crash (relaunched once)."""
    from bench_train import _crashed_at_cluster_start

    assert _crashed_at_cluster_start({"exit": 139}, tmp_path)  # no metrics.jsonl yet
    (tmp_path / "metrics.jsonl").write_text(json.dumps({"type": "config"}) + "\n")
    assert _crashed_at_cluster_start({"exit": -11}, tmp_path)
    assert not _crashed_at_cluster_start({"exit": 1}, tmp_path)  # a Python error is a real failure
    with open(tmp_path / "metrics.jsonl", "a") as fh:
        fh.write(json.dumps({"type": "step", "epoch": 1, "step": 1}) + "\n")
    assert not _crashed_at_cluster_start({"exit": 139}, tmp_path)  # crashed while training: reported, not retried
