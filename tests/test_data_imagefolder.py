"""Image folders on a few generated PNGs: decoding, resizing, the cache and the errors."""

import os
import stat
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from mlp_cli.config import Data
from mlp_cli.data import imagefolder, load_splits
from mlp_cli.errors import DataError

SIZE = (6, 5)  # H, W


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("MLP_CLI_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("MLP_CLI_DATA", str(tmp_path / "no-data-here"))
    return tmp_path / "cache" / "imagefolder"


def make_folder(root: Path, classes=("cat", "dog", "emu"), n_train=4, n_test=2, seed=0):
    """RGB and grayscale PNGs, most of SIZE, some larger or smaller (to be resized)."""
    rng = np.random.default_rng(seed)
    h, w = SIZE
    for split, n in (("train", n_train), ("test", n_test)):
        for c in classes:
            (root / split / c).mkdir(parents=True)
            for i in range(n):
                size = [(h, w), (h + 3, w + 1), (h - 2, w - 1)][i % 3]
                if i % 4 == 3:
                    Image.fromarray(rng.integers(0, 256, size, dtype=np.uint8), mode="L").save(root / split / c / f"{i:02d}.png")
                else:
                    Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(root / split / c / f"{i:02d}.png")
    (root / "train" / classes[0] / "notes.txt").write_text("not an image")
    return root


def expected(root: Path, split: str, channels: int):
    """What the images should decode to, one by one with Pillow, in ImageFolder's order."""
    classes = sorted(p.name for p in (root / split).iterdir())
    xs, ys = [], []
    for label, c in enumerate(classes):
        for path in sorted((root / split / c).glob("*.png")):
            img = Image.open(path).convert("L" if channels == 1 else "RGB")
            if img.size != (SIZE[1], SIZE[0]):
                img = img.resize((SIZE[1], SIZE[0]), Image.BILINEAR)
            xs.append(np.asarray(img).reshape(*SIZE, channels))
            ys.append(label)
    return np.stack(xs), np.array(ys), classes


def config(root, channels=3, val_size=0):
    return Data(dataset="imagefolder", root=str(root), image_size=SIZE, channels=channels, val_size=val_size)


def snapshot(root: Path):
    return sorted((str(p.relative_to(root)), p.stat().st_mtime_ns, p.stat().st_size) for p in root.rglob("*"))


def read_only(root: Path):
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode & ~(stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH))


def writable(root: Path):
    for p in [root, *root.rglob("*")]:
        p.chmod(p.stat().st_mode | stat.S_IWUSR)


@pytest.mark.parametrize("channels", [3, 1])
def test_decodes_converts_and_resizes_like_pillow(tmp_path, cache, channels):
    root = make_folder(tmp_path / "images")
    read_only(root)
    before = snapshot(root)
    try:
        s = load_splits(config(root, channels), 0)
    finally:
        writable(root)
    assert snapshot(root) == before  # nothing written into the data folder
    for name in ("train", "test"):
        x, y, classes = expected(root, name, channels)
        assert s[name].x.dtype == np.uint8 and s[name].x.shape == (len(y), *SIZE, channels)
        assert s[name].x.flags.c_contiguous
        assert np.array_equal(s[name].x, x) and np.array_equal(s[name].y, y) and s[name].y.dtype == np.int64
        assert s[name].classes == classes == ["cat", "dog", "emu"]
    assert len(list(cache.glob("*.npz"))) == 2  # one per split, in the cache folder


def test_file_order_and_labels_are_torchvision_imagefolders(tmp_path, cache):
    tvd = pytest.importorskip("torchvision.datasets")
    root = make_folder(tmp_path / "images")
    nested = root / "train" / "dog" / "more"
    nested.mkdir()
    Image.fromarray(np.zeros((*SIZE, 3), np.uint8)).save(nested / "a.png")
    ours = imagefolder.scan(root / "train", imagefolder.check_layout(root))
    theirs = tvd.ImageFolder(str(root / "train"))
    assert [(os.path.join(root, "train", rel), label) for rel, label, _, _ in ours] == theirs.samples
    assert imagefolder.check_layout(root) == theirs.classes


