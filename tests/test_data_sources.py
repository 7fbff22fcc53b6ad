"""torchvision data sets through small generated files in their real on-disk formats, and missing data."""

import gzip
import hashlib
import os
import pickle
import struct
import urllib.error
from pathlib import Path

import numpy as np
import pytest

from mlp_cli.config import Data
from mlp_cli.data import load_splits, normalization
from mlp_cli.errors import DataError

tvd = pytest.importorskip("torchvision.datasets")

SHARED = Path(__file__).resolve().parents[2] / "shared" / "datasets"


@pytest.fixture
def offline(monkeypatch):
    """Downloads fail as they do without network (after creating a partial file), with no network use."""
    calls = []

    def fail(url, download_root, extract_root=None, filename=None, md5=None, remove_finished=False):
        calls.append(url)
        os.makedirs(download_root, exist_ok=True)
        Path(download_root, filename or os.path.basename(url)).write_bytes(b"partial")
        raise urllib.error.URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", fail)
    monkeypatch.setattr("torchvision.datasets.cifar.download_and_extract_archive", fail)
    return calls


def md5(path):
    return hashlib.md5(Path(path).read_bytes()).hexdigest()


def tree(path):
    return sorted(str(p.relative_to(path)) for p in Path(path).rglob("*")) if Path(path).exists() else None


# ----------------------------------------------------------------------------- CIFAR
def write_cifar(root, monkeypatch, cifar100=False, sizes=(3, 2, 4, 1, 2), n_test=3):
    """Batches in the pickle format of cifar-10-batches-py (or cifar-100-python); returns the images and labels."""
    rng = np.random.default_rng(0)
    cls = tvd.CIFAR100 if cifar100 else tvd.CIFAR10
    folder = root / cls.base_folder
    folder.mkdir(parents=True)
    label_key = "fine_labels" if cifar100 else "labels"
    n_classes = 100 if cifar100 else 10
    names = ["train"] if cifar100 else [f"data_batch_{i}" for i in range(1, 6)]
    sizes = [sum(sizes)] if cifar100 else sizes
    written = {}
    for name, n in [*zip(names, sizes), ("test" if cifar100 else "test_batch", n_test)]:
        images = rng.integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)
        labels = rng.integers(0, n_classes, n).tolist()
        entry = {"batch_label": name, "data": images.transpose(0, 3, 1, 2).reshape(n, 3072),  # R, G, B planes
                 label_key: labels, "filenames": [f"{i}.png" for i in range(n)]}
        if cifar100:
            entry["coarse_labels"] = [0] * n
        (folder / name).write_bytes(pickle.dumps(entry, protocol=2))
        written[name] = (images, np.array(labels))
    meta_name, meta_key = ("meta", "fine_label_names") if cifar100 else ("batches.meta", "label_names")
    classes = [f"class{i}" for i in range(n_classes)]
    (folder / meta_name).write_bytes(pickle.dumps({meta_key: classes}, protocol=2))
    # torchvision checks the MD5 sums of the real files: give it ours
    monkeypatch.setattr(cls, "train_list", [[n, md5(folder / n)] for n in names])
    test_name = "test" if cifar100 else "test_batch"
    monkeypatch.setattr(cls, "test_list", [[test_name, md5(folder / test_name)]])
    monkeypatch.setattr(cls, "meta", {"filename": meta_name, "key": meta_key, "md5": md5(folder / meta_name)})
    train = tuple(np.concatenate(parts) for parts in zip(*[written[n] for n in names]))
    return train, written[test_name], classes


@pytest.mark.parametrize("dataset", ["cifar10", "cifar100"])
def test_cifar_through_torchvision(tmp_path, monkeypatch, dataset):
    root = tmp_path / "data"
    (train_x, train_y), (test_x, test_y), classes = write_cifar(root, monkeypatch, cifar100=dataset == "cifar100")
    s = load_splits(Data(dataset=dataset, root=str(root), val_size=0), 0)
    for split, x, y in ((s["train"], train_x, train_y), (s["test"], test_x, test_y)):
        assert split.x.dtype == np.uint8 and split.x.shape == (len(x), 32, 32, 3) and split.x.flags.c_contiguous
        assert np.array_equal(split.x, x)  # pixels in HWC order, batches in order
        assert split.y.dtype == np.int64 and np.array_equal(split.y, y)
        assert split.classes == classes
    assert len(s["val"]) == 0
    s = load_splits(Data(dataset=dataset, root=str(root), val_size=4), 1)
    assert len(s["train"]) == len(train_x) - 4 and len(s["val"]) == 4 and len(s["test"]) == len(test_x)


def test_cifar_test_split_alone_reads_no_training_batch(tmp_path, monkeypatch):
    root = tmp_path / "data"
    _, (test_x, _), _ = write_cifar(root, monkeypatch)
    opened = []
    real_load = pickle.load
    monkeypatch.setattr(pickle, "load", lambda f, **kw: opened.append(os.path.basename(f.name)) or real_load(f, **kw))
    s = load_splits(Data(dataset="cifar10", root=str(root)), 0, ("test",))
    assert list(s) == ["test"] and np.array_equal(s["test"].x, test_x)
    assert "test_batch" in opened and not any(n.startswith("data_batch") for n in opened)


# ----------------------------------------------------------------------------- MNIST
def write_idx(path, array, gz=False):
    array = np.asarray(array, np.uint8)
    header = struct.pack(">I", 0x0800 + array.ndim) + b"".join(struct.pack(">I", d) for d in array.shape)
    data = header + array.tobytes()
    if gz:
        path = path.with_name(path.name + ".gz")
        data = gzip.compress(data)
    path.write_bytes(data)


