"""Training here equals MindCV's, step by step: one init, one recipe, per-step loss differences.

    .venv/bin/python bench/bench_vs_mindcv_steps.py            # 320 Fashion-MNIST images, 40 steps
    .venv/bin/python bench/bench_vs_mindcv_steps.py --quick    # 64 images, 8 steps

Both sides start from the same checkpoint, made by MindCV 0.3.0's own network (bench/.venv), and
train one epoch of the same recipe on the same images in the same order: no augmentation, no
shuffle, dropout off, momentum, cosine decay, label smoothing 0.1, weight_decay_filter disable
(every parameter decayed, on both sides). MindCV runs its own factories (bench/mindcv_train.py);
this project runs train.py's engine, once with ``depthwise_kernel: native`` (MindSpore's conv, as
MindCV) and once with the C++ kernel (``aot``). The table shows, per side, the largest per-step
loss difference from MindCV and the largest final-tensor difference: with the native kernel both
are 0 (bit for bit); the C++ kernel's are rounding (it sums the 9 taps in another order).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import BENCH, BENCH_PY, CACHE, PROJECT_PY, ROOT, have_bench_venv, print_table, run_child, write_result  # noqa: E402

MEAN, STD = 72.94, 90.02  # Fashion-MNIST grey levels on 0-255
RECIPE = {"image_resize": 32, "scale": [1.0, 1.0], "ratio": [1.0, 1.0], "hflip": 0.0, "color_jitter": 0.0,
          "shuffle": False, "mean": [MEAN] * 3, "std": [STD] * 3, "lr": 0.01, "warmup_epochs": 0, "min_lr": 0.0,
          "decay_epochs": 1, "epoch_size": 1, "scheduler": "cosine_decay", "opt": "momentum", "momentum": 0.9,
          "weight_decay": 1e-4, "weight_decay_filter": "disable", "label_smoothing": 0.1, "loss": "CE",
          "loss_scale": 1.0, "num_classes": 10, "batch_size": 8, "num_parallel_workers": 1, "drop_rate": 0,
          "seed": 42, "mode": 0, "model": "mobilenet_v2_035", "drop_remainder": True, "amp_level": "O0"}

_MAKE_INIT = """
import sys, mindspore as ms
from mindcv.models import create_model
from mindcv.utils import set_seed
ms.set_device("CPU"); set_seed(42)
net = create_model("mobilenet_v2_035_224", num_classes=10, pretrained=False)
ms.save_checkpoint(net, sys.argv[1])
"""

_PROJECT = """
import json, sys
import numpy as np
import mindcv_mnv2
from mindcv_mnv2.config import load_config
from mindcv_mnv2.engine.trainer import Trainer
from mindcv_mnv2.models.registry import model_defaults
over = json.loads(sys.argv[1])
save = over.pop("save_final")
trainer = Trainer(load_config(overrides=over, model_defaults=model_defaults))
trainer.fit()
np.savez(save, **{p.name: p.asnumpy() for p in trainer.net.get_parameters()})
steps = [json.loads(l) for l in open(over["ckpt_save_dir"] + "/metrics.jsonl") if '"type": "step"' in l]
print(json.dumps({"losses": [r["loss"] for r in steps], "lr": [float(v) for v in trainer.lr]}))
"""


def _data(n: int) -> Path:
    sys.path.insert(0, str(ROOT))
    from mindcv_mnv2.tools.prepare_fashion_mnist import prepare_fashion_mnist

    out = CACHE / f"fashion_mnist_steps_{n}"
    prepare_fashion_mnist(str(out), limit_train=n, limit_val=10, workers=1)
    return out


def _diff(a: dict, b: dict) -> float:
    assert sorted(a) == sorted(b), (sorted(set(a) ^ set(b)))[:5]
    return max(float(np.abs(a[k].astype(np.float64) - b[k]).max()) for k in a)


def main(argv=None) -> int:
    """Run MindCV and the project from one init; print per-step differences; write the JSON."""
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="64 images, 8 steps")
    args = ap.parse_args(argv)
    if not have_bench_venv():
        print("needs bench/.venv with MindCV 0.3.0: bash bench/setup_venv.sh", file=sys.stderr)
        return 1
    n = 64 if args.quick else 320
    data = _data(n)
    with tempfile.TemporaryDirectory(prefix="mnv2_steps_") as tmp:
        init = f"{tmp}/mindcv_init.ckpt"
        made = run_child([BENCH_PY, "-c", _MAKE_INIT, init], timeout=300)
        if made["exit"]:
            print(f"making the MindCV init failed: {made['stdout_tail']}", file=sys.stderr)
            return 1
        mindcv_over = [f"{k}={json.dumps(v)}" for k, v in {**RECIPE, "data_dir": str(data), "dataset": "imagenet",
                                                            "dataset_sink_mode": False, "init_ckpt": init,
                                                            "save_final": f"{tmp}/mindcv.npz"}.items()]
        mcv = run_child([BENCH_PY, BENCH / "mindcv_train.py", "-c", ROOT / "configs" / "mobilenet_v2_1.0_ascend.yaml",
                         *mindcv_over], timeout=900)
        if mcv["exit"] or not mcv["result"]:
            print(f"MindCV run failed: {mcv['stdout_tail']}", file=sys.stderr)
            return 1
        ref = dict(np.load(f"{tmp}/mindcv.npz"))
        rows, results = [], {"mindcv": mcv["result"]}
        for kernel in ("native", "aot"):
            over = {**RECIPE, "data_dir": str(data), "device_target": "CPU", "ckpt_path": init, "log_interval": 1,
                    "val_while_train": False, "depthwise_kernel": kernel, "ckpt_save_dir": f"{tmp}/run_{kernel}",
                    "save_final": f"{tmp}/{kernel}.npz", "keep_checkpoint_max": 1}
            res = run_child([PROJECT_PY, "-c", _PROJECT, json.dumps(over)], timeout=900)
            if res["exit"] or not res["result"]:
                print(f"project run ({kernel}) failed: {res['stdout_tail']}", file=sys.stderr)
                return 1
            ours = res["result"]
            dl = np.abs(np.asarray(ours["losses"]) - np.asarray(mcv["result"]["losses"]))
            lr_equal = np.array_equal(np.float32(ours["lr"]), np.float32(mcv["result"]["lr"]))
            tensors = _diff(dict(np.load(f"{tmp}/{kernel}.npz")), ref)
            results[kernel] = {"losses": ours["losses"], "loss_diff": dl.tolist(), "max_loss_diff": float(dl.max()),
                               "steps_bitwise_equal": int((dl == 0).sum()), "max_tensor_diff": tensors,
                               "lr_array_equal": bool(lr_equal)}
            rows.append((f"project, depthwise_kernel {kernel}", len(dl), int((dl == 0).sum()), f"{dl[0]:.3g}",
                         f"{dl.max():.3g}", f"{tensors:.3g}", "yes" if lr_equal else "no"))
    print_table(["side", "steps", "losses bitwise equal", "step-1 |loss - MindCV|", "max |loss - MindCV|",
                 "max |tensor - MindCV|", "LR array equal"], rows,
                title=f"Training vs MindCV 0.3.0, one MindCV-made init, {n} Fashion-MNIST images, batch 8")
    first = mcv["result"]["losses"]
    print(f"MindCV losses: first {first[0]:.6f}, last {first[-1]:.6f}")
    write_result("vs_mindcv_steps", {"images": n, "recipe": RECIPE, "results": results}, quick=args.quick)
    return 0


if __name__ == "__main__":
    sys.exit(main())
