"""Score a checkpoint on the validation split, exactly (every image, summed across ranks).

    python validate.py -c configs/mobilenet_v2_0.75_ascend.yaml --data_dir /path/to/imagenet --ckpt_path ckpt/x.ckpt
"""
import sys

from mindcv_mnv2.cli import validate_main

if __name__ == "__main__":
    sys.exit(validate_main())
