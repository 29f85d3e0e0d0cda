"""Train MobileNetV2 from a MindCV-style YAML recipe.

    python train.py --config configs/mobilenet_v2_0.75_ascend.yaml --data_dir /path/to/imagenet
    mpirun -n 8 python train.py --config configs/mobilenet_v2_0.75_ascend.yaml --data_dir /path/to/imagenet
"""
import sys

from mindcv_mnv2.cli import run


def _train(cfg, extras):
    from mindcv_mnv2.engine.trainer import train

    return train(cfg)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:], "train.py", _train))
