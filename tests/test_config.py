"""The config schema: every recipe loads, precedence, typed CLI, and one clear error per mistake."""
import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from mindcv_mnv2.config import FIELDS, Config, ConfigError, load_config, parse_args
from mindcv_mnv2.models.registry import model_defaults

ROOT = Path(__file__).resolve().parents[1]
OUR_RECIPES = sorted(glob.glob(str(ROOT / "configs" / "*.yaml")))
MINDCV_RECIPES = sorted(glob.glob(str(ROOT / "tests" / "fixtures" / "mindcv_configs" / "*.yaml")))  # verbatim copies


def parse(argv):
    return parse_args(argv, model_defaults=model_defaults)[0]


def test_recipe_set_is_complete():
    names = {os.path.basename(p) for p in OUR_RECIPES}
    for w in ("0.75", "1.0", "1.4"):
        assert f"mobilenet_v2_{w}_ascend.yaml" in names and f"mobilenet_v2_{w}_gpu.yaml" in names
    assert "mobilenet_v2_1.0_slim_gpu.yaml" in names
    assert "mobilenet_v2_0.35_fashion_mnist_cpu.yaml" in names
    assert [os.path.basename(p) for p in MINDCV_RECIPES] == [f"mobilenet_v2_{w}_ascend.yaml" for w in ("0.75", "1.0", "1.4")]


@pytest.mark.parametrize("path", OUR_RECIPES, ids=os.path.basename)
def test_every_recipe_loads(path):
    cfg = parse(["-c", path])
    assert cfg.model.startswith("mobilenet_v2_")
    assert cfg.image_resize is not None and cfg.mean is not None  # resolved from the registry or the recipe
    assert yaml.safe_load(open(path))  # a mapping, with a header comment for people
    assert open(path).read().startswith("#")


@pytest.mark.parametrize("path", MINDCV_RECIPES, ids=os.path.basename)
def test_mindcv_recipes_load_unchanged_and_match_ours(path):
    cfg = parse(["-c", path])
    ours = parse(["-c", str(ROOT / "configs" / os.path.basename(path))])
    for key in ("model", "lr", "epoch_size", "warmup_epochs", "decay_epochs", "weight_decay", "batch_size",
                "label_smoothing", "loss_scale", "keep_checkpoint_max", "opt", "scheduler", "amp_level"):
        assert getattr(cfg, key) == getattr(ours, key), key


def test_mindcv_published_values():
    cfg = parse(["-c", str(ROOT / "configs" / "mobilenet_v2_0.75_ascend.yaml")])
    assert (cfg.lr, cfg.epoch_size, cfg.weight_decay, cfg.batch_size) == (0.3, 400, 3e-5, 256)
    assert cfg.distribute is True and cfg.device_target == "Ascend"


def test_defaults_match_mindcv():
    cfg = Config()
    assert (cfg.color_jitter, cfg.re_prob, cfg.mixup, cfg.cutmix, cfg.vflip) == (0.4, 0.0, 0.0, 0.0, 0.0)
    assert (cfg.ema, cfg.ema_decay, cfg.clip_grad, cfg.clip_value) == (False, 0.9999, False, 15.0)
    assert (cfg.loss_scale_type, cfg.drop_overflow_update, cfg.val_split, cfg.seed) == ("fixed", False, "val", 42)
    assert (cfg.ckpt_save_policy, cfg.log_interval, cfg.warmup_factor, cfg.weight_decay_filter) == \
        ("latest_k", 100, 0.0, "disable")


def test_every_field_has_a_comment():
    for name, f in FIELDS.items():
        assert len(f.metadata["help"]) > 10, name


