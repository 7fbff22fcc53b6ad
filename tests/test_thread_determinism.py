"""The thread count changes the speed, never a bit: 1, 2 and 3 threads train the shipped configs
to byte-identical weights, optimizer state, checkpoints and metrics (nn/parallel.py cuts work by
its size, never by the threads). The configs' networks and recipes run on a small image folder
(10 classes of 32x32 RGB images; grayscale 28x28 for the MNIST nets) for a few steps."""

from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from mlp_cli.cli import main

ROOT = Path(__file__).resolve().parents[1]
MNIST_LIKE = ["data.image_size=[28,28]", "data.channels=1"]
CASES = {  # config: overrides beyond the data; batches of 64, so that the DFT splits by batch blocks too
    "mnist_mlp": MNIST_LIKE,
    "mnist_lenet5": MNIST_LIKE,
    "cifar10_cnn_improved": ["data.image_size=[32,32]"],
    "cifar10_cnn_best": ["data.image_size=[32,32]", "train.ema=0.9", "optim.schedule.warmup_epochs=0"],
}
RUN_FILES = ("last.safetensors", "last.optim.safetensors", "best.safetensors")


def make_image_folder(root: Path, per_class=(14, 2), classes=10, seed=0) -> Path:
    """root/{train,test}/<class>/<i>.png: noise with a class-coloured square, 32x32 RGB."""
    rng = np.random.default_rng(seed)
    for split, n in zip(("train", "test"), per_class):
        for c in range(classes):
            folder = root / split / f"c{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                img = rng.integers(0, 120, (32, 32, 3), dtype=np.uint8)
                img[4 + 2 * c:12 + 2 * c, 4:12, c % 3] += 120
                Image.fromarray(img).save(folder / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return make_image_folder(tmp_path_factory.mktemp("images"))


def train(config: str, out: Path, images: Path, *extra: str, env=None) -> None:
    args = ["train", "--config", str(ROOT / "configs" / f"{config}.yaml"), "--out", str(out), "--quiet",
            "data.dataset=imagefolder", f"data.root={images}", "data.val_size=12", "train.epochs=1",
            "train.batch_size=64", "train.plots=false", *CASES[config], *extra]
    result = CliRunner().invoke(main, args, env=env)
    assert result.exit_code == 0, result.output


def outcome(run: Path) -> dict:
    """The run's bytes, but for the wall-clock seconds of metrics.csv and the path in test_metrics.json."""
    files = {name: (run / name).read_bytes() for name in RUN_FILES}
    files["metrics.csv"] = [line.split(",")[:-1] for line in (run / "metrics.csv").read_text().splitlines()]
    files["test_metrics.json"] = (run / "test_metrics.json").read_text().replace(str(run), "RUN")
    return files


@pytest.mark.parametrize("config", sorted(CASES))
def test_one_two_and_three_threads_train_to_the_same_bytes(config, images, tmp_path, monkeypatch):
    runs = {}
    for threads in (1, 2, 3):
        train(config, tmp_path / str(threads), images, env={"MLP_CLI_THREADS": str(threads)})
        runs[threads] = outcome(tmp_path / str(threads))
    for threads in (2, 3):
        for name, content in runs[1].items():
            assert runs[threads][name] == content, f"{name} differs between 1 and {threads} threads"
