"""Pictures of a run: which files draw_run writes, and that they show the recorded numbers."""

from __future__ import annotations

import subprocess
import sys
import types

import numpy as np
import pytest
from PIL import Image

from mlp_cli import pictures
from mlp_cli.nn.model import build

METRICS = [  # as train.fit keeps them: strings, formatted as in metrics.csv
    {"epoch": 1, "train_loss": "0.693100", "train_acc": "0.512000", "val_loss": "0.690000", "val_acc": "0.550000",
     "lr": "0.1", "seconds": "0.100"},
    {"epoch": 2, "train_loss": "0.500000", "train_acc": "0.801000", "val_loss": "0.450000", "val_acc": "0.850000",
     "lr": "0.05", "seconds": "0.100"},
    {"epoch": 3, "train_loss": "0.400000", "train_acc": "0.850123", "val_loss": "0.470000", "val_acc": "0.845000",
     "lr": "0.025", "seconds": "0.100"},
]


@pytest.fixture
def figures(monkeypatch):
    """Capture each figure just before it is saved (still drawn on), keyed by file name."""
    seen = {}
    real_save = pictures.save_figure

    def spy(fig, path):
        seen[path.name] = {
            "axes": [(ax.get_title(), ax.get_xlabel(), ax.get_ylabel(),
                      {line.get_label(): (list(line.get_xdata()), list(line.get_ydata())) for line in ax.lines},
                      [im.get_array() for im in ax.images], [t.get_text() for t in ax.texts])
                     for ax in fig.axes],
            "suptitle": fig._suptitle.get_text() if fig._suptitle else "",
        }
        return real_save(fig, path)

    monkeypatch.setattr(pictures, "save_figure", spy)
    return seen


def assert_png(path, min_size=(300, 100)):
    with Image.open(path) as img:
        assert img.format == "PNG" and img.size[0] >= min_size[0] and img.size[1] >= min_size[1]


def mlp(seed=0):
    arch = [{"type": "Linear", "in_features": 2, "out_features": 8}, {"type": "Tanh"},
            {"type": "Linear", "in_features": 8, "out_features": 2}]
    return build(arch, rng=np.random.default_rng(seed), weight_init="normal", init_std=1.0)


def lenet_like(seed=0):
    arch = [{"type": "Conv2d", "in_channels": 1, "out_channels": 4, "kernel_size": 3, "stride": 1, "padding": 1},
            {"type": "Tanh"}, {"type": "MaxPool2d", "kernel_size": 2, "stride": 2}, {"type": "Flatten"},
            {"type": "Linear", "in_features": 4 * 4 * 4, "out_features": 3}]
    return build(arch, rng=np.random.default_rng(seed))


def split(x, y, classes):
    return types.SimpleNamespace(x=x, y=y, classes=classes)


def test_two_d_run_gets_curves_confusion_and_boundary(tmp_path, figures):
    rng = np.random.default_rng(0)
    train = split(rng.standard_normal((40, 2)).astype(np.float32), rng.integers(0, 2, 40), ["outer", "inner"])
    test = split(rng.standard_normal((30, 2)).astype(np.float32), rng.integers(0, 2, 30), ["outer", "inner"])
    run = tmp_path / "circles_mlp-1"
    run.mkdir()
    written = pictures.draw_run(run, metrics=METRICS, classes=["outer", "inner"], confusion=[[12, 3], [5, 10]],
                                model=mlp(), test_split=test, test_logits=np.zeros((30, 2)), train_split=train,
                                on_error="raise")
    assert [p.name for p in written] == ["curves.png", "confusion.png", "boundary.png"]
    for p in written:
        assert_png(p)
    assert sorted(f.name for f in run.iterdir()) == ["boundary.png", "confusion.png", "curves.png"]  # no temp files
    boundary = figures["boundary.png"]["axes"][0]
    assert boundary[0].startswith("circles_mlp-1: decision regions") and "test accuracy" in boundary[0]
    assert boundary[1] and boundary[2]  # axis labels


def test_curves_show_exactly_the_csv_numbers(tmp_path, figures):
    pictures.draw_curves(METRICS, tmp_path / "curves.png", title="run-x")
    loss, acc, lr = figures["curves.png"]["axes"][:3]
    assert figures["curves.png"]["suptitle"].startswith("run-x: training curves")
    assert acc[3]["validation"] == ([1, 2, 3], [0.55, 0.85, 0.845])
    assert acc[3]["train"][1] == [0.512, 0.801, 0.850123]
    assert loss[3]["validation"][1] == [0.69, 0.45, 0.47]
    assert lr[3][next(iter(lr[3]))][1] == [0.1, 0.05, 0.025]
    best = [k for k in acc[3] if k.startswith("best validation")]
    assert best == ["best validation 85.00% (epoch 2)"] and acc[3][best[0]] == ([2], [0.85])
    assert (loss[1], loss[2]) == ("epoch", "cross-entropy loss") and (acc[1], acc[2]) == ("epoch", "accuracy")
    assert lr[0] == "learning rate"