def test_precedence_default_yaml_cli(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("lr: 0.5\nbatch_size: 64\nmodel: mobilenet_v2_100\n")
    cfg = parse(["-c", str(recipe), "--batch_size", "32"])
    assert cfg.lr == 0.5  # YAML over default
    assert cfg.batch_size == 32  # CLI over YAML
    assert cfg.epoch_size == 90  # default where nobody spoke


def test_typed_command_line():
    cfg = parse(["--distribute", "False", "--scale", "0.08", "1.0", "--mean", "123.675", "116.28", "103.53",
                 "--val_while_train", "--shuffle", "no", "--multi_step_decay_milestones", "10", "20.5"])
    assert cfg.distribute is False and cfg.val_while_train is True and cfg.shuffle is False
    assert cfg.scale == (0.08, 1.0) and cfg.mean == (123.675, 116.28, 103.53)
    assert cfg.multi_step_decay_milestones == (10.0, 20.5)
    for text, val in (("true", True), ("yes", True), ("1", True), ("false", False), ("no", False), ("0", False)):
        assert parse(["--drop_overflow_update", text]).drop_overflow_update is val


def test_yaml_scientific_notation_without_dot(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("weight_decay: 3e-5\n")  # YAML 1.1 reads this as a string
    assert parse(["-c", str(recipe)]).weight_decay == pytest.approx(3e-5)


def test_legacy_key_filter_bias_and_bn(tmp_path):
    """Old MindCV recipes train as they did there (see the reference: True decayed everything)."""
    recipe = tmp_path / "old.yaml"
    recipe.write_text("filter_bias_and_bn: True\n")
    assert parse(["-c", str(recipe)]).weight_decay_filter == "disable"
    recipe.write_text("filter_bias_and_bn: False\n")
    assert parse(["-c", str(recipe)]).weight_decay_filter == "auto"
    assert parse(["-c", str(recipe), "--weight_decay_filter", "auto"]).weight_decay_filter == "auto"


def test_resolution_name_sets_default_size():
    assert parse(["--model", "mobilenet_v2_100_192"]).image_resize == 192
    assert parse(["--model", "mobilenet_v2_100_192", "--image_resize", "224"]).image_resize == 224
    assert parse(["--model", "mobilenet_v2_035_224"]).image_resize == 224


@pytest.mark.parametrize("argv, key", [
    (["--lrr", "0.1"], "'lr'"),
    (["--amp_level", "O5"], "amp_level"),
    (["--mode", "3"], "mode"),
    (["--lr", "-0.1"], "lr"),
    (["--scale", "0.9", "0.1"], "scale"),
    (["--model", "mobilenet_v2_0755"], "mobilenet_v2_075"),
    (["--model", "resnet50"], "model"),
    (["--opt", "lion"], "opt"),
    (["--scheduler", "cosine"], "scheduler"),
    (["--batch_size", "abc"], "batch_size"),
    (["--batch_size", "0"], "batch_size"),
    (["--distribute", "maybe"], "distribute"),
    (["--scale", "0.1"], "scale"),
    (["--hflip", "1.5"], "hflip"),
    (["--min_lr", "1.0", "--lr", "0.1"], "min_lr"),
    (["--dataset_download", "True"], "dataset_download"),
    (["--image_resize", "16"], "image_resize"),
    (["-c", "no/such/recipe.yaml"], "no/such/recipe.yaml"),
])
def test_errors_name_the_key(argv, key):
    with pytest.raises(ConfigError) as info:
        parse(argv)
    assert key in str(info.value)


def test_unknown_yaml_key_suggests(tmp_path):
    recipe = tmp_path / "typo.yaml"
    recipe.write_text("warmup_epoch: 4\n")
    with pytest.raises(ConfigError, match="warmup_epoch.*did you mean 'warmup_epochs'"):
        parse(["-c", str(recipe)])


def test_wrong_type_in_yaml(tmp_path):
    recipe = tmp_path / "bad.yaml"
    recipe.write_text("epoch_size: ten\n")
    with pytest.raises(ConfigError, match="epoch_size: expected an integer"):
        parse(["-c", str(recipe)])
    recipe.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        parse(["-c", str(recipe)])
    recipe.write_text("data_cache: off\n")  # YAML 1.1: an unquoted off is the boolean False
    with pytest.raises(ConfigError, match="data_cache: expected a string.*quote it, e.g. data_cache: 'off'"):
        parse(["-c", str(recipe)])
    recipe.write_text("data_cache: 'auto'\n")
    assert parse(["-c", str(recipe)]).data_cache == "auto"


def test_config_is_immutable_and_replace_validates():
    cfg = Config()
    with pytest.raises(Exception):
        cfg.lr = 1.0  # frozen dataclass
    assert cfg.replace(lr=0.2).lr == 0.2
    with pytest.raises(ConfigError):
        cfg.replace(lrr=0.2)
    with pytest.raises(ConfigError):
        cfg.replace(lr=-1)


@pytest.mark.parametrize("path", OUR_RECIPES[:2] + MINDCV_RECIPES[:1], ids=os.path.basename)
def test_print_config_round_trips(path, tmp_path):
    out = subprocess.run([sys.executable, "train.py", "-c", path, "--print_config", "--lr", "0.123"],
                         cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    dumped = tmp_path / "resolved.yaml"
    dumped.write_text(out.stdout)
    assert load_config(str(dumped)) == parse(["-c", path, "--lr", "0.123"])


@pytest.mark.parametrize("prog", ["train.py", "validate.py"])
def test_entry_points_exit_2_with_one_line(prog):
    out = subprocess.run([sys.executable, prog, "--lerning_rate", "0.1"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 2
    assert "unknown argument '--lerning_rate'" in out.stderr
    assert "Traceback" not in out.stderr and len(out.stderr.strip().splitlines()) == 1
