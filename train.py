"""Train MobileNetV2 from a MindCV-style YAML recipe.

    python train.py --config configs/mobilenet_v2_0.75_ascend.yaml --data_dir /path/to/imagenet
    mpirun -n 8 python train.py --config configs/mobilenet_v2_0.75_ascend.yaml --data_dir /path/to/imagenet
"""
import sys

from mindcv_mnv2.cli import train_main

if __name__ == "__main__":
    sys.exit(train_main())
