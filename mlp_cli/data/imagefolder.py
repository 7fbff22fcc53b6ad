"""Image folders: root/train/<class>/<image> and root/test/<class>/<image>, decoded once and cached.

The files are listed as torchvision's `ImageFolder` lists them (class folders sorted by name give
the labels 0, 1, ...; files sorted, torchvision's image extensions) without importing torch, so a
cached load stays fast. Each image is decoded with Pillow, converted to "L" (channels 1) or "RGB"
(channels 3) and resized (bilinear) to data.image_size when it differs. The decoded split is cached
as an .npz (never pickle) in `default_cache_dir() / "imagefolder"`, written atomically, keyed by the
folder's absolute path, the channels, the image size and the names, sizes and modification times of
the files. The data folder itself is only read, so it may be read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import sys
from pathlib import Path

import numpy as np

from mlp_cli.data.split import Split
from mlp_cli.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
CACHE_FORMAT = 1  # part of the key: bump when the decoding changes
_CHUNK = 256  # images per progress-bar update


def load_imagefolder(data_cfg, split_name: str) -> Split:
    """The "train" or "test" folder of data.root as uint8 (N, H, W, C), from the cache when it is current."""
    from mlp_cli.config import default_cache_dir

    root = data_cfg.resolved_root()
    classes = check_layout(root)
    folder = root / split_name
    files = scan(folder, classes)
    h, w = (int(v) for v in data_cfg.image_size)
    channels = int(data_cfg.channels)

    ident = _digest([CACHE_FORMAT, str(folder.absolute()), channels, [h, w]])
    content = _digest([[rel, label, size, mtime] for rel, label, size, mtime in files])
    cache_dir = default_cache_dir() / "imagefolder"
    stem = re.sub(r"[^A-Za-z0-9_.-]+", "_", root.absolute().name or "root")[:40]
    cache = cache_dir / f"{stem}-{split_name}-{ident}-{content}.npz"

    cached = _read_cache(cache, len(files), (h, w, channels), classes)
    if cached is not None:
        return cached
    x = decode_images([folder / rel for rel, _, _, _ in files], channels, (h, w), desc=f"decoding {folder}")
    y = np.array([label for _, label, _, _ in files], dtype=np.int64)
    _write_cache(cache, x, y, classes, stale=f"{stem}-{split_name}-{ident}-*.npz")
    return Split(x, y, list(classes))


def _layout(root: Path) -> str:
    return (f"imagefolder expects {root}/train/<class>/<image> and {root}/test/<class>/<image> "
            f"(the same class folders in both; {', '.join(IMAGE_EXTENSIONS)} files)")


def _point() -> str:
    return "set data.root=DIR on the command line or the MLP_CLI_DATA environment variable to the folder holding train/ and test/"


def check_layout(root: Path) -> list[str]:
    """The class names, after checking that root/train and root/test exist and have the same class folders."""
    if not root.is_dir():
        raise DataError(f"image folder {root} not found; {_layout(root)}; {_point()}")
    found = {}
    for split_name in ("train", "test"):
        folder = root / split_name
        if not folder.is_dir():
            raise DataError(f"{folder} not found; {_layout(root)}; {_point()}")
        try:
            found[split_name] = sorted(e.name for e in os.scandir(folder) if e.is_dir())
        except OSError as e:
            raise DataError(f"cannot read {folder} ({e.strerror}); {_layout(root)}") from e
        if not found[split_name]:
            raise DataError(f"{folder} has no class folders; {_layout(root)}")
    train, test = found["train"], found["test"]
    if train != test:
        only_train = sorted(set(train) - set(test))
        only_test = sorted(set(test) - set(train))
        detail = "; ".join(part for part in (
            f"only in train/: {', '.join(only_train)}" if only_train else "",
            f"only in test/: {', '.join(only_test)}" if only_test else "") if part)
        raise DataError(f"the class folders of {root}/train and {root}/test differ ({detail}); {_layout(root)}")
    return train


def scan(folder: Path, classes: list[str]) -> list[tuple[str, int, int, int]]:
    """[(path relative to folder, label, size, mtime_ns)] in the order of torchvision's ImageFolder:
    classes in order, then sorted(os.walk(class folder, followlinks=True)) with sorted file names."""
    files = []
    empty = []
    prefix = len(str(folder)) + 1
    for label, name in enumerate(classes):
        count = len(files)
        for _, entries in _walk(os.path.join(folder, name)):
            for entry in entries:
                try:
                    st = entry.stat()
                except OSError as e:
                    raise DataError(f"cannot read {entry.path} ({e.strerror})") from e
                files.append((entry.path[prefix:], label, st.st_size, st.st_mtime_ns))
        if len(files) == count:
            empty.append(name)
    if empty:
        raise DataError(f"{folder}: no images in the class folder(s) {', '.join(empty)}; {_layout(folder.parent)}")
    return files


def _walk(top: str) -> list[tuple[str, list]]:
    """sorted(os.walk(top, followlinks=True)) keeping the image files' DirEntry objects, sorted by name."""
    groups, stack = [], [top]
    while stack:
        path = stack.pop()
        entries = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if entry.is_dir():
                        stack.append(entry.path)
                    elif entry.name.lower().endswith(IMAGE_EXTENSIONS):
                        entries.append(entry)
        except OSError as e:
            raise DataError(f"cannot read {path} ({e.strerror})") from e
        entries.sort(key=lambda e: e.name)
        groups.append((path, entries))
    groups.sort(key=lambda g: g[0])
    return groups


