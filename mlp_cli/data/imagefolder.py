"""Image folders: root/train/<class>/<image> and root/test/<class>/<image>, decoded once and cached.

The files are listed as torchvision's `ImageFolder` lists them (class folders sorted by name give
the labels 0, 1, ...; files sorted, torchvision's image extensions) without importing torch, so a
cached load stays fast, except that hidden names (a leading dot, such as .ipynb_checkpoints, and
macOS's __MACOSX) are skipped: they are the litter of tools, not classes or images. Each image is
decoded with Pillow, converted to "L" (channels 1) or "RGB" (channels 3) and resized (bilinear) to
data.image_size when it differs; without data.image_size, `common_image_size` reads the size all
the images share from their headers. The decoded split is cached
as an .npz (never pickle) in `default_cache_dir() / "imagefolder"`, written atomically, keyed by the
folder's absolute path, the channels, the image size and the names, sizes and modification times of
the files. The data folder itself is only read, so it may be read-only.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
from pathlib import Path

import numpy as np

from mlp_cli import registry as R
from mlp_cli.console import Console
from mlp_cli.data.split import Split
from mlp_cli.errors import DataError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")  # torchvision's
CACHE_FORMAT = 1  # part of the key: bump when the decoding changes
_CHUNK = 256  # images per progress-bar update
_UNWRITABLE: set[Path] = set()  # cache folders already warned about


def load_imagefolder(data_cfg, split_name: str) -> Split:
    """The "train" or "test" folder of data.root as uint8 (N, H, W, C), from the cache when it is current."""
    from mlp_cli.config import default_cache_dir

    root = data_cfg.resolved_root()
    classes = check_layout(root)
    folder = root / split_name
    files = scan(folder, classes)
    h, w = (int(v) for v in data_cfg.image_size or common_image_size(root))
    channels = int(data_cfg.channels or 3)

    ident = _digest([CACHE_FORMAT, str(folder.absolute()), channels, [h, w]])
    content = _digest([[rel, label, size, mtime] for rel, label, size, mtime in files])
    cache_dir = default_cache_dir() / R.IMAGEFOLDER.name
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


_POINT = "to the folder holding train/ and test/"


def hidden(name: str) -> bool:
    """Names that tools leave behind (.ipynb_checkpoints, .DS_Store, ._x.jpg, __MACOSX): never data."""
    return name.startswith(".") or name == "__MACOSX"


def check_layout(root: Path) -> list[str]:
    """The class names, after checking that root/train and root/test exist and have the same class
    folders, at least two of them."""
    if not root.is_dir():
        what = "is a file, not a folder" if root.exists() else "not found"
        raise DataError(f"image folder {root} {what}; {_layout(root)}", _POINT)
    found = {}
    for split_name in ("train", "test"):
        folder = root / split_name
        if not folder.is_dir():
            raise DataError(f"{folder} not found; {_layout(root)}", _POINT)
        try:
            found[split_name] = sorted(e.name for e in os.scandir(folder) if e.is_dir() and not hidden(e.name))
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
    if len(train) < 2:
        raise DataError(f"{root}/train has a single class folder ({train[0]}): a classifier needs at least 2 "
                        f"classes; {_layout(root)}")
    return train


def common_image_size(root: Path) -> tuple[int, int]:
    """(H, W) that every image of root/train and root/test has, read from the file headers (no
    decoding); ConfigError asking for data.image_size when they differ."""
    from PIL import Image

    from mlp_cli.config import ConfigError

    classes = check_layout(root)
    sizes: dict[tuple[int, int], list[str]] = {}
    failed = None
    for split_name in ("train", "test"):
        folder = root / split_name
        for rel, _, _, _ in scan(folder, classes):
            try:
                with Image.open(folder / rel) as img:
                    w, h = img.size
            except Exception as e:  # noqa: BLE001  decoding reports every unreadable file later
                failed = failed or DataError(f"cannot read the image {folder / rel}: {image_error(e)}")
                continue
            sizes.setdefault((h, w), []).append(str(folder / rel))
    if not sizes and failed:
        raise failed
    if len(sizes) != 1:
        common = sorted(sizes.items(), key=lambda item: -len(item[1]))
        seen = ", ".join(f"{h}x{w} ({len(paths)}, e.g. {paths[0]})" for (h, w), paths in common[:3])
        h, w = common[0][0]
        raise ConfigError(f"data.image_size is not set and the images of {root} differ in size ({seen}"
                          f"{', ...' if len(common) > 3 else ''}); set the size to resize them to, "
                          f"e.g. data.image_size=[{h},{w}]")
    return next(iter(sizes))


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
    groups, stack, seen = [], [top], set()
    while stack:
        path = stack.pop()
        real = os.path.realpath(path)
        if real in seen:  # followlinks: a link back up would be walked until the OS gives up
            raise DataError(f"{path} leads to {real}, already walked (a loop of symbolic links?); remove the link")
        seen.add(real)
        entries = []
        try:
            with os.scandir(path) as it:
                for entry in it:
                    if hidden(entry.name):
                        continue
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
    terminal. Files Pillow cannot read raise one DataError naming them (after trying them all).
    """
    h, w = size
    out = np.empty((len(paths), h, w, channels), dtype=np.uint8)
    failed: list[tuple[Path, DataError]] = []
    with Console().counter(len(paths), desc, "img", leave=False) as bar:
        for start in range(0, len(paths), _CHUNK):
            chunk = range(start, min(start + _CHUNK, len(paths)))
            _decode_into(out, paths, chunk, channels, h, w, failed)
            bar.update(len(chunk))
    if len(failed) == 1:
        raise DataError(f"{failed[0][1]}; remove or replace the file")
    if failed:
        others = ", ".join(str(path) for path, _ in failed[1:4]) + (", ..." if len(failed) > 4 else "")
        raise DataError(f"{len(failed)} images cannot be read; the first: {failed[0][1]}; the others: {others}; "
                        "remove or replace them")
    return out


