"""The torchvision data sets: MNIST, Fashion-MNIST, CIFAR-10 and CIFAR-100.

torchvision finds and parses the files (and downloads them when it can); this module turns the
result into compact NumPy arrays: uint8 images (N, H, W, C) and int64 labels. When the files are
missing and cannot be downloaded, one `DataError` names the folder, the expected files and how to
point the tool at existing data. A failed download leaves nothing behind that it created.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from mlp_cli import registry as R
from mlp_cli.data.split import Split
from mlp_cli.errors import DataError

DOWNLOAD_TIMEOUT = 30.0  # seconds per socket operation, so a blackholed network fails instead of hanging


@dataclass(frozen=True)
class Source:
    name: str  # the config's data.dataset
    tv_class: str  # torchvision.datasets.<tv_class>
    folder: str  # inside root
    train_files: tuple[str, ...]
    test_files: tuple[str, ...]
    other_files: tuple[str, ...]  # needed for either split (CIFAR's label names)
    archives: tuple[str, ...]  # what a download writes next to the files, removed if it fails
    expected: str  # the expected files, for people


_MNIST_TRAIN = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte")
_MNIST_TEST = ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _mnist_like(name: str, tv_class: str) -> Source:
    folder = f"{tv_class}/raw"
    files = _MNIST_TRAIN + _MNIST_TEST
    return Source(
        name, tv_class, folder, _MNIST_TRAIN, _MNIST_TEST, (),
        archives=tuple(f"{folder}/{f}.gz" for f in files),
        expected="{d}/train-images-idx3-ubyte, train-labels-idx1-ubyte, t10k-images-idx3-ubyte and "
        "t10k-labels-idx1-ubyte (or the same names with .gz, which get extracted there)",
    )


def _source(dataset: R.Dataset) -> Source:
    """The files of a torchvision data set (registry.py names its torchvision class)."""
    name, tv_class = dataset.name, dataset.torchvision
    if tv_class in ("MNIST", "FashionMNIST"):
        return _mnist_like(name, tv_class)
    if tv_class == "CIFAR10":
        return Source(
            name, tv_class, "cifar-10-batches-py",
            tuple(f"data_batch_{i}" for i in range(1, 6)), ("test_batch",), ("batches.meta",),
            archives=("cifar-10-python.tar.gz",),
            expected="{d}/data_batch_1..5, test_batch and batches.meta "
            "(the python version of CIFAR-10, cifar-10-python.tar.gz extracted)",
        )
    if tv_class == "CIFAR100":
        return Source(
            name, tv_class, "cifar-100-python", ("train",), ("test",), ("meta",),
            archives=("cifar-100-python.tar.gz",),
            expected="{d}/train, test and meta (the python version of CIFAR-100, cifar-100-python.tar.gz extracted)",
        )
    raise ValueError(f"no files known for torchvision.datasets.{tv_class} ({name})")


SOURCES = {d.name: _source(d) for d in R.DATASETS if d.source == R.TORCHVISION}  # data.dataset -> its files


def load_torchvision(name: str, root: Path, train: bool) -> Split:
    """One split (train=True: the training set, else the test set) as a `Split`."""
    source = SOURCES[name]
    ds = _open(source, Path(root), train)
    x = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    if x.ndim == 3:  # MNIST-like: (N, H, W) -> (N, H, W, 1)
        x = x[..., None]
    x = np.ascontiguousarray(x, dtype=np.uint8)  # CIFAR's HWC is a transposed view: make it compact
    targets = ds.targets
    y = targets.numpy() if hasattr(targets, "numpy") else np.asarray(targets)
    return Split(x, np.ascontiguousarray(y, dtype=np.int64), [str(c) for c in ds.classes])


def _open(source: Source, root: Path, train: bool):
    import torchvision.datasets  # slow to import: only when a torchvision data set is used

    cls = getattr(torchvision.datasets, source.tv_class)
    try:
        return cls(str(root), train=train, download=False)
    except Exception:  # not there (or damaged): try to download it
        pass
    tracked = _tracked(source, root)
    before = _existing(tracked)
    ok = False
    try:
        with _download_guard():
            ds = cls(str(root), train=train, download=True)
        ok = True
        return ds
    except Exception as e:
        raise DataError(_missing_message(source, root, e), f"to a folder that holds {source.folder}/") from e
    finally:
        if not ok:
            _remove_new(tracked, before, top=root / source.folder.split("/")[0])


@contextlib.contextmanager
def _download_guard():
    """A finite network timeout, and torchvision's download chatter on stderr instead of stdout."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(DOWNLOAD_TIMEOUT)
    try:
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        socket.setdefaulttimeout(previous)


def _missing_message(source: Source, root: Path, error: BaseException) -> str:
    folder = root / source.folder
    files = source.train_files + source.test_files + source.other_files
    missing = [f for f in files if not _present(folder / f, source)]
    packed = [f for f in files if not (folder / f).is_file() and (folder / f"{f}.gz").is_file()]
    if missing:
        state = f"missing: {', '.join(missing)}" if len(missing) < len(files) else f"{folder} has none of them"
    elif packed:
        state = f"only the .gz files are there and they could not be extracted: gunzip them in {folder}"
    else:
        state = "the files are there but torchvision rejected them (damaged or a different version?)"
    return (
        f"{source.name} data not found in {root} and the download failed ({_reason(error)}); "
        f"expected {source.expected.format(d=folder)}; {state}"
    )


def _present(path: Path, source: Source) -> bool:
    if source.tv_class in ("MNIST", "FashionMNIST"):
        return path.is_file() or path.with_name(path.name + ".gz").is_file()
    return path.is_file()


def _reason(error: BaseException) -> str:
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[-1] if lines else type(error).__name__
    return text if len(text) <= 160 else text[:157] + "..."


# ----------------------------------------------------------------------------- cleanup after a failed download
def _tracked(source: Source, root: Path) -> list[Path]:
    """Everything a download attempt may create: files, the data set's folders, root and its ancestors."""
    folder = root / source.folder
    paths = [folder / f for f in source.train_files + source.test_files + source.other_files]
    paths += [root / a for a in source.archives]
    top = root / source.folder.split("/")[0]
    paths += [folder, top]
    parent = root
    while True:  # root and the ancestors a download would create (os.makedirs)
        paths.append(parent)
        if parent.exists() or parent.parent == parent:
            break
        parent = parent.parent
    return list(dict.fromkeys(paths))


def _existing(paths: list[Path]) -> set[Path]:
    return {p for p in paths if os.path.lexists(p)}


def _remove_new(tracked: list[Path], before: set[Path], top: Path) -> None:
    for path in tracked:  # deepest first
        if path in before or not os.path.lexists(path):
            continue
        try:
            if path == top and path.is_dir():
                shutil.rmtree(path)  # the data set's own folder, created by this attempt
            elif path.is_dir():
                os.rmdir(path)  # only if empty: root and its ancestors
            else:
                os.unlink(path)
        except OSError:
            pass
