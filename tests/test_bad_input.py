"""Bad input in every command (issue 11): one clear line, the documented exit code, nothing half-written.

Each test is one kind of input a newcomer tries; the commands run as subprocesses where the exit
code, stderr and the absence of a traceback must be real, in-process (CliRunner) elsewhere.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from mlp_cli import data
from mlp_cli.cli import main
from mlp_cli.config import ConfigError, Data
from mlp_cli.data.imagefolder import common_image_size
from mlp_cli.errors import DataError

ROOT = Path(__file__).resolve().parents[1]
CIRCLES = ROOT / "configs" / "circles_mlp.yaml"
MLP_CLI = [sys.executable, "-m", "mlp_cli.cli"]


def run(*args):
    return CliRunner().invoke(main, [str(a) for a in args])


def shell(*args, **kwargs):
    return subprocess.run([*MLP_CLI, *map(str, args)], capture_output=True, text=True, **kwargs)


def make_images(root: Path, classes=("a", "b"), n=(6, 3), size=(6, 6)):
    """Two splits of small RGB PNGs whose colour says the class."""
    rng = np.random.default_rng(0)
    for split, count in zip(("train", "test"), n):
        for c, name in enumerate(classes):
            (root / split / name).mkdir(parents=True, exist_ok=True)
            for i in range(count):
                img = rng.integers(0, 80, (*size, 3), dtype=np.uint8)
                img[..., c % 3] += 150
                Image.fromarray(img).save(root / split / name / f"{i}.png")
    return root


def image_config(path: Path, root, **changes):
    cfg = {"seed": 0,
           "data": {"dataset": "imagefolder", "root": None if root is None else str(root), "val_size": 2},
           "model": {"layers": [{"type": "flatten"}, {"type": "linear", "out_features": 2}]},
           "train": {"epochs": 2, "batch_size": 4, "plots": False},
           "optim": {"lr": 0.1}}
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


# ----------------------------------------------------------------------------- configs and options
BAD_CONFIGS = {  # change to circles_mlp.yaml -> the start of the message
    "channels on mnist": (["data.dataset=mnist", "data.channels=3", "model.layers.0.out_features=10"],
                          "data.channels does not apply: it is for imagefolder, and mnist images are 28x28"),
    "image_size on cifar10": (["data.dataset=cifar10", "data.image_size=[32,32]"], "data.image_size does not apply"),
    "flip on circles": (["data.augment.hflip=true"], "data.augment.hflip does not apply: augmentation is for images"),
    "cutout on circles": (["data.augment.cutout=4"], "data.augment.cutout does not apply: augmentation is for images"),
    "test_hflip on circles": (["data.augment.test_hflip=true"],
                              "data.augment.test_hflip does not apply: augmentation is for images"),
    "cutout as large as the crop": (["data.dataset=mnist", "data.augment.crop=24", "data.augment.cutout=24"],
                                    "data.augment.cutout 24 is not smaller than the images the network gets (24x24, after the crop)"),
    "cutout as large as the image": (["data.dataset=mnist", "data.augment.cutout=28"],
                                     "data.augment.cutout 28 is not smaller than the images the network gets (28x28)"),
    "root on circles": (["data.root=/data"], "data.root does not apply: circles is generated"),
    "momentum with adam": (["optim.name=adam", "optim.momentum=0.9"], "optim.momentum does not apply: it is for sgd"),
    "gamma of another schedule": (["optim.schedule.name=cosine", "optim.schedule.gamma=0.5"],
                                  "optim.schedule.gamma does not apply: the cosine schedule uses t_max, eta_min"),
    "warm-up longer than the run": (["train.epochs=3", "optim.schedule.warmup_epochs=5"],
                                    "optim.schedule.warmup_epochs 5 is not shorter than the run (train.epochs 3)"),
    "infinite lr": (["optim.lr=.inf"], "optim.lr: input should be a finite number"),
    "too big for memory": (["model.layers.0.out_features=100000000000"],
                           "300,000,000,000 of them in layer 0 (Linear)) needs at least"),
    "list index out of range": (["model.layers.5.type=relu"],
                                "model.layers is a list of 3 layers, so '5' is not one of them; use an index from 0 to 2"),
}


@pytest.mark.parametrize("case", sorted(BAD_CONFIGS))
def test_bad_config_is_one_line_exit_2_nothing_written(tmp_path, case):
    overrides, expected = BAD_CONFIGS[case]
    out = tmp_path / "run"
    r = shell("train", "--config", CIRCLES, "--out", out, *overrides, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr and len(r.stderr.splitlines()) == 1
    assert "Traceback" not in r.stderr and r.stdout == ""
    assert not out.exists()


OVERRIDE_ERRORS = {  # an override as typed -> the rest of the message, after "error: invalid override ...: "
    "train.epoch=3": "unknown key 'train.epoch'; did you mean 'train.epochs'?",
    "train.epochs=three": "train.epochs: input should be a valid integer, unable to parse string as an integer "
                          "(got 'three')",
    "optim.lr=-1": "optim.lr: input should be greater than 0 (got -1)",
    "optim.nesterov=true": "optim.nesterov needs optim.name: sgd and a momentum above 0",
    "model.layers.0.kernel_size=3": "unknown key 'model.layers.0.kernel_size'; model.layers.0 is a linear layer: "
                                    "allowed keys: type, out_features, in_features, bias",
}


@pytest.fixture(scope="module")
def finished_circles(tmp_path_factory):
    out = tmp_path_factory.mktemp("finished") / "run"
    assert run("train", "--config", CIRCLES, "--out", out, "--quiet", "train.epochs=1", "train.plots=false").exit_code == 0
    return out


@pytest.mark.parametrize("command", ["train", "resume", "sweep", "convshape", "gradcheck"])
@pytest.mark.parametrize("override", sorted(OVERRIDE_ERRORS))
def test_an_override_error_is_blamed_on_the_override_not_the_file(tmp_path, finished_circles, command, override):
    """Issue 27: the file is fine, the command line is not; the message says so in every command."""
    if command == "resume":
        args = ["train", "--resume", finished_circles, "train.epochs=2", override]
    elif command == "sweep":
        args = ["sweep", "--config", CIRCLES, "--out", tmp_path / "s", "train.batch_size=10,20", override]
    else:
        args = [command, "--config", CIRCLES, *(["--out", tmp_path / "r"] if command == "train" else []), override]
    before = sorted(p.name for p in finished_circles.iterdir())
    r = run(*args)
    assert r.exit_code == 2, r.output
    assert r.stderr == f"error: invalid override {override}: {OVERRIDE_ERRORS[override]}\n"
    assert "circles_mlp.yaml" not in r.stderr and "config.yaml" not in r.stderr
    assert not (tmp_path / "r").exists() and not (tmp_path / "s").exists()
    assert sorted(p.name for p in finished_circles.iterdir()) == before


def test_errors_of_the_file_still_name_the_file_whatever_the_overrides(tmp_path):
    cfg = yaml.safe_load(CIRCLES.read_text())
    cfg["train"]["epoch"] = 3  # a typo in the file
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(cfg))
    r = run("train", "--config", tmp_path / "typo.yaml", "--out", tmp_path / "r", "optim.lr=0.1", "train.epochs=2")
    assert r.exit_code == 2
    assert r.stderr == (f"error: invalid config: {tmp_path / 'typo.yaml'}: unknown key 'train.epoch'; "
                        "did you mean 'train.epochs'?\n")
    # A rule of a section the file breaks stays the file's, though an override touches the section.
    cfg = yaml.safe_load(CIRCLES.read_text())
    cfg["optim"]["nesterov"] = True
    (tmp_path / "nesterov.yaml").write_text(yaml.safe_dump(cfg))
    r = run("train", "--config", tmp_path / "nesterov.yaml", "--out", tmp_path / "r", "optim.lr=0.1")
    assert r.stderr.startswith(f"error: invalid config: {tmp_path / 'nesterov.yaml'}: optim.nesterov needs")
    # A rule between keys that only an override breaks is the override's.
    cfg = yaml.safe_load(CIRCLES.read_text())
    cfg["optim"]["schedule"] = {"warmup_epochs": 5}
    (tmp_path / "warmup.yaml").write_text(yaml.safe_dump(cfg))
    r = run("train", "--config", tmp_path / "warmup.yaml", "--out", tmp_path / "r", "optim.lr=0.1", "train.epochs=3")
    assert r.stderr.startswith("error: invalid override train.epochs=3: optim.schedule.warmup_epochs 5 is not "
                               "shorter than the run (train.epochs 3)")
    # Two errors, one from each: each line names its own cause.
    r = run("train", "--config", tmp_path / "typo.yaml", "--out", tmp_path / "r", "optim.lr=-1")
    assert r.stderr.splitlines()[1:] == [f"  also: {tmp_path / 'typo.yaml'}: unknown key 'train.epoch'; "
                                         "did you mean 'train.epochs'?"] or \
        r.stderr.splitlines()[1:] == ["  also: override optim.lr=-1: optim.lr: input should be greater than 0 (got -1)"]
    assert not (tmp_path / "r").exists()


def test_a_sweep_names_the_trial_whose_values_are_wrong_and_the_file_for_its_own_errors(tmp_path):
    r = run("sweep", "--config", CIRCLES, "--out", tmp_path / "s", "data.val_size=0.2", "optim.lr=0.1,-1")
    assert r.exit_code == 2
    assert r.stderr.startswith("error: invalid config: trial lr-1 (optim.lr=-1): optim.lr: input should be greater")
    cfg = yaml.safe_load(CIRCLES.read_text())
    cfg["train"]["epoch"] = 3
    (tmp_path / "typo.yaml").write_text(yaml.safe_dump(cfg))
    r = run("sweep", "--config", tmp_path / "typo.yaml", "--out", tmp_path / "s", "data.val_size=0.2", "optim.lr=0.1,0.2")
    assert r.exit_code == 2
    assert r.stderr.startswith(f"error: invalid config: {tmp_path / 'typo.yaml'}: unknown key 'train.epoch'")
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("where", ["override", "file"])
def test_an_unknown_key_of_a_layer_names_the_layer_index_and_type(tmp_path, where):
    mnist = ROOT / "configs" / "mnist_mlp.yaml"
    if where == "override":
        r = run("train", "--config", mnist, "--out", tmp_path / "r", "model.layers.0.out_features=5")
        assert r.stderr == ("error: invalid override model.layers.0.out_features=5: unknown key "
                            "'model.layers.0.out_features'; model.layers.0 is a flatten layer: allowed keys: type\n")
    else:
        cfg = yaml.safe_load(mnist.read_text())
        cfg["model"]["layers"][1]["out_feature"] = cfg["model"]["layers"][1].pop("out_features")
        (tmp_path / "c.yaml").write_text(yaml.safe_dump(cfg))
        r = run("convshape", "--config", tmp_path / "c.yaml")
        first, also = r.stderr.splitlines()
        assert first.startswith(f"error: invalid config: {tmp_path / 'c.yaml'}: ")
        assert also.startswith(f"  also: {tmp_path / 'c.yaml'}: ")
        assert {first.split(": ", 3)[-1], also.split(": ", 2)[-1]} == {
            "unknown key 'model.layers.1.out_feature'; model.layers.1 is a linear layer: "
            "did you mean 'model.layers.1.out_features'?",
            "missing required key 'model.layers.1.out_features' (model.layers.1 is a linear layer)"}
    assert r.exit_code == 2 and not (tmp_path / "r").exists()


def test_a_network_too_big_for_memory_in_gradcheck_too(tmp_path):
    r = run("gradcheck", "--config", ROOT / "configs" / "cifar10_cnn.yaml", "--batch", "10000000")
    assert r.exit_code == 2 and "needs at least" in r.stderr and "of memory but" in r.stderr


@pytest.mark.parametrize("args, hint", [
    (["--epochs", "3"], "train.epochs=3"),
    (["--lr=0.1"], "optim.lr=0.1"),
    (["--batch-size", "32"], "train.batch_size=32"),
])
def test_an_option_that_is_a_config_key_suggests_the_override(args, hint):
    for command in ("train", "gradcheck", "convshape")[:2 if args[0] == "--batch-size" else 3]:  # convshape has one
        r = run(command, "--config", CIRCLES, *args)
        assert r.exit_code == 2
        assert f"Config keys are set as KEY=VALUE overrides: {hint}" in r.stderr


def test_convshape_ceil_mode_on_a_conv_and_gradcheck_threshold_nan():
    r = shell("convshape", "--input", "28x28x1", "--kernel", "3", "--stride", "2", "--ceil-mode")
    assert r.returncode == 2 and "nn.Conv2d has no ceil_mode" in r.stderr and r.stdout == ""
    r = run("gradcheck", "--config", CIRCLES, "--threshold", "nan")
    assert r.exit_code == 2 and "--threshold nan is not a number" in r.stderr


def test_a_config_that_is_not_text_or_too_large(tmp_path):
    (tmp_path / "c.yaml").write_bytes(bytes(range(256)))
    r = run("train", "--config", tmp_path / "c.yaml", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "not a text file (not UTF-8)" in r.stderr and not (tmp_path / "run").exists()
    (tmp_path / "big.yaml").write_text("#" * (2**20 + 1))  # /dev/zero would be read forever
    r = run("train", "--config", tmp_path / "big.yaml", "--out", tmp_path / "run")
    assert r.exit_code == 2 and "more than 1 MiB, too large for a config" in r.stderr


# ----------------------------------------------------------------------------- data layouts
def test_hidden_folders_and_files_are_not_classes_or_images(tmp_path):
    root = make_images(tmp_path / "img")
    (root / "train" / ".ipynb_checkpoints").mkdir()
    (root / "test" / "__MACOSX").mkdir()
    (root / "train" / "a" / "._0.png").write_bytes(b"AppleDouble, not a PNG")
    (root / "train" / "a" / ".cache").mkdir()
    Image.new("RGB", (6, 6)).save(root / "train" / "a" / ".cache" / "x.png")
    splits = data.load_splits(Data(dataset="imagefolder", root=str(root), image_size=(6, 6), val_size=0), 0)
    assert splits["train"].classes == ["a", "b"] and len(splits["train"]) == 12 and len(splits["test"]) == 6


def test_a_symbolic_link_loop_is_named(tmp_path):
    root = make_images(tmp_path / "img")
    (root / "train" / "a" / "up").symlink_to("..")
    with pytest.raises(DataError, match=r"train/a/up/a leads to .*train/a, already walked \(a loop of symbolic links"):
        data.load_splits(Data(dataset="imagefolder", root=str(root), image_size=(6, 6)), 0)


def test_one_class_is_refused(tmp_path):
    root = make_images(tmp_path / "img", classes=("only",))
    with pytest.raises(DataError, match=r"has a single class folder \(only\): a classifier needs at least 2 classes"):
        data.load_splits(Data(dataset="imagefolder", root=str(root), image_size=(6, 6)), 0)


def test_an_empty_test_class_is_found_before_any_training(tmp_path):
    root = make_images(tmp_path / "img")
    for f in (root / "test" / "b").iterdir():
        f.unlink()
    out = tmp_path / "run"
    r = run("train", "--config", image_config(tmp_path / "c.yaml", root), "--out", out)
    assert r.exit_code == 1
    assert "no images in the class folder(s) b" in r.stderr and "epoch 1" not in r.stdout
    assert not out.exists()


def test_a_bad_test_image_is_found_before_any_training_and_all_bad_files_are_named(tmp_path):
    root = make_images(tmp_path / "img")
    bad = [root / "train" / "a" / "0.png", root / "test" / "b" / "1.png", root / "test" / "b" / "2.png"]
    for path in bad[1:]:
        path.write_bytes(b"not an image")
    out = tmp_path / "run"
    r = run("train", "--config", image_config(tmp_path / "c.yaml", root), "--out", out)
    assert r.exit_code == 1 and not out.exists() and "epoch 1" not in r.stdout
    assert f"2 images cannot be read; the first: cannot read the image {bad[1]}" in r.stderr
    assert str(bad[2]) in r.stderr and len(r.stderr.splitlines()) == 1


def test_a_decompression_bomb_is_one_line_in_train_too(tmp_path, monkeypatch):
    root = make_images(tmp_path / "img")
    Image.new("RGB", (40, 40)).save(root / "train" / "b" / "bomb.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 700)  # 1600 pixels: over twice the limit
    r = run("train", "--config", image_config(tmp_path / "c.yaml", root, **{"data.image_size": [6, 6]}),
            "--out", tmp_path / "run")
    assert r.exit_code == 1 and "bomb.png" in r.stderr and "exceeds limit" in r.stderr
    assert len(r.stderr.splitlines()) == 1


def test_image_size_is_read_from_the_images_when_they_agree(tmp_path):
    root = make_images(tmp_path / "img", size=(5, 7))
    assert common_image_size(root) == (5, 7)
    out = tmp_path / "run"
    r = run("train", "--config", image_config(tmp_path / "c.yaml", root), "--out", out)
    assert r.exit_code == 0, r.output
    recorded = yaml.safe_load((out / "config.yaml").read_text())["data"]
    assert recorded["image_size"] == [5, 7] and recorded["channels"] == 3
    r = run("convshape", "--config", tmp_path / "c.yaml", "--json")
    assert r.exit_code == 0 and json.loads(r.stdout)["layers"][0]["output_shape"] == [105]


def test_image_size_is_asked_for_when_the_images_differ(tmp_path):
    root = make_images(tmp_path / "img", size=(5, 7))
    Image.new("RGB", (9, 4)).save(root / "test" / "a" / "odd.png")
    with pytest.raises(ConfigError, match=r"differ in size \(5x7 \(18, .*\), 4x9 \(1, e.g. .*odd.png\)\); "
                                          r"set the size to resize them to, e.g. data.image_size=\[5,7\]"):
        common_image_size(root)


def test_the_absolute_data_root_is_recorded_and_eval_works_from_anywhere(tmp_path, monkeypatch):
    make_images(tmp_path / "img")
    monkeypatch.chdir(tmp_path)
    cfg = image_config(tmp_path / "c.yaml", "img")  # relative to where train runs
    assert run("train", "--config", cfg, "--out", "rel", "--quiet").exit_code == 0
    cfg = image_config(tmp_path / "c2.yaml", None)  # from the environment
    monkeypatch.setenv("MLP_CLI_DATA", "img")
    r = run("train", "--config", cfg, "--out", "env", "--quiet")
    assert r.exit_code == 0, r.output
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    monkeypatch.setenv("MLP_CLI_DATA", str(tmp_path / "absent"))
    for run_dir in ("rel", "env"):
        assert yaml.safe_load((tmp_path / run_dir / "config.yaml").read_text())["data"]["root"] == str(tmp_path / "img")
        r = run("eval", "--checkpoint", tmp_path / run_dir / "best.safetensors", "--json")
        assert r.exit_code == 0, r.output
        assert json.loads(r.stdout)["n"] == 6
    r = run("eval", "--checkpoint", tmp_path / "rel" / "best.safetensors", "--data-root", tmp_path / "absent")
    assert r.exit_code == 1
    assert "pass --data-root DIR to the folder holding train/ and test/" in r.stderr and "data.root=DIR" not in r.stderr


def test_missing_torchvision_data_names_the_option_of_each_command(tmp_path):
    from mlp_cli.errors import DataError

    error = DataError("mnist data not found in /x", "to a folder that holds MNIST/")
    assert str(error).endswith("set data.root=DIR on the command line or the MLP_CLI_DATA environment variable "
                               "to a folder that holds MNIST/")
    error.option = "pass --data-root DIR"
    assert str(error) == "mnist data not found in /x; pass --data-root DIR to a folder that holds MNIST/"


def test_an_unwritable_cache_warns_once(tmp_path, monkeypatch, capsys):
    root = make_images(tmp_path / "img")
    (tmp_path / "file").write_text("")
    monkeypatch.setenv("MLP_CLI_CACHE", str(tmp_path / "file" / "cache"))
    splits = data.load_splits(Data(dataset="imagefolder", root=str(root), image_size=(6, 6)), 0)
    assert len(splits["test"]) == 6
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and "could not write the image cache" in err[0] and "MLP_CLI_CACHE" in err[0]


# ----------------------------------------------------------------------------- eval
@pytest.fixture(scope="module")
def circles_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("circles") / "run"
    r = CliRunner().invoke(main, ["train", "--config", str(CIRCLES), "--out", str(out), "train.epochs=2",
                                  "train.plots=false", "data.val_size=0", "--quiet"])
    assert r.exit_code == 0, r.output
    return out


@pytest.mark.parametrize("as_json", [[], ["--json"]])
def test_eval_of_a_validation_split_the_run_did_not_have(circles_run, as_json):
    r = run("eval", "--checkpoint", circles_run / "best.safetensors", "--split", "val", *as_json)
    assert r.exit_code == 2 and r.stdout == ""
    assert "the run trained without a validation split (data.val_size 0)" in r.stderr and "--split test" in r.stderr


# ----------------------------------------------------------------------------- interrupted and full outputs
def test_a_closed_stdout_does_not_stop_training(tmp_path):
    """`mlp-cli train ... | head -2`: the run goes on to the end and exits 0, with nothing on stderr."""
    out = tmp_path / "run"
    proc = subprocess.Popen([*MLP_CLI, "train", "--config", str(CIRCLES), "--out", str(out), "train.epochs=60",
                             "train.plots=false"], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    first = proc.stdout.readline()
    proc.stdout.close()  # as head does after its lines
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=120) == 0, err
    assert first.startswith(b"epoch 1/60") and err == ""
    assert (out / "metrics.csv").read_text().splitlines()[-1].startswith("60,")
    assert (out / "test_metrics.json").exists()


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_full_stdout_is_one_line_exit_1(circles_run):
    with open("/dev/full", "w") as full:
        r = subprocess.run([*MLP_CLI, "eval", "--checkpoint", str(circles_run / "best.safetensors")], stdout=full,
                           stderr=subprocess.PIPE, text=True)
    assert r.returncode == 1
    assert r.stderr == "error: the output could not be written (No space left on device)\n"


# ----------------------------------------------------------------------------- recorded configs and checkpoints
def test_recorded_configs_are_read_without_the_newer_rules():
    """A run recorded channels: 3 for MNIST and momentum for adam before those were refused: eval still reads it."""
    from mlp_cli import config

    raw = yaml.safe_load(CIRCLES.read_text())
    raw["data"] = {"dataset": "mnist", "channels": 3, "image_size": None}
    raw["model"]["layers"][-1]["out_features"] = 10
    raw["optim"] = {"name": "adam", "lr": 0.01, "momentum": 0.9}
    with pytest.raises(ConfigError, match="does not apply"):
        config.validate(raw)
    assert config.validate(raw, recorded=True).optim.momentum == 0.9


@pytest.mark.parametrize("key, value, expected", [
    ("input_shape", "abc", "input_shape 'abc': [C, H, W] or [features] expected"),
    ("normalization", {"mean": [0.5], "std": [1.0]}, "a mean and a std per channel (3) expected"),
    ("classes", ["only"], "classes: a list of class names expected"),
    ("config", {"data": 5}, "its recorded config"),
])
def test_damaged_checkpoint_metadata_is_one_line_exit_1(tmp_path, key, value, expected):
    from safetensors.numpy import save_file

    from mlp_cli import checkpoint

    root = make_images(tmp_path / "img")
    assert run("train", "--config", image_config(tmp_path / "c.yaml", root, **{"train.epochs": 1}),
               "--out", tmp_path / "run", "--quiet").exit_code == 0
    good = checkpoint.load(tmp_path / "run" / "best.safetensors")
    damaged = tmp_path / "damaged.safetensors"
    save_file(good.state, str(damaged), metadata={k: json.dumps(v) for k, v in {**good.metadata, key: value}.items()})
    for args in (["eval", "--checkpoint", damaged], ["predict", "--checkpoint", damaged, root / "test" / "a" / "0.png"]):
        r = run(*args)
        if key == "config" and args[0] == "predict":
            assert r.exit_code == 0, r.output  # predict needs nothing from the config here
            continue
        assert r.exit_code == 1 and expected in r.stderr and len(r.stderr.splitlines()) == 1


# ----------------------------------------------------------------------------- Ctrl-C while starting
_CTRL_C_DURING_IMPORT = """
import importlib.abc, os, signal, sys

