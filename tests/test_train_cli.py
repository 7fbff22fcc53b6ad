"""mlp-cli train / eval end to end on small generated data: outputs, resume, errors, signals."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import yaml
from click.testing import CliRunner
from PIL import Image

from mlp_cli import checkpoint
from mlp_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
MLP_CLI = [sys.executable, "-m", "mlp_cli.cli"]


@pytest.fixture
def image_folder(tmp_path):
    """3 classes of 10x10 RGB images whose colour says the class, 24 train / 9 test each."""
    rng = np.random.default_rng(0)
    root = tmp_path / "images"
    for split, n in (("train", 24), ("test", 9)):
        for c, name in enumerate(["red", "green", "blue"]):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 90, (10, 10, 3), dtype=np.uint8)
                img[..., c] += 120
                Image.fromarray(img).save(folder / f"{i:03d}.png")
    return root


def write_config(path, **changes):
    cfg = {
        "seed": 3,
        "data": {"dataset": "imagefolder", "root": None, "image_size": [10, 10], "val_size": 12,
                 "augment": {"crop": 8, "crop_padding": 1, "hflip": True}},
        "model": {"layers": [
            {"type": "conv2d", "out_channels": 4, "kernel_size": 3, "padding": 1},
            {"type": "batchnorm2d"}, {"type": "relu"},
            {"type": "maxpool2d", "kernel_size": 2, "ceil_mode": True},
            {"type": "flatten"}, {"type": "dropout", "p": 0.3},
            {"type": "linear", "out_features": 3}]},
        "train": {"epochs": 4, "batch_size": 8, "plots": False},
        "optim": {"name": "sgd", "lr": 0.05, "momentum": 0.9, "schedule": {"name": "exponential", "gamma": 0.9}},
    }
    for key, value in changes.items():
        node = cfg
        *parents, last = key.split(".")
        for p in parents:
            node = node[p]
        node[last] = value
    path.write_text(yaml.safe_dump(cfg))
    return path


def run(*args):
    result = CliRunner().invoke(main, [str(a) for a in args])
    return result


def test_train_writes_the_run_directory_and_eval_reads_it(tmp_path, image_folder):
    cfg = write_config(tmp_path / "c.yaml", **{"data.root": str(image_folder)})
    out = tmp_path / "run"
    r = run("train", "--config", cfg, "--out", out, "train.epochs=2")
    assert r.exit_code == 0, r.output
    assert {"config.yaml", "metrics.csv", "last.safetensors", "best.safetensors", "test_metrics.json"} <= {
        p.name for p in out.iterdir()}
    assert not (out / ".lock").exists()  # a finished run gives its lock back
    header, *rows = (out / "metrics.csv").read_text().splitlines()
    assert header.split(",")[:7] == ["epoch", "train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds"]
    assert [r.split(",")[0] for r in rows] == ["1", "2"]
    assert yaml.safe_load((out / "config.yaml").read_text())["train"]["epochs"] == 2  # resolved, with overrides

    r = run("eval", "--checkpoint", out / "best.safetensors", "--json")
    assert r.exit_code == 0, r.output
    result = json.loads(r.output)
    assert result["n"] == 27
    assert len(result["per_class_accuracy"]) == 3
    assert np.array(result["confusion_matrix"]).sum() == 27
    assert np.trace(np.array(result["confusion_matrix"])) / 27 == pytest.approx(result["accuracy"])
    assert result["accuracy"] == pytest.approx(json.loads((out / "test_metrics.json").read_text())["accuracy"])

    meta = checkpoint.load(out / "best.safetensors").metadata
    assert meta["input_shape"] == [3, 8, 8]
    assert meta["classes"] == ["blue", "green", "red"]
    assert len(meta["normalization"]["mean"]) == 3


def test_same_seed_gives_identical_weights_and_resume_is_bit_identical(tmp_path, image_folder):
    cfg = write_config(tmp_path / "c.yaml", **{"data.root": str(image_folder)})
    straight, resumed, other = tmp_path / "straight", tmp_path / "resumed", tmp_path / "other"
    assert run("train", "--config", cfg, "--out", straight, "--quiet").exit_code == 0
    assert run("train", "--config", cfg, "--out", resumed, "--quiet", "train.epochs=2").exit_code == 0
    r = run("train", "--resume", resumed, "--quiet", "train.epochs=4")
    assert r.exit_code == 0, r.output
    a = checkpoint.load(straight / "last.safetensors").state
    b = checkpoint.load(resumed / "last.safetensors").state
    assert a.keys() == b.keys()
    for k in a:
        assert np.array_equal(a[k], b[k]), k
    strip = lambda p: [line.rsplit(",", 1)[0] for line in (p / "metrics.csv").read_text().splitlines()]  # noqa: E731
    assert strip(straight) == strip(resumed)
    # And a different seed really changes the weights (the check above could not pass by accident).
    assert run("train", "--config", cfg, "--out", other, "--quiet", "seed=4", "train.epochs=1").exit_code == 0
    assert not np.array_equal(checkpoint.load(other / "last.safetensors").state["0.weight"], a["0.weight"])


def test_a_run_with_cutout_and_test_hflip_evaluates_with_flips_everywhere(tmp_path, image_folder):
    """The recorded config carries test_hflip: validation (metrics.csv), the test metrics and
    `mlp-cli eval` all average over mirrors, and a plain evaluation gives other numbers."""
    from mlp_cli.config import validate
    from mlp_cli.data import load_splits
    from mlp_cli.evaluate import evaluate

    cfg = write_config(tmp_path / "c.yaml", **{"data.root": str(image_folder),
                                               "data.augment": {"crop": 8, "hflip": True, "cutout": 4, "test_hflip": True}})
    out = tmp_path / "run"
    # a slow learning rate: a net still unsure of itself, whose losses show the averaging
    assert run("train", "--config", cfg, "--out", out, "--quiet", "train.epochs=2", "optim.lr=0.002").exit_code == 0
    ckpt = checkpoint.load(out / "last.safetensors")
    c = validate(ckpt.config, recorded=True)
    assert c.data.augment.test_hflip and c.data.augment.cutout == 4
    model = checkpoint.load_model(ckpt)
    splits = load_splits(c.data, c.seed, ("val", "test"))

    def ours(split, test_hflip):
        return evaluate(model, split, batch_size=256, normalization=ckpt.normalization,
                        augment=c.data.augment.model_copy(update={"test_hflip": test_hflip}))

    val_loss = float((out / "metrics.csv").read_text().splitlines()[-1].split(",")[3])
    assert val_loss == pytest.approx(ours(splits["val"], True)["loss"], abs=2e-6)
    assert val_loss != pytest.approx(ours(splits["val"], False)["loss"], abs=1e-4)
    r = run("eval", "--checkpoint", out / "last.safetensors", "--json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["loss"] == pytest.approx(ours(splits["test"], True)["loss"], rel=1e-6)
    best = json.loads(run("eval", "--checkpoint", out / "best.safetensors", "--json").output)
    assert best["loss"] == pytest.approx(json.loads((out / "test_metrics.json").read_text())["loss"], rel=1e-6)


def test_checkpoint_loads_into_pytorch_with_the_same_predictions(tmp_path, image_folder):
    import torch

    from mlp_cli.data import batches, load_splits
    from mlp_cli.interop import load_torch

    cfg = write_config(tmp_path / "c.yaml", **{"data.root": str(image_folder)})
    assert run("train", "--config", cfg, "--out", tmp_path / "r", "--quiet", "train.epochs=2").exit_code == 0
    path = tmp_path / "r" / "best.safetensors"
    net, meta = load_torch(path)
    ours = checkpoint.load_model(checkpoint.load(path))
    from mlp_cli.config import validate

    c = validate(meta["config"])
    test = load_splits(c.data, c.seed, ("test",))["test"]
    for x, _ in batches(test, 100, train=False, rng=None, normalization=meta["normalization"], augment=c.data.augment):
        with torch.no_grad():
            theirs = net(torch.from_numpy(np.ascontiguousarray(x))).numpy()
        mine = ours.forward(x)
        assert np.abs(mine - theirs).max() <= 1e-4 * np.abs(theirs).max()
        assert (mine.argmax(1) == theirs.argmax(1)).all()


BAD = {
    "malformed yaml": ("seed: [1, 2\n", "malformed YAML"),
    "unknown key": ({"train.epoch": 3}, "did you mean 'train.epochs'"),
    "wrong type": ({"train.batch_size": "big"}, "train.batch_size"),
    "zero lr": ({"optim.lr": 0}, "optim.lr"),
    "negative lr": ({"optim.lr": -0.1}, "optim.lr"),
    "zero batch": ({"train.batch_size": 0}, "train.batch_size"),
    "unknown dataset": ({"data.dataset": "mnst"}, "did you mean 'mnist'"),
    "unknown layer": ({"model.layers": [{"type": "flatten"}, {"type": "lineer", "out_features": 3}]}, "did you mean 'linear'"),
    "shapes do not fit": ({"model.layers": [{"type": "conv2d", "out_channels": 2, "kernel_size": 3},
                                            {"type": "linear", "out_features": 3}]}, "flatten"),
    "wrong class count": ({"data.dataset": "mnist", "data.image_size": None,
                           "model.layers": [{"type": "flatten"}, {"type": "linear", "out_features": 7}]}, "10 classes"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_config_exit_2_one_message_nothing_written(tmp_path, case):
    change, expected = BAD[case]
    path = tmp_path / "c.yaml"
    if isinstance(change, str):
        path.write_text(change)
    else:
        write_config(path, **change)
    out = tmp_path / "run"
    # A subprocess, so that the message, the exit code and the absence of a traceback are real.
    r = subprocess.run([*MLP_CLI, "train", "--config", str(path), "--out", str(out)], capture_output=True, text=True,
                       cwd=tmp_path, env={**os.environ, "MLP_CLI_DATA": str(tmp_path / "absent")})
    assert r.returncode == 2, r.stderr
    assert expected in r.stderr
    assert "Traceback" not in r.stderr
    assert not out.exists()
    assert not (tmp_path / "absent").exists()  # shapes and config are checked before any data is touched


def test_out_folder_with_other_files_is_refused_before_anything_is_written(tmp_path):
    """The user's data folder given as --out: exit 2, one line saying what, where and what to do."""
    data = tmp_path / "datasets"
    (data / "MNIST" / "raw").mkdir(parents=True)
    (data / "MNIST" / "raw" / "train-images-idx3-ubyte").write_bytes(b"\0" * 16)
    (data / "README.txt").write_text("mine")
    before = sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*"))
    r = subprocess.run([*MLP_CLI, "train", "--config", str(ROOT / "configs/circles_mlp.yaml"), "--out", str(data)],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2, r.stderr
    assert r.stdout == "" and r.stderr.count("\n") == 1 and "Traceback" not in r.stderr
    assert r.stderr.startswith(f"error: {data} is a folder that holds other files (MNIST/, README.txt), not a run")
    assert "choose another --out" in r.stderr
    assert sorted((p.relative_to(tmp_path), p.stat().st_mtime_ns) for p in tmp_path.rglob("*")) == before
    # An empty folder is fine.
    empty = tmp_path / "empty"
    empty.mkdir()
    r = run("train", "--config", ROOT / "configs/circles_mlp.yaml", "--out", empty, "--quiet", "train.epochs=1",
            "train.plots=false")
    assert r.exit_code == 0, r.output
    assert (empty / "best.safetensors").is_file() and not (empty / ".lock").exists()


def test_train_size_cuts_the_training_split_is_recorded_and_too_large_is_exit_2(tmp_path):
    out = tmp_path / "quick"
    r = run("train", "--config", ROOT / "configs/circles_mlp.yaml", "--out", out, "--quiet", "data.val_size=20",
            "data.train_size=0.25", "train.epochs=1", "train.batch_size=10", "train.plots=false")
    assert r.exit_code == 0, r.output
    assert yaml.safe_load((out / "config.yaml").read_text())["data"]["train_size"] == 0.25
    # 45 of the 180 examples the validation split leaves: 5 batches of 10 (the last one of 5).
    from mlp_cli import config, data

    cfg = config.validate(yaml.safe_load((out / "config.yaml").read_text()), recorded=True)
    assert len(data.load_splits(cfg.data, cfg.seed, ("train",))["train"]) == 45
    r = run("train", "--resume", out, "data.train_size=0.5", "train.epochs=2")
    assert r.exit_code == 2 and "cannot change data.train_size" in r.stderr
    r = subprocess.run([*MLP_CLI, "train", "--config", str(ROOT / "configs/circles_mlp.yaml"), "--out",
                        str(tmp_path / "big"), "data.train_size=1000"], capture_output=True, text=True)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr == ("error: invalid config: data.train_size=1000 asks for 1,000 training examples but the "
                        "training split has 160 examples left after the validation split (40 of 200); use a "
                        "count up to 160 or a fraction below 1 (e.g. data.train_size=0.1)\n")
    assert not (tmp_path / "big").exists()


@pytest.mark.parametrize("override", ["optim.lr", "optim.lr=abc", "=3", "train..epochs=3", "optim.lr=[1,"])
def test_bad_override_exit_2(tmp_path, image_folder, override):
    cfg = write_config(tmp_path / "c.yaml", **{"data.root": str(image_folder)})
    r = run("train", "--config", cfg, "--out", tmp_path / "run", override)
    assert r.exit_code == 2, r.output
    assert "error:" in r.output
    assert not (tmp_path / "run").exists()


def test_missing_data_offline_names_the_folder_and_files(tmp_path, monkeypatch):
    import torchvision

    def offline(self):
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz: no network")

    monkeypatch.setattr(torchvision.datasets.MNIST, "download", offline)
    root = tmp_path / "empty"
    r = run("train", "--config", ROOT / "configs/mnist_mlp.yaml", "--out", tmp_path / "run", f"data.root={root}")
    assert r.exit_code == 1, r.output
    assert str(root / "MNIST" / "raw") in r.output
    assert "train-images-idx3-ubyte" in r.output and "MLP_CLI_DATA" in r.output
    assert not (tmp_path / "run").exists()
    assert not root.exists()  # the failed download left no empty folders behind


def test_missing_image_folder(tmp_path):
    cfg = write_config(tmp_path / "c.yaml", **{"data.root": str(tmp_path / "nowhere")})
    r = run("train", "--config", cfg, "--out", tmp_path / "run")
    assert r.exit_code == 1
    assert "nowhere/train" in r.output and "train/<class>/<image>" in r.output


@pytest.mark.parametrize("damage", ["truncate", "garbage", "missing"])
def test_corrupted_checkpoint_exit_1(tmp_path, image_folder, damage):
    cfg = write_config(tmp_path / "c.yaml", **{"data.root": str(image_folder)})
    assert run("train", "--config", cfg, "--out", tmp_path / "r", "--quiet", "train.epochs=1").exit_code == 0
    path = tmp_path / "r" / "best.safetensors"
    data = path.read_bytes()
    if damage == "truncate":
        path.write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        path.write_bytes(b"\x00garbage" * 50)
    else:
        path.unlink()
    r = subprocess.run([*MLP_CLI, "eval", "--checkpoint", str(path)], capture_output=True, text=True)
    assert r.returncode == 1
    assert str(path) in r.stderr and "Traceback" not in r.stderr


def test_divergence_stops_with_exit_1_and_keeps_the_last_good_checkpoint(tmp_path):
    # Warm-up from lr 0.1 to 1e5: epoch 1 trains, epoch 2 diverges.
    r = run("train", "--config", ROOT / "configs/circles_mlp.yaml", "--out", tmp_path / "r",
            "optim.lr=1e5", "optim.schedule.warmup_epochs=4", "optim.schedule.warmup_start_factor=1e-6",
            "train.epochs=5", "train.plots=false",
            "model.layers=[{type: linear, out_features: 10}, {type: linear, out_features: 2}]")
    assert r.exit_code == 1, r.output
    assert "lower the learning rate" in r.output and "Warning" not in r.output
    assert "epoch 2" in r.output and "(epoch 1)" in r.output
    last = checkpoint.load(tmp_path / "r" / "last.safetensors")
    assert last.metadata["epoch"] == 1
    assert not (tmp_path / "r" / ".lock").exists()
    assert all(np.isfinite(v).all() for v in last.state.values())


def test_divergence_in_the_first_epoch_keeps_the_run_to_resume_with_a_lower_lr(tmp_path):
    out = tmp_path / "r"
    r = run("train", "--config", ROOT / "configs/circles_mlp.yaml", "--out", out, "optim.lr=1e6",
            "train.epochs=2", "train.plots=false",
            "model.layers=[{type: linear, out_features: 10}, {type: linear, out_features: 2}]")
    assert r.exit_code == 1 and "no epoch finished" in r.output
    assert (out / "config.yaml").is_file() and not (out / "last.safetensors").exists()
    r = run("train", "--resume", out, "optim.lr=0.03", "--quiet")
    assert r.exit_code == 0, r.output
    assert checkpoint.load(out / "last.safetensors").metadata["epoch"] == 2


def test_ctrl_c_saves_exits_130_and_resume_continues(tmp_path):
    out = tmp_path / "r"
    proc = subprocess.Popen([*MLP_CLI, "train", "--config", str(ROOT / "configs/circles_mlp.yaml"), "--out", str(out),
                             "train.epochs=100000", "train.plots=false"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 60
    while not (out / "metrics.csv").exists() and time.time() < deadline:
        time.sleep(0.1)
    time.sleep(0.3)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "--resume" in err and "Traceback" not in err
    assert not (out / ".lock").exists()
    done = checkpoint.load(out / "last.safetensors").metadata["epoch"]
    assert done >= 1
    r = run("train", "--resume", out, f"train.epochs={done + 2}", "--quiet")
    assert r.exit_code == 0, r.output
    assert checkpoint.load(out / "last.safetensors").metadata["epoch"] == done + 2
    assert len((out / "metrics.csv").read_text().splitlines()) == done + 2 + 1


def test_help_does_not_import_torch():
    code = "import sys; from mlp_cli.cli import main\ntry: main(['--help'])\nexcept SystemExit: pass\n" \
           "assert 'torch' not in sys.modules and 'numpy' not in sys.modules, 'heavy import on --help'"
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)


@pytest.mark.parametrize("args, code, stream, text", [
    (["convshape", "--input", "28x28x1", "--kernel", "5"], 0, "stdout", "24x24"),
    (["convshape", "--input", "28x28x1", "--kernel", "50"], 2, "stderr", "error:"),
])
def test_exit_codes_and_output_survive_the_quick_exit_after_torch_was_loaded(args, code, stream, text):
    # Once torch is loaded the process leaves with os._exit (libtorch's exit handlers take seconds).
    script = f"import torch; from mlp_cli.cli import main; main({args!r})"
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert r.returncode == code, r.stderr
    assert text in getattr(r, stream)


def test_ema_is_what_is_validated_and_saved_and_resumes_bit_identically(tmp_path, image_folder):
    cfg = write_config(tmp_path / "c.yaml", **{"data.root": str(image_folder)})

    def weights(run, name):
        return checkpoint.load(run / name).state

    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert run("train", "--config", cfg, "--out", straight, "--quiet", "train.ema=0.5").exit_code == 0
    assert run("train", "--config", cfg, "--out", resumed, "--quiet", "train.ema=0.5", "train.epochs=2").exit_code == 0
    assert run("train", "--resume", resumed, "--quiet", "train.epochs=4").exit_code == 0
    for name in ("last.safetensors", "best.safetensors", "last.optim.safetensors"):
        assert (straight / name).read_bytes() == (resumed / name).read_bytes(), name
    # The average moves with the trained weights (a decay near 0 follows them, one near 1 stays at the start).
    near0, near1, plain = tmp_path / "near0", tmp_path / "near1", tmp_path / "plain"
    for out, decay in ((near0, 1e-9), (near1, 0.999999), (plain, 0.0)):
        assert run("train", "--config", cfg, "--out", out, "--quiet", "train.epochs=2", f"train.ema={decay}",
                   "data.val_size=0").exit_code == 0  # no validation: best = the last epoch
    trained = weights(plain, "last.safetensors")
    for k, v in weights(near0, "best.safetensors").items():
        np.testing.assert_allclose(v, trained[k], rtol=1e-5, atol=1e-6)
    from mlp_cli import config as config_module
    from mlp_cli.train import build_network

    ckpt = checkpoint.load(near1 / "best.safetensors")
    initial = build_network(config_module.validate(ckpt.config, recorded=True), ckpt.architecture).state_dict()
    for k, v in ckpt.state.items():
        if v.dtype.kind == "f":
            np.testing.assert_allclose(v, initial[k], rtol=0, atol=1e-4)
            assert not np.allclose(trained[k], initial[k], rtol=0, atol=1e-4) or "running" in k or "bias" in k
    eval_json = json.loads(run("eval", "--checkpoint", straight / "best.safetensors", "--json").output)
    assert eval_json["accuracy"] == json.loads((straight / "test_metrics.json").read_text())["accuracy"]


def test_a_finite_but_exploding_loss_is_a_divergence(tmp_path):
    # lr 100 on circles: the logits grow without bound while every number stays finite.
    r = run("train", "--config", ROOT / "configs/circles_mlp.yaml", "--out", tmp_path / "r", "optim.lr=100",
            "train.epochs=3", "train.plots=false")
    assert r.exit_code == 1, r.output
    assert "training diverged: the mean training loss of epoch 1" in r.output and "lower the learning rate" in r.output
    # A run that learns is never near the bound.
    r = run("train", "--config", ROOT / "configs/circles_mlp.yaml", "--out", tmp_path / "ok", "train.epochs=3",
            "train.plots=false", "--quiet")
    assert r.exit_code == 0, r.output


def test_a_picture_that_cannot_be_drawn_is_one_warning_line_and_the_run_succeeds(tmp_path, monkeypatch):
    from mlp_cli import pictures

    def full_disk(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(pictures, "draw_curves", full_disk)
    r = CliRunner().invoke(main, ["train", "--config", str(ROOT / "configs" / "circles_mlp.yaml"), "--out",
                                  str(tmp_path / "r"), "--quiet", "train.epochs=2"])
    assert r.exit_code == 0, r.output
    lines = [line for line in r.output.splitlines() if "curves.png" in line]
    assert lines == [f"warning: could not draw {tmp_path / 'r' / 'curves.png'}: OSError: [Errno 28] No space left "
                     "on device"], r.output
    assert "RuntimeWarning" not in r.output and (tmp_path / "r" / "confusion.png").exists()
