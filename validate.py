"""Score a checkpoint on the validation split, exactly (every image, summed across ranks).

    python validate.py -c configs/mobilenet_v2_0.75_ascend.yaml --data_dir /path/to/imagenet --ckpt_path ckpt/x.ckpt
"""
import sys

from mindcv_mnv2.cli import run


def _flags(parser):
    parser.add_argument("--output_json", help="also write the metrics to this JSON file")
    parser.add_argument("--no_ema", action="store_true", help="score the raw weights even if EMA weights are stored")


def _validate(cfg, extras):
    from mindcv_mnv2.engine.validation import validate

    return validate(cfg, use_ema=not extras.no_ema if hasattr(extras, "no_ema") else True,
                    output_json=getattr(extras, "output_json", None), explicit_keys=extras.explicit_keys)


if __name__ == "__main__":
    sys.exit(run(sys.argv[1:], "validate.py", _validate, extra=_flags))