class CtrlCWhileImportingTheCommands(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == "mlp_cli.cli":
            os.kill(os.getpid(), signal.SIGINT)  # as a user's Ctrl-C in the first ~80 ms
        return None

sys.meta_path.insert(0, CtrlCWhileImportingTheCommands())
sys.argv = ["mlp-cli", "--help"]
from {module} import main
sys.exit(main())
"""


def test_ctrl_c_while_the_commands_are_imported_is_exit_130_without_traceback():
    r = subprocess.run([sys.executable, "-c", _CTRL_C_DURING_IMPORT.format(module="mlp_cli.entry")],
                       capture_output=True, text=True, cwd=ROOT)
    assert (r.returncode, r.stderr, r.stdout) == (130, "error: interrupted\n", "")
    # The command (bin/mlp-cli, installed as mlp-cli) enters through this module (cli.main alone
    # would show the traceback).
    setuptools = __import__("tomllib").loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    assert setuptools["script-files"] == ["bin/mlp-cli"]
    assert "from mlp_cli.entry import main" in (ROOT / "bin" / "mlp-cli").read_text()


def test_inside_a_command_ctrl_c_is_python_s_again_for_the_command_to_handle():
    code = ("import signal, sys; from mlp_cli.entry import main; from mlp_cli.errors import exit_at_once\n"
            "from mlp_cli.cli import handle_errors\n"
            "before = signal.getsignal(signal.SIGINT) is exit_at_once\n"
            "inside = handle_errors(lambda: signal.getsignal(signal.SIGINT) is signal.default_int_handler)()\n"
            "print(before, inside, signal.getsignal(signal.SIGINT) is exit_at_once)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.stdout.split() == ["True", "True", "True"], r.stderr
    # A parent that ignores SIGINT (nohup, a background job): it stays ignored, inside commands too.
    ignored = code.replace("is exit_at_once", "is signal.SIG_IGN").replace("is signal.default_int_handler",
                                                                         "is signal.SIG_IGN")
    r = subprocess.run([sys.executable, "-c", ignored], capture_output=True, text=True, cwd=ROOT,
                       preexec_fn=lambda: __import__("signal").signal(__import__("signal").SIGINT,
                                                                       __import__("signal").SIG_IGN))
    assert r.stdout.split() == ["True", "True", "True"], r.stderr

def test_tilde_removes_a_key_the_file_sets_so_an_override_can_switch_the_optimizer(tmp_path):
    """The file sets optim.momentum; optim.name=adam alone is refused and says how to remove it."""
    from mlp_cli import config

    mlp = ROOT / "configs" / "mnist_mlp.yaml"
    assert yaml.safe_load(mlp.read_text())["optim"]["momentum"] > 0
    with pytest.raises(ConfigError, match=r"optim\.momentum does not apply.*on the command line: ~optim\.momentum\)$"):
        config.load(mlp, ["optim.name=adam"])
    cfg = config.load(mlp, ["optim.name=adam", "~optim.momentum", "optim.lr=0.001"])
    assert cfg.optim.name == "adam" and cfg.optim.momentum == 0 and cfg.optim.lr == 0.001
    for override, expected in [("~optim.nope", "optim.nope is not set in the config, so there is nothing to remove"),
                               ("~model.layers.1", "~ removes a key, not one item of a list"),
                               ("~", "write KEY=VALUE with a dotted key")]:
        r = run("train", "--config", mlp, "--out", tmp_path / "r", override)
        assert r.exit_code == 2 and expected in r.stderr and len(r.stderr.splitlines()) == 1, r.output
        assert not (tmp_path / "r").exists()