def write_mnist(root, folder="MNIST", n_train=12, n_test=5):
    rng = np.random.default_rng(1)
    raw = root / folder / "raw"
    raw.mkdir(parents=True)
    out = {}
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, n)
        write_idx(raw / f"{prefix}-images-idx3-ubyte", images)
        write_idx(raw / f"{prefix}-labels-idx1-ubyte", labels)
        out[prefix] = (images, labels)
    return out["train"], out["t10k"]


@pytest.mark.parametrize("dataset, folder, first_class", [("mnist", "MNIST", "0 - zero"),
                                                          ("fashion-mnist", "FashionMNIST", "T-shirt/top")])
def test_mnist_through_torchvision(tmp_path, dataset, folder, first_class):
    root = tmp_path / "data"
    (train_x, train_y), (test_x, test_y) = write_mnist(root, folder)
    s = load_splits(Data(dataset=dataset, root=str(root), val_size=0), 0)
    for split, x, y in ((s["train"], train_x, train_y), (s["test"], test_x, test_y)):
        assert split.x.dtype == np.uint8 and split.x.shape == (len(x), 28, 28, 1) and split.x.flags.c_contiguous
        assert np.array_equal(split.x[..., 0], x)
        assert split.y.dtype == np.int64 and np.array_equal(split.y, y)
        assert len(split.classes) == 10 and split.classes[0] == first_class


def test_mnist_root_from_the_environment(tmp_path, monkeypatch):
    root = tmp_path / "elsewhere"
    _, (test_x, _) = write_mnist(root)
    monkeypatch.setenv("MLP_CLI_DATA", str(root))
    assert np.array_equal(load_splits(Data(dataset="mnist"), 0, ("test",))["test"].x[..., 0], test_x)


# ----------------------------------------------------------------------------- missing data
@pytest.mark.parametrize("dataset, expected", [
    ("mnist", ["MNIST/raw", "train-images-idx3-ubyte", "t10k-labels-idx1-ubyte", ".gz"]),
    ("fashion-mnist", ["FashionMNIST/raw", "train-images-idx3-ubyte"]),
    ("cifar10", ["cifar-10-batches-py", "data_batch_1..5", "test_batch", "batches.meta"]),
    ("cifar100", ["cifar-100-python", "train, test and meta"]),
])
def test_missing_data_names_folder_and_files_and_leaves_nothing(tmp_path, offline, dataset, expected):
    root = tmp_path / "deep" / "data"
    for splits in (("train", "val"), ("test",)):
        with pytest.raises(DataError) as info:
            load_splits(Data(dataset=dataset, root=str(root)), 0, splits)
        message = str(info.value)
        assert "\n" not in message
        assert str(root) in message and all(e in message for e in expected), message
        assert "data.root=DIR" in message and "MLP_CLI_DATA" in message
        assert "Name or service not known" in message  # why the download failed
        assert isinstance(info.value.__cause__, Exception)
        assert not (tmp_path / "deep").exists()  # the partial download and the folders it made are gone
    assert offline  # a download was attempted


def test_failed_download_keeps_what_was_there_and_names_what_is_missing(tmp_path, monkeypatch, offline):
    root = tmp_path / "data"
    write_cifar(root, monkeypatch)
    (root / "cifar-10-batches-py" / "data_batch_3").unlink()
    (root / "unrelated.txt").write_text("mine")
    before = tree(root)
    with pytest.raises(DataError, match=r"missing: data_batch_3;"):
        load_splits(Data(dataset="cifar10", root=str(root)), 0)
    assert tree(root) == before


def test_any_download_failure_becomes_a_data_error(tmp_path, monkeypatch):
    def boom(*args, **kwargs):
        raise PermissionError(13, "Permission denied", "/read-only")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", boom)
    with pytest.raises(DataError, match="Permission denied") as info:
        load_splits(Data(dataset="mnist", root=str(tmp_path / "d")), 0, ("test",))
    assert isinstance(info.value.__cause__, PermissionError)
    assert not (tmp_path / "d").exists()


def test_gz_only_mnist_that_cannot_be_extracted_says_so(tmp_path, monkeypatch):
    root = tmp_path / "data"
    write_mnist(root)
    raw = root / "MNIST" / "raw"
    for f in list(raw.iterdir()):
        write_idx(f, _read_idx(f), gz=True)
        f.unlink()
    before = tree(root)

    def offline(*args, **kwargs):  # torchvision only extracts .gz files with the real MD5 sums
        raise urllib.error.URLError("offline")

    monkeypatch.setattr("torchvision.datasets.mnist.download_and_extract_archive", offline)
    with pytest.raises(DataError, match=r"only the \.gz files are there .*gunzip them"):
        load_splits(Data(dataset="mnist", root=str(root)), 0)
    assert tree(root) == before


def _read_idx(path):
    data = path.read_bytes()
    nd = data[3]
    dims = struct.unpack(">" + "I" * nd, data[4:4 + 4 * nd])
    return np.frombuffer(data, np.uint8, offset=4 + 4 * nd).reshape(dims)


# ----------------------------------------------------------------------------- the real MNIST, when present
@pytest.mark.skipif(not (SHARED / "MNIST" / "raw" / "t10k-images-idx3-ubyte").exists(), reason="no local MNIST copy")
def test_real_mnist_when_present():
    s = load_splits(Data(dataset="mnist", root=str(SHARED), val_size=0), 0)
    assert s["train"].x.shape == (60000, 28, 28, 1) and s["test"].x.shape == (10000, 28, 28, 1)
    assert np.bincount(s["test"].y).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    norm = normalization(s["train"], Data(dataset="mnist"))
    assert abs(norm["mean"][0] - 0.1307) < 1e-4 and abs(norm["std"][0] - 0.3081) < 1e-4
