"""`mlp-cli report`: one row per run, the config keys that differ, and the validation curves."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from click.testing import CliRunner

from mlp_cli import config, pictures
from mlp_cli import report as rep
from mlp_cli.cli import main

CONFIGS = Path(__file__).resolve().parent.parent / "configs"
SHIPPED = ["circles_mlp", "mnist_mlp", "mnist_lenet5", "cifar10_cnn", "cifar10_cnn_improved"]


def make_run(root: Path, name: str, config_name: str, val_accs, *, overrides=(), test_acc=None, seconds=None):
    """A run directory as mlp-cli train leaves it: resolved config.yaml, metrics.csv, test_metrics.json."""
    run = root / name
    run.mkdir(parents=True)
    cfg = config.load(CONFIGS / f"{config_name}.yaml", overrides)
    (run / "config.yaml").write_text(yaml.safe_dump(cfg.dump(), sort_keys=False))
    seconds = seconds or [1.0 + 0.1 * i for i in range(len(val_accs))]
    with open(run / "metrics.csv", "w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"])
        for i, (acc, sec) in enumerate(zip(val_accs, seconds)):
            w.writerow([i + 1, f"{1 / (i + 1):.6f}", f"{acc:.6f}", f"{1.1 / (i + 1):.6f}", f"{acc:.6f}", "0.1",
                        f"{sec:.3f}"])
    if test_acc is not None:
        (run / "test_metrics.json").write_text(json.dumps({"accuracy": test_acc, "loss": 0.3, "n": 100}))
    return run


def run_report(*args):
    return CliRunner().invoke(main, ["report", *map(str, args)])


@pytest.fixture
def five(tmp_path):
    accs = {"circles_mlp": [0.5, 0.9, 0.95, 0.93], "mnist_mlp": [0.95, 0.972, 0.978],
            "mnist_lenet5": [0.97, 0.986, 0.985], "cifar10_cnn": [0.45, 0.6, 0.7],
            "cifar10_cnn_improved": [0.6, 0.8, 0.85, 0.86, 0.86]}
    tests = {"circles_mlp": 0.955, "mnist_lenet5": 0.9861, "cifar10_cnn_improved": 0.8512}
    return [make_run(tmp_path, f"{n}-20261127", n, accs[n], test_acc=tests.get(n)) for n in SHIPPED]


def rows_of(stdout: str, runs) -> dict[str, str]:
    names = {r.name for r in runs}
    return {line.split()[0]: line for line in stdout.splitlines() if line.split() and line.split()[0] in names}


def test_five_shipped_configs_one_row_each(five):
    result = run_report(*five)
    assert result.exit_code == 0, result.output
    rows = rows_of(result.stdout, five)
    assert list(rows) == [r.name for r in five]
    assert "95.00%" in rows["circles_mlp-20261127"] and "95.50%" in rows["circles_mlp-20261127"]
    assert "97.80%" in rows["mnist_mlp-20261127"]
    assert " - " in rows["mnist_mlp-20261127"]  # no test_metrics.json: no test accuracy
    improved = rows["cifar10_cnn_improved-20261127"].split()
    # best val, its epoch (a tie with epoch 4, broken by the lower val loss as training does), test, epochs
    assert improved[1:5] == ["86.00%", "5", "85.12%", "5/30"]


def test_five_shipped_configs_name_the_differences(five):
    runs, _ = rep.load_runs(five)
    diffs = {r.name.split("-")[0]: r.differences for r in runs}
    keys = set(diffs["circles_mlp"])
    # what the shipped configs really change between them
    assert {"data.dataset", "data.val_size", "data.normalize", "data.augment.crop", "data.augment.crop_padding",
            "data.augment.hflip",
            "model.init.weight", "model.init.std", "model.init.bias", "model.layers", "train.epochs",
            "train.batch_size", "optim.lr", "optim.momentum", "optim.weight_decay", "optim.schedule.name",
            "optim.schedule.gamma"} == keys
    assert diffs["circles_mlp"]["data.dataset"] == "circles" and diffs["cifar10_cnn"]["data.dataset"] == "cifar10"
    assert diffs["cifar10_cnn_improved"]["optim.momentum"] == 0.9 and diffs["cifar10_cnn"]["optim.momentum"] == 0.0
    assert diffs["cifar10_cnn_improved"]["data.augment.crop"] == 28 and diffs["cifar10_cnn"]["data.augment.crop"] is None
    assert diffs["circles_mlp"]["model.layers"] == "fc10-tanh-fc2"
    assert diffs["mnist_lenet5"]["model.layers"] == ("conv6k5p2-tanh-max2-conv16k5-tanh-max2-flatten-fc120-tanh-fc84-"
                                                     "tanh-fc10")
    assert diffs["cifar10_cnn_improved"]["model.layers"].startswith("conv32k5p2-bn-relu-max2-conv64k5p2-bn-relu-")
    assert "max2ceil-flatten-fc1000-relu-drop0.5-fc10" in diffs["cifar10_cnn_improved"]["model.layers"]
    for same in ("seed", "train.eval_batch_size", "optim.name", "train.label_smoothing"):
        assert same not in keys


def test_a_ladder_of_small_changes(tmp_path):
    base = make_run(tmp_path, "base", "cifar10_cnn", [0.5, 0.6])
    lr = make_run(tmp_path, "lr", "cifar10_cnn", [0.5, 0.65], overrides=["optim.lr=0.05"])
    wide = make_run(tmp_path, "wide", "cifar10_cnn", [0.55, 0.68],
                    overrides=["optim.lr=0.05", "model.layers.0.out_channels=64"])
    result = run_report(base, lr, wide)
    assert result.exit_code == 0, result.output
    rows = rows_of(result.stdout, [base, lr, wide])
    assert rows["base"].rstrip().endswith("model.layers.0.out_channels=32  optim.lr=0.1")  # config order
    assert "optim.lr=0.05" in rows["lr"] and "model.layers.0.out_channels=32" in rows["lr"]
    assert "model.layers.0.out_channels=64" in rows["wide"]
    runs, _ = rep.load_runs([base, lr, wide])
    assert all(set(r.differences) == {"model.layers.0.out_channels", "optim.lr"} for r in runs)


def test_one_run_shows_no_differences(tmp_path):
    run = make_run(tmp_path, "only", "mnist_mlp", [0.9, 0.95], seconds=[3.0, 5.0])
    result = run_report(run)
    assert result.exit_code == 0, result.output
    row = rows_of(result.stdout, [run])["only"]
    assert row.split()[1:] == ["95.00%", "2", "-", "2/20", "4.00", "-"]  # median s/epoch; 2 of 20 planned epochs
    assert "nothing to compare" in result.stdout


def test_formats(five):
    out = json.loads(run_report(*five, "--format", "json").stdout)
    assert [o["run"] for o in out] == [r.name for r in five]
    lenet = out[2]
    assert lenet["best_val_acc"] == 0.986 and lenet["best_epoch"] == 2 and lenet["test_acc"] == 0.9861
    assert lenet["differences"]["data.dataset"] == "mnist" and lenet["epochs"] == 3
    assert out[1]["test_acc"] is None

    text = run_report(*five, "--format", "csv").stdout
    rows = list(csv.DictReader(text.splitlines()))
    assert len(rows) == 5 and rows[0]["best_val_acc"] == "0.95" and rows[1]["test_acc"] == ""
    assert "data.dataset=circles" in rows[0]["differences"]

    md = run_report(*five, "--format", "markdown").stdout.splitlines()
    assert md[0].startswith("| run | best val acc |") and md[1].startswith("| --- |")
    assert len(md) == 2 + 5 and "`data.dataset=cifar10`" in md[-1]


def test_plot_writes_one_png_with_one_curve_per_run(five, tmp_path, monkeypatch):
    seen = []
    real_save = pictures.save_figure

    def spy(fig, path):
        ax = fig.axes[0]
        seen.append(([line.get_label() for line in ax.lines], [list(line.get_ydata()) for line in ax.lines]))
        return real_save(fig, path)

    monkeypatch.setattr(pictures, "save_figure", spy)
    png = tmp_path / "ladder.png"
    result = run_report(*five, "--plot", png)
    assert result.exit_code == 0, result.output
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    labels, ys = seen[0]
    assert len(labels) == 5 and all(label.startswith(r.name) for label, r in zip(labels, five))
    assert ys[0] == [0.5, 0.9, 0.95, 0.93]  # the csv numbers, as they are
    assert str(png) in result.stderr


def test_bad_run_dirs_exit_2_naming_them(tmp_path, five):
    result = run_report(tmp_path / "nope")
    assert result.exit_code == 2 and "nope: not a run directory" in result.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    result = run_report(empty)
    assert result.exit_code == 2 and "empty: not a run directory (no config.yaml)" in result.stderr
    (five[1] / "metrics.csv").write_text("what,ever\n1,2\n")
    result = run_report(five[1])
    assert result.exit_code == 2 and "metrics.csv" in result.stderr
    result = run_report(empty, tmp_path / "nope")
    assert result.exit_code == 2 and "none of the 2 folders is a run directory" in result.stderr
    assert run_report().exit_code == 2  # RUN_DIR is required


def test_folders_that_are_not_runs_are_skipped_with_a_warning(tmp_path, five):
    """Issue 11: `report runs/*` with a stray folder reports the runs and names what it skipped."""
    stray = {"notes": None, "malformed": "seed: [1, 2\n", "not-ours": "train: 5\n"}
    for name, text in stray.items():
        (tmp_path / name).mkdir()
        if text is not None:
            (tmp_path / name / "config.yaml").write_text(text)
    result = run_report(five[0], *(tmp_path / name for name in stray), five[1])
    assert result.exit_code == 0, result.output
    assert set(rows_of(result.stdout, five)) == {five[0].name, five[1].name}
    warnings = result.stderr.splitlines()
    assert len(warnings) == 3 and all(w.startswith("warning: skipped ") for w in warnings)
    assert "notes: not a run directory (no config.yaml)" in warnings[0]
    assert "malformed YAML at line 2" in warnings[1] and "not a config that mlp-cli train wrote" in warnings[2]


@pytest.mark.parametrize("name, expected", [
    ("missing/x.png", "missing does not exist"),
    ("runs.yaml/x.png", "is a file, not a folder"),
    ("ladder.foo", "matplotlib cannot write a .foo; end the name with one of"),
    ("ladder", "matplotlib cannot write a file without an extension"),
])
def test_plot_path_is_checked_before_anything_is_printed(tmp_path, five, name, expected):
    (tmp_path / "runs.yaml").write_text("a file")
    result = run_report(*five, "--plot", tmp_path / name)
    assert result.exit_code == 2 and result.stdout == ""
    assert result.stderr.startswith("error: --plot ") and expected in result.stderr


def test_plot_honours_the_extension(tmp_path, five):
    for name, magic in (("ladder.jpg", b"\xff\xd8\xff"), ("ladder.pdf", b"%PDF"), ("ladder.svg", b"<?xml")):
        result = run_report(*five, "--plot", tmp_path / name)
        assert result.exit_code == 0, result.output
        assert (tmp_path / name).read_bytes().startswith(magic)


def test_a_run_without_epochs_yet(tmp_path, five):
    (five[0] / "metrics.csv").unlink()
    result = run_report(five[0], five[1])
    assert result.exit_code == 0, result.output
    assert rows_of(result.stdout, five)[five[0].name].split()[1:6] == ["-", "-", "95.50%", "0/300", "-"]
