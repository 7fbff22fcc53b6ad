"""Where the data comes from: generated circles, torchvision's datasets, image folders.

torchvision does the fetching and parsing; everything after is NumPy. Image folders are
decoded once and cached (.npz, never pickle) in a writable cache folder, keyed by their path
and the names, sizes and modification times of their files.
"""

from __future__ import annotations

import hashlib
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from mlp_cli.data.pipeline import Split
from mlp_cli.errors import DataError

TORCHVISION = {
    "mnist": ("MNIST", "MNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                     "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "fashion-mnist": ("FashionMNIST", "FashionMNIST/raw", ["train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                                                          "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"]),
    "cifar10": ("CIFAR10", "cifar-10-batches-py", [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch", "batches.meta"]),
    "cifar100": ("CIFAR100", "cifar-100-python", ["train", "test", "meta"]),
}
VAL_SEED = 0x5EED  # mixed with the config's seed for the validation split


def load_splits(data_cfg, seed: int, splits=("train", "val", "test")) -> dict[str, Split]:
    """The requested splits. "val" is carved from the training set (data.val_size, seeded);
    "train" is the rest; "test" is the dataset's own test set, never touched by the others."""
    out = {}
    if "train" in splits or "val" in splits:
        full = _load(data_cfg, train=True)
        train_idx, val_idx = split_indices(len(full), data_cfg.val_size, seed)
        if "train" in splits:
            out["train"] = full.subset(train_idx)
        if "val" in splits:
            out["val"] = full.subset(val_idx)
    if "test" in splits:
        out["test"] = _load(data_cfg, train=False)
    return out


def split_indices(n: int, val_size: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, val) index arrays, each sorted; val has val_size examples (a count, or a fraction if < 1)."""
    n_val = int(val_size) if val_size >= 1 else int(round(val_size * n))
    if n_val >= n:
        raise DataError(f"data.val_size {val_size:g} leaves no training examples out of {n}; use a smaller value")
    perm = np.random.default_rng([seed, VAL_SEED]).permutation(n)
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _load(data_cfg, train: bool) -> Split:
    if data_cfg.dataset == "circles":
        from mlp_cli.data.circles import CLASSES, make_circles

        (x, y) = make_circles()[0 if train else 1]
        return Split(x, y, list(CLASSES))
    if data_cfg.dataset == "imagefolder":
        return load_imagefolder(data_cfg, "train" if train else "test")
    return load_torchvision(data_cfg.dataset, data_cfg.resolved_root(), train)


# ----------------------------------------------------------------------------- torchvision
def load_torchvision(name: str, root: Path, train: bool) -> Split:
    import torchvision.datasets as tvd

    cls_name, folder, files = TORCHVISION[name]
    cls = getattr(tvd, cls_name)
    try:
        ds = cls(str(root), train=train, download=False)
    except (RuntimeError, OSError):
        ds = _download(cls, root, train, name, folder, files)
    x = ds.data.numpy() if hasattr(ds.data, "numpy") else np.asarray(ds.data)
    if x.ndim == 3:
        x = x[..., None]  # MNIST: (N, 28, 28) -> (N, 28, 28, 1)
    y = np.asarray(ds.targets.numpy() if hasattr(ds.targets, "numpy") else ds.targets, dtype=np.int64)
    return Split(np.ascontiguousarray(x, dtype=np.uint8), y, [str(c) for c in ds.classes])


def _download(cls, root: Path, train: bool, name: str, folder: str, files: list[str]):
    """Try torchvision's download; offline, fail with one message and leave no empty folders behind."""
    root_existed = root.exists()
    before = set(_tree(root))
    try:
        return cls(str(root), train=train, download=True)
    except Exception as e:  # network errors come as RuntimeError, URLError, OSError, ...
        for p in sorted(set(_tree(root)) - before, key=lambda p: -len(p.parts)):
            if p.is_dir() and not any(p.iterdir()):
                p.rmdir()
        if not root_existed and root.is_dir() and not any(root.iterdir()):
            root.rmdir()
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise DataError(
            f"{name} not found in {root / folder} (expected {', '.join(files)}"
            + (" or their .gz" if "MNIST" in folder else "") + f") and the download failed ({reason}); "
            f"put the files there, or point the tool at a folder that holds {folder}/ with data.root=DIR "
            f"on the command line or the MLP_CLI_DATA environment variable") from None


def _tree(root: Path):
    if not root.exists():
        return []
    return [root, *root.rglob("*")] if root.is_dir() else [root]


# ----------------------------------------------------------------------------- image folders
def load_imagefolder(data_cfg, split_name: str) -> Split:
    """root/<split>/<class>/<image> decoded to uint8 (N, H, W, C), cached after the first time."""
    from mlp_cli.config import default_cache_dir

    root = data_cfg.resolved_root()
    folder = root / split_name
    layout = f"{root}/train/<class>/<image> and {root}/test/<class>/<image>"
    if not folder.is_dir():
        raise DataError(f"image folder {folder} not found; imagefolder expects {layout} "
                        "(set data.root=DIR or MLP_CLI_DATA to the folder holding train/ and test/)")
    classes = sorted(e.name for e in os.scandir(folder) if e.is_dir())
    train_classes = sorted(e.name for e in os.scandir(root / "train") if e.is_dir()) if (root / "train").is_dir() else classes
    if not classes:
        raise DataError(f"{folder} has no class folders; imagefolder expects {layout}")
    if classes != train_classes:
        raise DataError(f"the class folders of {folder} ({', '.join(classes)}) differ from those of {root / 'train'} "
                        f"({', '.join(train_classes)}); both splits need the same classes")
    samples = _scan(folder, classes)
    if not samples:
        raise DataError(f"{folder} holds no images (.png, .jpg, .jpeg, .bmp, ...); imagefolder expects {layout}")
    h, w = data_cfg.image_size
    channels = data_cfg.channels
    key = hashlib.sha256(json.dumps([str(folder.resolve()), channels, [h, w],
                                     [(str(p.relative_to(folder)), s, m) for p, _, s, m in samples]]).encode()).hexdigest()
    cache = default_cache_dir() / "imagefolder" / f"{split_name}-{key[:24]}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                return Split(z["x"], z["y"], [str(c) for c in z["classes"]])
        except (OSError, ValueError, KeyError):
            pass  # a damaged cache is rebuilt below
    x = _decode_all([p for p, _, _, _ in samples], channels, (h, w), desc=f"decoding {folder}")
    y = np.array([label for _, label, _, _ in samples], np.int64)
    _save_cache(cache, x, y, classes)
    return Split(x, y, classes)


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


def _scan(folder: Path, classes: list[str]):
    """[(path, label, size, mtime_ns)] in class then file-name order, as torchvision's ImageFolder lists them."""
    samples = []
    for label, name in enumerate(classes):
        for dirpath, _, filenames in sorted(os.walk(folder / name, followlinks=True)):
            for fname in sorted(filenames):
                if fname.lower().endswith(IMAGE_EXTENSIONS):
                    p = Path(dirpath) / fname
                    st = p.stat()
                    samples.append((p, label, st.st_size, st.st_mtime_ns))
    return samples


def _decode_all(paths, channels: int, size: tuple[int, int], desc: str) -> np.ndarray:
    import sys

    from PIL import Image
    from tqdm import tqdm

    h, w = size
    mode = "L" if channels == 1 else "RGB"
    out = np.empty((len(paths), h, w, channels), np.uint8)

    def decode(i):
        try:
            with Image.open(paths[i]) as img:
                img = img.convert(mode)
                if img.size != (w, h):
                    img = img.resize((w, h), Image.BILINEAR)
                out[i] = np.asarray(img).reshape(h, w, channels)
        except OSError as e:
            raise DataError(f"cannot read image {paths[i]}: {e}; remove or replace the file") from None

    with ThreadPoolExecutor(max_workers=min(4, os.cpu_count() or 1)) as pool:
        list(tqdm(pool.map(decode, range(len(paths)), chunksize=256), total=len(paths), desc=desc, unit="img",
                  disable=not sys.stderr.isatty(), leave=False))
    return out


def _save_cache(path: Path, x, y, classes) -> None:
    from mlp_cli.checkpoint import atomic_write

    try:
        path.parent.mkdir(parents=True, exist_ok=True)

        def write(tmp):
            with open(tmp, "wb") as f:
                np.savez(f, x=x, y=y, classes=np.array(classes, dtype=str))

        atomic_write(path, write)
    except OSError:
        pass  # a cache we cannot write only costs time on the next run
