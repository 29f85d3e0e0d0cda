"""The README's main job, end to end at smoke size: data, training, validation, a score."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ._data_fixtures import FASHION_MNIST_SOURCE

ROOT = Path(__file__).resolve().parents[1]


def test_demo_runs_end_to_end(tmp_path):
    if not os.path.isfile(os.path.join(FASHION_MNIST_SOURCE, "train-images-idx3-ubyte.gz")):
        pytest.skip(f"Fashion-MNIST IDX files not in {FASHION_MNIST_SOURCE} (apt-get install dataset-fashion-mnist)")
    run_dir = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "mindcv_mnv2.tools.demo", "--data_dir", str(tmp_path / "fm"),
                           "--run_dir", str(run_dir), "--limit_train", "256", "--limit_val", "100", "--epochs", "1"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = proc.stdout
    assert "[1/3]" in out and "[2/3]" in out and "[3/3]" in out
    assert re.search(r"epoch 1/1: loss [\d.]+ .* val: top-1 [\d.]+%", out)
    done = re.search(r"demo done in \d+ s: top-1 ([\d.]+)%, top-5 ([\d.]+)% on 100 Fashion-MNIST test images", out)
    assert done, out[-2000:]
    assert 0.0 <= float(done.group(1)) <= float(done.group(2)) <= 100.0
    assert (run_dir / "mobilenet_v2_035_best.ckpt").exists() and (run_dir / "validate.json").exists()