def _decode_into(out: np.ndarray, paths, chunk: range, channels: int, h: int, w: int, failed: list) -> None:
    from PIL import Image

    mode = "L" if channels == 1 else "RGB"
    for i in chunk:
        try:
            img = read_image(paths[i], mode)
        except DataError as e:
            failed.append((paths[i], e))
            continue
        if img.size != (w, h):
            img = img.resize((w, h), Image.BILINEAR)
        out[i] = np.asarray(img).reshape(h, w, channels)


def image_error(error: BaseException) -> str:
    """What went wrong with an image file, in words, for any exception Pillow or the OS raises
    (Pillow's own messages are clear, e.g. for an image over its decompression-bomb pixel limit)."""
    from PIL import UnidentifiedImageError

    if isinstance(error, FileNotFoundError):
        return "no such file"
    if isinstance(error, IsADirectoryError):
        return "a folder, not an image file"
    if isinstance(error, UnidentifiedImageError):
        return "not an image Pillow can read (PNG, JPEG, BMP, ...)"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    return str(error).rstrip(".") or type(error).__name__


def read_image(path, mode: str):
    """The image file decoded and converted to `mode` ("L" or "RGB"), as a loaded PIL image.

    Any failure (no such file, a folder, not an image, truncated, over Pillow's pixel limit, ...) is
    one DataError naming the file; Pillow's warning about a very large image becomes one line too.
    """
    import warnings

    from PIL import Image

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", Image.DecompressionBombWarning)
            with Image.open(path) as img:
                converted = img.convert(mode)
    except Exception as e:  # noqa: BLE001  Pillow raises OSError, ValueError, SyntaxError, struct.error, ...
        raise DataError(f"cannot read the image {path}: {image_error(e)}") from None
    for warning in caught:
        Console().warn(f"{path}: {warning.message}")
    return converted


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
        if path.parent not in _UNWRITABLE:  # once per folder, not once per split
            _UNWRITABLE.add(path.parent)
            Console().warn(f"could not write the image cache in {path.parent} ({e.strerror or e}); the images "
                           "will be decoded again next time; set MLP_CLI_CACHE to a writable folder")