def _digest(value) -> str:
    return hashlib.sha256(json.dumps(value, separators=(",", ":")).encode()).hexdigest()[:20]


# ----------------------------------------------------------------------------- decoding
def decode_images(paths: list[Path], channels: int, size: tuple[int, int], desc: str = "decoding") -> np.ndarray:
    """Decode image files into uint8 (N, H, W, C), converted and resized as described above.

    One thread: for small images most of Pillow's time is Python code under the GIL (measured on
    CIFAR-10 JPEGs: 2 or 3 threads were no faster than 1). A progress bar on stderr when it is a
    terminal. A file Pillow cannot read raises DataError naming it.
    """
    from tqdm import tqdm

    h, w = size
    out = np.empty((len(paths), h, w, channels), dtype=np.uint8)
    with tqdm(total=len(paths), desc=desc, unit="img", file=sys.stderr, leave=False,
              disable=not _is_terminal(sys.stderr)) as bar:
        for start in range(0, len(paths), _CHUNK):
            chunk = range(start, min(start + _CHUNK, len(paths)))
            _decode_into(out, paths, chunk, channels, h, w)
            bar.update(len(chunk))
    return out


def _decode_into(out: np.ndarray, paths, chunk: range, channels: int, h: int, w: int) -> None:
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    for i in chunk:
        try:
            with Image.open(paths[i]) as img:
                img = img.convert(mode)
                if img.size != (w, h):
                    img = img.resize((w, h), Image.BILINEAR)
                out[i] = np.asarray(img).reshape(h, w, channels)
        except Exception as e:  # unreadable, truncated, not an image, ...
            raise DataError(f"cannot read the image {paths[i]} ({e}); remove or replace the file") from e


def _is_terminal(stream) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


# ----------------------------------------------------------------------------- cache
def _read_cache(path: Path, n: int, image_shape: tuple[int, int, int], classes: list[str]) -> Split | None:
    if not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as z:
            x, y, cached_classes = z["x"], z["y"], [str(c) for c in z["classes"]]
    except Exception:  # damaged or foreign: decode again and overwrite it
        return None
    if (x.dtype != np.uint8 or x.shape != (n, *image_shape) or y.dtype != np.int64 or y.shape != (n,)
            or cached_classes != list(classes)):
        return None
    return Split(np.ascontiguousarray(x), y, cached_classes)


def _write_cache(path: Path, x: np.ndarray, y: np.ndarray, classes: list[str], stale: str) -> None:
    """Write atomically (files.write_atomic); drop older versions of it."""
    from mlp_cli.files import write_atomic

    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, x=x, y=y, classes=np.array(classes, dtype=str))

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, write)
        for old in path.parent.glob(stale):
            if old != path:
                try:
                    old.unlink()
                except OSError:
                    pass
    except OSError as e:
        print(f"warning: could not write the image cache {path} ({e.strerror or e}); "
              "the images will be decoded again next time", file=sys.stderr)