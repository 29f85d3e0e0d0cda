"""predict: real photos and odd image modes, top-k structure, labels, batching, per-file errors."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

ms = pytest.importorskip("mindspore")
Image = pytest.importorskip("PIL.Image")

from mindcv_mnv2 import predict as P  # noqa: E402
from mindcv_mnv2.checkpoint import load_model, model_meta, save_checkpoint  # noqa: E402
from mindcv_mnv2.models import create_model  # noqa: E402

NAMES = ["alpha", "beta", "gamma", "delta"]
SIZE = 64


def _photo_dir():
    import importlib.util

    # find the wheel's data without importing it (its __init__ imports TensorFlow)
    spec = importlib.util.find_spec("ai_benchmark")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("ai-benchmark (100 real JPEG photos) is not installed")
    d = Path(list(spec.submodule_search_locations)[0]) / "data" / "classification"
    if not d.is_dir():
        pytest.skip(f"ai-benchmark photos not found at {d}")
    return d


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    photos = _photo_dir()
    root = tmp_path_factory.mktemp("predict")
    imgs = root / "imgs"
    (imgs / "sub").mkdir(parents=True)
    for i, name in enumerate(["0.jpg", "1.jpg", "2.jpg"]):
        shutil.copy(photos / name, (imgs / "sub" if i == 2 else imgs) / f"photo{i}.jpg")
    with Image.open(photos / "3.jpg") as src:
        src.convert("L").save(imgs / "gray.png")
        rgba = src.convert("RGBA")
        rgba.putalpha(128)
        rgba.save(imgs / "rgba.png")
        src.convert("CMYK").save(imgs / "cmyk.jpg")
    Image.fromarray((np.arange(80 * 60, dtype=np.uint16).reshape(60, 80) * 13)).save(imgs / "gray16.png")
    (imgs / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 definitely not a jpeg")
    (imgs / "notes.txt").write_text("not an image; ignored by the directory walk")

    meta = model_meta("mobilenet_v2_035", {"width_mult": 0.35, "num_classes": len(NAMES)},
                      class_names=NAMES, eval_facts={"image_size": SIZE})
    ms.set_seed(0)
    net = create_model("mobilenet_v2_035", num_classes=len(NAMES))
    # BatchNorm statistics taken from these very images (train-mode passes, momentum 0.9: 40 passes
    # leave 1.5% of the init), so eval-mode activations stay O(1) and the logits depend on the image on
    # any CPU; random statistics saturated the softmax to one value for every image on AVX-512.
    photos_in = [imgs / n for n in ("photo0.jpg", "photo1.jpg", "gray.png", "rgba.png", "cmyk.jpg")]
    batch = ms.Tensor(np.stack([P.preprocess(str(f), meta["eval"]) for f in photos_in]))
    net.set_train(True)
    for _ in range(40):
        net(batch)
    state = {p.name: p.asnumpy() for p in net.get_parameters()}
    state["classifier.1.weight"] = np.random.RandomState(0).normal(0, 0.1, state["classifier.1.weight"].shape
                                                                   ).astype(np.float32)
    ckpt = root / "model.ckpt"
    save_checkpoint(str(ckpt), state, meta)
    results = P.predict(str(ckpt), [str(imgs)], top_k=3, batch_size=3)
    return {"root": root, "imgs": imgs, "ckpt": str(ckpt), "meta": meta, "results": results}


def test_directory_walk_and_structure(env):
    res = env["results"]
    rel = [str(Path(r["path"]).relative_to(env["imgs"])) for r in res]
    assert rel == ["broken.jpg", "cmyk.jpg", "gray.png", "gray16.png", "photo0.jpg", "photo1.jpg",
                   "rgba.png", "sub/photo2.jpg"]  # sorted, recursive, .txt skipped
    assert res[0]["error"].startswith("unreadable image") and "top_k" not in res[0]  # JPEG header, no data
    for r in res[1:]:
        assert "error" not in r
        probs = [t["prob"] for t in r["top_k"]]
        assert len(probs) == 3 and probs == sorted(probs, reverse=True)
        assert 0 < sum(probs) <= 1 + 1e-6
        assert all(t["label"] == NAMES[t["index"]] for t in r["top_k"])
    top1 = [r["top_k"][0]["prob"] for r in res[1:]]
    assert max(top1) - min(top1) > 1e-3  # images are told apart (measured spread 7e-3, the same under SSE41)


@pytest.mark.numerics
@pytest.mark.parametrize("inception_crop", [False, True])
def test_same_tensor_as_validation(env, tmp_path, inception_crop):
    """predict's preprocessing is validation's: the same file gives the same tensor, bit for bit."""
    from mindcv_mnv2.config import load_config
    from mindcv_mnv2.distributed import DistInfo
    from mindcv_mnv2.engine.builders import build_val_loader

    folder = tmp_path / "val" / "only"
    folder.mkdir(parents=True)
    names = ["photo0.jpg", "photo1.jpg", "gray.png", "rgba.png"]
    for n in names:
        shutil.copy(env["imgs"] / n, folder / n)
    facts = {"image_size": 40, "crop_pct": 0.8, "interpolation": "bicubic", "mean": [120.0, 110.0, 100.0],
             "std": [60.0, 58.0, 57.0], "inception_crop": inception_crop}
    cfg = load_config(overrides=dict(data_dir=str(tmp_path), image_resize=40, crop_pct=0.8, interpolation="bicubic",
                                     mean=facts["mean"], std=facts["std"], inception_crop=inception_crop,
                                     batch_size=1, num_parallel_workers=1))
    loader = build_val_loader(cfg, DistInfo())
    val = [img[0] for img, _ in loader.dataset.create_tuple_iterator(num_epochs=1, output_numpy=True)]
    assert len(val) == len(names)
    for f, v in zip(sorted(names), val):
        np.testing.assert_array_equal(P.preprocess(str(folder / f), facts), v, err_msg=f)


def test_top1_is_argmax_of_model_logits(env):
    ok = [r for r in env["results"] if "error" not in r]
    batch = np.stack([P.preprocess(r["path"], env["meta"]["eval"]) for r in ok])
    assert batch.shape == (len(ok), 3, SIZE, SIZE) and batch.dtype == np.float32
    logits = load_model(env["ckpt"])(ms.Tensor(batch)).asnumpy()
    probs = P.softmax(logits)
    for r, lg, pr in zip(ok, logits, probs):
        assert r["top_k"][0]["index"] == int(np.argmax(lg))
        np.testing.assert_allclose([t["prob"] for t in r["top_k"]], np.sort(pr)[::-1][:3], atol=1e-5)


def test_batch_size_does_not_change_results(env):
    photos = [r["path"] for r in env["results"] if r["path"].endswith(".jpg") and "error" not in r]
    one = P.predict(env["ckpt"], photos, top_k=4, batch_size=1)
    four = P.predict(env["ckpt"], photos, top_k=4, batch_size=4)
    for a, b in zip(one, four):
        assert [t["index"] for t in a["top_k"]] == [t["index"] for t in b["top_k"]]
        np.testing.assert_allclose([t["prob"] for t in a["top_k"]], [t["prob"] for t in b["top_k"]], atol=1e-5)
        assert abs(sum(t["prob"] for t in a["top_k"]) - 1.0) < 1e-5  # top_k == num_classes


def test_image_modes_become_rgb_and_crop_is_centred():
    facts = {"image_size": 32, "crop_pct": 0.875, "interpolation": "bilinear",
             "mean": [0.0, 0.0, 0.0], "std": [1.0, 1.0, 1.0]}
    # 200x100: red | green (middle half) | blue; the centre crop of the resized image is all green
    arr = np.zeros((100, 200, 3), np.uint8)
    arr[:, :50, 0] = 255
    arr[:, 50:150, 1] = 255
    arr[:, 150:, 2] = 255
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        Image.fromarray(arr).save(f"{d}/stripes.png")
        out = P.preprocess(f"{d}/stripes.png", facts)
        assert out.shape == (3, 32, 32)
        np.testing.assert_array_equal(out[1], 255.0)
        assert out[0].max() == 0 and out[2].max() == 0
        Image.fromarray(np.full((40, 40), 77, np.uint8)).save(f"{d}/g.png")
        g = P.preprocess(f"{d}/g.png", facts)
        np.testing.assert_allclose(g, 77.0)  # grayscale replicated to 3 channels
        Image.fromarray(np.full((40, 40), 65535, np.uint16)).save(f"{d}/g16.png")
        np.testing.assert_allclose(P.preprocess(f"{d}/g16.png", facts), 255.0)  # 16-bit scaled, not clipped garbage


def test_label_files(env, tmp_path):
    idx = tmp_path / "idx.txt"
    idx.write_text("1 one\n0 zero\n3 three\n2 two\n")
    assert P.read_labels(str(idx), 4) == ["zero", "one", "two", "three"]
    wnid = tmp_path / "wnid.txt"
    wnid.write_text("n01440764 tench, Tinca tinca\nn01443537 goldfish\n")
    assert P.read_labels(str(wnid)) == ["tench, Tinca tinca", "goldfish"]
    plain = tmp_path / "plain.txt"
    plain.write_text("great white shark\n\nhammerhead\n")
    assert P.read_labels(str(plain)) == ["great white shark", "hammerhead"]
    js = tmp_path / "imagenet_class_index.json"
    js.write_text(json.dumps({"0": ["n01440764", "tench"], "1": ["n01443537", "goldfish"]}))
    assert P.read_labels(str(js)) == ["tench", "goldfish"]
    with pytest.raises(P.PredictError, match="has 2 classes but the model has 4"):
        P.read_labels(str(plain), 4)
    assert P.class_names_for({"class_names": None}, 3) == ["class_0", "class_1", "class_2"]

    photo = [r["path"] for r in env["results"] if r["path"].endswith("photo0.jpg")]
    res = P.predict(env["ckpt"], photo, top_k=2, labels=str(idx))
    assert all(t["label"] == ["zero", "one", "two", "three"][t["index"]] for t in res[0]["top_k"])
    with pytest.raises(P.PredictError, match="plain.txt has 2 classes"):
        P.predict(env["ckpt"], photo, labels=str(plain))


def test_cli_exit_codes_and_output(env, tmp_path, capsys):
    photo = str(env["imgs"] / "photo0.jpg")
    assert P.main(["--ckpt_path", env["ckpt"], photo, "--top_k", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out[0]["path"] == photo and [t["label"] for t in out[0]["top_k"]][0] in NAMES

    missing = str(tmp_path / "nope.jpg")
    notes = str(env["imgs"] / "notes.txt")
    assert P.main(["--ckpt_path", env["ckpt"], photo, str(env["imgs"] / "broken.jpg"), notes, missing]) == 1
    cap = capsys.readouterr()
    assert "broken.jpg: ERROR: unreadable image" in cap.out
    assert "notes.txt: ERROR: not an image file" in cap.out and "nope.jpg: ERROR: no such file" in cap.out
    assert photo + "\n  1. " in cap.out and "3 of 4 file(s) could not be classified" in cap.err

    empty = tmp_path / "empty"
    empty.mkdir()
    assert P.main(["--ckpt_path", env["ckpt"], str(empty)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: no images found")
    assert P.main(["--ckpt_path", env["ckpt"], missing, str(empty)]) == 2  # a typo named as such, not "no images"
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: no such file or directory: {missing}; no images found in"), err
    assert P.main(["--ckpt_path", str(tmp_path / "missing.ckpt"), photo]) == 2
    assert "missing.ckpt" in capsys.readouterr().err