def test_cache_is_reused_and_invalidated_when_a_file_changes(tmp_path, cache, monkeypatch):
    root = make_folder(tmp_path / "images")
    decoded = []
    real = imagefolder.decode_images

    def counting(paths, *args, **kwargs):
        decoded.append(len(paths))
        return real(paths, *args, **kwargs)

    monkeypatch.setattr(imagefolder, "decode_images", counting)
    first = load_splits(config(root), 0, ("train",))["train"]
    assert decoded == [12]
    again = load_splits(config(root), 0, ("train",))["train"]
    assert decoded == [12]  # from the cache
    assert np.array_equal(first.x, again.x) and np.array_equal(first.y, again.y) and first.classes == again.classes
    old_cache = set(cache.glob("*.npz"))

    # a file changes: decoded again, and the stale cache file is replaced
    path = root / "train" / "dog" / "00.png"
    Image.fromarray(np.full((*SIZE, 3), 7, np.uint8)).save(path)
    os.utime(path, ns=(path.stat().st_atime_ns, path.stat().st_mtime_ns + 10**9))
    changed = load_splits(config(root), 0, ("train",))["train"]
    assert decoded == [12, 12]
    assert (changed.x == 7).all(axis=(1, 2, 3)).sum() == 1
    assert len(set(cache.glob("*.npz"))) == 1 and set(cache.glob("*.npz")) != old_cache

    # other settings are other caches
    load_splits(config(root, channels=1), 0, ("train",))
    assert decoded == [12, 12, 12] and len(list(cache.glob("*.npz"))) == 2
    # no temporary files left behind, no pickles inside
    assert [p.suffix for p in cache.iterdir()] == [".npz", ".npz"]
    for p in cache.glob("*.npz"):
        with np.load(p, allow_pickle=False) as z:
            assert sorted(z.files) == ["classes", "x", "y"]


def test_a_damaged_cache_is_rebuilt(tmp_path, cache):
    root = make_folder(tmp_path / "images")
    good = load_splits(config(root), 0, ("test",))["test"]
    (path,) = cache.glob("*.npz")
    path.write_bytes(b"garbage")
    assert np.array_equal(load_splits(config(root), 0, ("test",))["test"].x, good.x)


def test_test_split_alone_decodes_no_training_image(tmp_path, cache, monkeypatch):
    root = make_folder(tmp_path / "images")
    seen = []
    real = imagefolder.decode_images
    monkeypatch.setattr(imagefolder, "decode_images", lambda paths, *a, **k: seen.extend(paths) or real(paths, *a, **k))
    s = load_splits(config(root), 0, ("test",))
    assert list(s) == ["test"] and len(s["test"]) == 6
    assert seen and all(Path(p).parent.parent.name == "test" for p in seen)


def test_val_split_comes_from_train(tmp_path, cache):
    root = make_folder(tmp_path / "images")
    s = load_splits(config(root, val_size=0.25), 0)
    assert (len(s["train"]), len(s["val"]), len(s["test"])) == (9, 3, 6)


def test_unwritable_cache_only_warns(tmp_path, monkeypatch, capsys):
    root = make_folder(tmp_path / "images")
    blocker = tmp_path / "file"
    blocker.write_text("")
    monkeypatch.setenv("MLP_CLI_CACHE", str(blocker / "cache"))  # below a file: cannot be created
    s = load_splits(config(root), 0, ("test",))
    assert len(s["test"]) == 6
    assert "could not write the image cache in" in capsys.readouterr().err


# ----------------------------------------------------------------------------- errors
def no_cache_written(cache):
    return not cache.exists() or not any(cache.iterdir())


def test_missing_folder(tmp_path, cache):
    root = tmp_path / "nowhere"
    with pytest.raises(DataError) as info:
        load_splits(config(root), 0)
    msg = str(info.value)
    assert str(root) in msg and f"{root}/train/<class>/<image>" in msg and f"{root}/test/<class>/<image>" in msg
    assert "data.root=DIR" in msg and "MLP_CLI_DATA" in msg
    assert not root.exists() and no_cache_written(cache)


@pytest.mark.parametrize("missing", ["train", "test"])
def test_missing_split_folder(tmp_path, cache, missing):
    root = make_folder(tmp_path / "images")
    os.rename(root / missing, tmp_path / "moved")
    with pytest.raises(DataError, match=f"{root / missing} not found; imagefolder expects"):
        load_splits(config(root), 0, ("test",) if missing == "train" else ("train",))
    assert no_cache_written(cache)


def test_no_class_folders(tmp_path, cache):
    root = tmp_path / "images"
    (root / "train").mkdir(parents=True)
    (root / "test").mkdir()
    with pytest.raises(DataError, match="has no class folders"):
        load_splits(config(root), 0)


def test_empty_class_folder(tmp_path, cache):
    root = make_folder(tmp_path / "images")
    (root / "train" / "fox").mkdir()
    (root / "test" / "fox").mkdir()
    with pytest.raises(DataError, match=r"no images in the class folder\(s\) fox"):
        load_splits(config(root), 0, ("train",))
    assert no_cache_written(cache)


def test_classes_differ_between_train_and_test(tmp_path, cache):
    root = make_folder(tmp_path / "images")
    os.rename(root / "test" / "emu", root / "test" / "owl")
    with pytest.raises(DataError, match=r"differ \(only in train/: emu; only in test/: owl\)"):
        load_splits(config(root), 0, ("test",))
    assert no_cache_written(cache)


def test_unreadable_image_is_named(tmp_path, cache):
    root = make_folder(tmp_path / "images")
    bad = root / "test" / "dog" / "00.png"
    bad.write_bytes(b"not a png")
    with pytest.raises(DataError, match=f"cannot read the image {bad}: not an image Pillow can read"):
        load_splits(config(root), 0, ("test",))
    assert no_cache_written(cache)
