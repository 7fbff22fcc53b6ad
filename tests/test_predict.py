"""`mlp-cli predict`: image files through a checkpoint, the same arithmetic as a direct forward."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mlp_cli import checkpoint
from mlp_cli.cli import main
from mlp_cli.nn.model import build

GRAY_ARCH = [
    {"type": "Conv2d", "in_channels": 1, "out_channels": 3, "kernel_size": 3, "stride": 1, "padding": 1},
    {"type": "ReLU"},
    {"type": "MaxPool2d", "kernel_size": 2, "stride": 2, "padding": 0, "ceil_mode": False},
    {"type": "Flatten"},
    {"type": "Linear", "in_features": 3 * 4 * 4, "out_features": 4},
]
GRAY_NORM = {"mean": [0.31], "std": [0.27]}
CLASSES = ["zero", "one", "two", "three"]


def make_checkpoint(path, arch, input_shape, normalization, classes, config=None, seed=0):
    model = build(arch, rng=np.random.default_rng(seed), weight_init="normal", init_std=0.6)
    path.write_bytes(checkpoint.model_bytes(model, architecture=arch, input_shape=input_shape,
                                            normalization=normalization, classes=classes,
                                            config=config or {"data": {"dataset": "imagefolder"}}, epoch=1))
    return path


def reference(ckpt_path, u8):
    """A direct forward of uint8 (N, H, W, C) normalized as the data pipeline does."""
    from mlp_cli.data import normalize

    ckpt = checkpoint.load(ckpt_path)
    x = normalize(u8, ckpt.normalization)
    logits = checkpoint.load_model(ckpt).forward(x).astype(np.float64)
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def save_png(path, array):
    Image.fromarray(array).save(path)
    return path


def run(*args):
    return CliRunner().invoke(main, ["predict", *map(str, args)])


@pytest.fixture
def gray(tmp_path):
    return make_checkpoint(tmp_path / "gray.safetensors", GRAY_ARCH, [1, 8, 8], GRAY_NORM, CLASSES)


def test_json_equals_a_direct_forward(tmp_path, gray):
    rng = np.random.default_rng(1)
    u8 = rng.integers(0, 256, (6, 8, 8), dtype=np.uint8)
    files = [save_png(tmp_path / f"img{i}.png", u8[i]) for i in range(len(u8))]
    result = run("--checkpoint", gray, *files, "--json", "--top-k", "2")
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout)
    probs = reference(gray, u8[..., None])
    assert [o["image"] for o in out] == [str(f) for f in files]
    assert len({o["index"] for o in out}) > 1, "the test net should not predict one class for everything"
    for o, p in zip(out, probs):
        assert o["index"] == int(p.argmax()) and o["class"] == CLASSES[o["index"]]
        assert [t["index"] for t in o["top_k"]] == list(np.argsort(-p)[:2])
        assert [t["class"] for t in o["top_k"]] == [CLASSES[i] for i in np.argsort(-p)[:2]]
        np.testing.assert_allclose([t["probability"] for t in o["top_k"]], np.sort(p)[::-1][:2], rtol=1e-6)
        assert set(o) == {"image", "class", "index", "top_k"}


def test_rgb_images_are_converted_and_resized_bilinear(tmp_path):
    arch = [{"type": "Flatten"}, {"type": "Linear", "in_features": 3 * 6 * 5, "out_features": 3}]
    ckpt = make_checkpoint(tmp_path / "rgb.safetensors", arch, [3, 6, 5],
                           {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.25, 0.3]}, ["a", "b", "c"])
    rng = np.random.default_rng(2)
    big = rng.integers(0, 256, (13, 11, 3), dtype=np.uint8)
    rgba = rng.integers(0, 256, (6, 5, 4), dtype=np.uint8)
    files = [save_png(tmp_path / "big.png", big), save_png(tmp_path / "rgba.png", rgba),
             save_png(tmp_path / "gray.png", big[:, :, 0])]
    expected = np.stack([
        np.asarray(Image.fromarray(big).resize((5, 6), Image.BILINEAR)),
        rgba[:, :, :3],
        np.asarray(Image.fromarray(big[:, :, 0]).convert("RGB").resize((5, 6), Image.BILINEAR)),
    ])
    result = run("--checkpoint", ckpt, *files, "--json", "--top-k", "3")
    assert result.exit_code == 0, result.output
    probs = reference(ckpt, expected)
    for o, p in zip(json.loads(result.stdout), probs):
        np.testing.assert_allclose([t["probability"] for t in sorted(o["top_k"], key=lambda t: t["index"])], p,
                                   rtol=1e-6)


def test_crop_runs_take_the_center_crop_of_the_training_size(tmp_path):
    """A run trained on 28x28 crops of 32x32 CIFAR images is evaluated on center crops: predict does the same."""
    arch = [{"type": "Flatten"}, {"type": "Linear", "in_features": 3 * 28 * 28, "out_features": 10}]
    config = {"data": {"dataset": "cifar10", "augment": {"crop": 28, "crop_padding": 0, "hflip": True}}}
    ckpt = make_checkpoint(tmp_path / "crop.safetensors", arch, [3, 28, 28],
                           {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}, [str(i) for i in range(10)], config)
    rng = np.random.default_rng(3)
    native = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
    photo = rng.integers(0, 256, (64, 48, 3), dtype=np.uint8)
    files = [save_png(tmp_path / "native.png", native), save_png(tmp_path / "photo.png", photo)]
    resized = np.asarray(Image.fromarray(photo).resize((32, 32), Image.BILINEAR))
    expected = np.stack([native[2:30, 2:30], resized[2:30, 2:30]])
    result = run("--checkpoint", ckpt, *files, "--json", "--top-k", "10")
    assert result.exit_code == 0, result.output
    for o, p in zip(json.loads(result.stdout), reference(ckpt, expected)):
        np.testing.assert_allclose([t["probability"] for t in sorted(o["top_k"], key=lambda t: t["index"])], p,
                                   rtol=1e-6)


def test_runs_with_test_hflip_average_each_image_with_its_mirror(tmp_path):
    config = {"data": {"dataset": "imagefolder", "augment": {"hflip": True, "test_hflip": True}}}
    ckpt = make_checkpoint(tmp_path / "tta.safetensors", GRAY_ARCH, [1, 8, 8], GRAY_NORM, CLASSES, config)
    u8 = np.random.default_rng(4).integers(0, 256, (5, 8, 8), dtype=np.uint8)
    files = [save_png(tmp_path / f"img{i}.png", u8[i]) for i in range(len(u8))]
    result = run("--checkpoint", ckpt, *files, "--json", "--top-k", "4")
    assert result.exit_code == 0, result.output
    # the mirror built independently, as uint8 images, and the two forward passes averaged here
    model, norm = checkpoint.load_model(checkpoint.load(ckpt)), GRAY_NORM
    from mlp_cli.data import normalize

    logits = (model.forward(normalize(u8[..., None], norm)) + model.forward(normalize(u8[:, :, ::-1, None].copy(), norm))) / 2
    e = np.exp(logits - logits.max(axis=1, keepdims=True))
    expected = e / e.sum(axis=1, keepdims=True)
    got = np.array([[t["probability"] for t in sorted(o["top_k"], key=lambda t: t["index"])]
                    for o in json.loads(result.stdout)])
    np.testing.assert_allclose(got, expected, rtol=1e-5)
    assert np.abs(got - reference(ckpt, u8[..., None])).max() > 1e-3  # not the plain forward


def test_text_output_one_line_per_image(tmp_path, gray):
    files = [save_png(tmp_path / f"d{i}.png", np.full((8, 8), 40 * i, np.uint8)) for i in range(3)]
    result = run("--checkpoint", gray, *files, "--top-k", "9")
    assert result.exit_code == 0, result.output
    lines = result.stdout.strip().splitlines()
    assert len(lines) == 3
    assert all(line.startswith(str(f)) and "top 4:" in line for line, f in zip(lines, files))  # k capped at 4 classes


def test_unreadable_images_are_named_and_the_others_still_predicted(tmp_path, gray, monkeypatch):
    """Issue 11: every error Pillow can raise is one line naming the file, and the good images of the
    same command are predicted (exit 1)."""
    from PIL import Image as PILImage

    rng = np.random.default_rng(2)
    good = [save_png(tmp_path / f"good{i}.png", rng.integers(0, 256, (8, 8), dtype=np.uint8)) for i in range(2)]
    text = tmp_path / "notes.png"
    text.write_text("not an image")
    truncated = tmp_path / "truncated.png"
    truncated.write_bytes(good[0].read_bytes()[:40])
    bomb = save_png(tmp_path / "bomb.png", np.zeros((40, 40), np.uint8))
    monkeypatch.setattr(PILImage, "MAX_IMAGE_PIXELS", 700)  # 1600 pixels > 2 x 700: DecompressionBombError
    bad = {text: "not an image Pillow can read", truncated: "truncated.png", bomb: "exceeds limit of 1400 pixels",
           tmp_path / "missing.png": "missing.png: no such file", tmp_path: "a folder, not an image file"}
    result = run("--checkpoint", gray, good[0], *bad, good[1], "--json")
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert [r["image"] for r in json.loads(result.stdout)] == [str(good[0]), str(good[1])]
    lines = result.stderr.splitlines()
    assert len(lines) == len(bad)
    for line, (path, reason) in zip(lines, bad.items()):
        assert line.startswith(f"error: cannot read the image {path}") and reason in line
    only_bad = run("--checkpoint", gray, text)
    assert only_bad.exit_code == 1 and only_bad.stdout == "" and str(text) in only_bad.stderr


def test_a_circles_checkpoint_is_a_usage_error(tmp_path):
    arch = [{"type": "Linear", "in_features": 2, "out_features": 2}]
    ckpt = make_checkpoint(tmp_path / "circles.safetensors", arch, [2], {"mean": [0, 0], "std": [1, 1]},
                           ["outer", "inner"], {"data": {"dataset": "circles"}})
    img = save_png(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    result = run("--checkpoint", ckpt, img)
    assert result.exit_code == 2
    assert "takes 2 features per example (circles data), not images" in result.stderr


def test_missing_checkpoint_exits_1(tmp_path):
    img = save_png(tmp_path / "x.png", np.zeros((4, 4), np.uint8))
    result = run("--checkpoint", tmp_path / "nope.safetensors", img)
    assert result.exit_code == 1 and "checkpoint not found" in result.stderr