def test_curves_tolerate_missing_validation(tmp_path):
    rows = [{**r, "val_loss": "", "val_acc": ""} for r in METRICS]
    assert_png(pictures.draw_curves(rows, tmp_path / "c.png"))


def test_confusion_is_row_normalized_with_the_accuracy_in_the_title(tmp_path, figures):
    confusion = [[8, 2, 0], [1, 9, 0], [0, 5, 15]]
    pictures.draw_confusion(confusion, ["cat", "dog", "frog"], tmp_path / "confusion.png", title="r")
    title, xlabel, ylabel, _, images, texts = figures["confusion.png"]["axes"][0]
    assert "test accuracy 80.00% (32 of 40)" in title
    assert (xlabel, ylabel) == ("predicted class", "true class")
    np.testing.assert_allclose(images[0], [[0.8, 0.2, 0], [0.1, 0.9, 0], [0, 0.25, 0.75]])
    assert "75.0%\n(15)" in texts


def test_image_run_gets_filters_and_errors(tmp_path, figures):
    rng = np.random.default_rng(1)
    classes = ["zero", "one", "two"]
    images = rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8)
    labels = rng.integers(0, 3, 20)
    logits = rng.standard_normal((20, 3)) * 3
    test = split(images, labels, classes)
    run = tmp_path / "mnist_lenet5-1"
    run.mkdir()
    written = pictures.draw_run(run, metrics=METRICS, classes=classes, confusion=np.eye(3, dtype=int).tolist(),
                                model=lenet_like(), test_split=test, test_logits=logits, on_error="raise")
    assert [p.name for p in written] == ["curves.png", "confusion.png", "filters.png", "errors.png"]
    for p in written:
        assert_png(p)
    # errors.png: the misclassified images with the highest loss, in order, titled true / pred (p)
    probs = np.exp(logits - logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    pred = probs.argmax(1)
    loss = -np.log(probs[np.arange(20), labels])
    wrong = np.flatnonzero(pred != labels)
    worst = wrong[np.argsort(-loss[wrong], kind="stable")][:24]
    axes = figures["errors.png"]["axes"]
    titles = [a[0] for a in axes if a[0]]
    assert titles == [f"true {classes[labels[i]]} / pred {classes[pred[i]]} (p={probs[i, pred[i]]:.2f})" for i in worst]
    np.testing.assert_array_equal(axes[0][4][0], images[worst[0], :, :, 0])  # grayscale, squeezed
    # filters.png: one panel per filter, each scaled to [0, 1]
    panels = [a for a in figures["filters.png"]["axes"] if a[4]]
    assert len(panels) == 4
    for _, _, _, _, ims, _ in panels:
        assert ims[0].shape == (3, 3) and ims[0].min() == 0 and ims[0].max() == 1


def test_rgb_filters_and_images(tmp_path, figures):
    w = np.random.default_rng(2).standard_normal((10, 3, 5, 5))
    pictures.draw_filters(w, tmp_path / "filters.png")
    shapes = [a[4][0].shape for a in figures["filters.png"]["axes"] if a[4]]
    assert shapes == [(5, 5, 3)] * 10
    images = np.random.default_rng(3).integers(0, 256, (5, 6, 6, 3), dtype=np.uint8)
    pictures.draw_errors(images, np.zeros(5, int), np.tile([0.0, 3.0], (5, 1)), ["automobile", "airplane"],
                         tmp_path / "errors.png")
    titles = [a[0] for a in figures["errors.png"]["axes"] if a[0]]
    assert len(titles) == 5 and titles[0] == "true automobile\npred airplane (p=0.95)"  # long names: two lines


def test_no_errors_still_writes_a_picture(tmp_path):
    images = np.zeros((4, 5, 5, 1), np.uint8)
    path = pictures.draw_errors(images, np.arange(4) % 2, np.eye(2)[np.arange(4) % 2] * 5, ["a", "b"],
                                tmp_path / "errors.png")
    assert_png(path, (200, 50))


def test_one_failing_picture_does_not_stop_the_others(tmp_path):
    with pytest.warns(RuntimeWarning, match="could not draw .*confusion.png"):
        written = pictures.draw_run(tmp_path, metrics=METRICS, classes=["a"], confusion=[[1, 2, 3]])
    assert [p.name for p in written] == ["curves.png"]
    with pytest.raises(Exception):
        pictures.draw_run(tmp_path, metrics=METRICS, classes=["a"], confusion=[[1, 2, 3]], on_error="raise")


def test_matplotlib_is_imported_only_when_drawing():
    code = "import sys, mlp_cli.pictures, mlp_cli.report, mlp_cli.cli; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
