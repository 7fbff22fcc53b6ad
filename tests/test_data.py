"""The data layer on generated data: circles, the validation split, normalization and batches."""

import numpy as np
import pytest

from mlp_cli.config import Augment, Data
from mlp_cli.data import Split, batches, cutout, load_splits, mirror, normalization, normalize, split_indices
from mlp_cli.data.circles import make_circles
from mlp_cli.errors import DataError, UsageError


def image_split(n=10, h=8, w=8, c=3, seed=0):
    rng = np.random.default_rng(seed)
    return Split(rng.integers(0, 256, (n, h, w, c), dtype=np.uint8), np.arange(n, dtype=np.int64),
                 [f"c{i}" for i in range(n)])


IDENTITY_U8 = {"mean": [0.0] * 3, "std": [1 / 255] * 3}  # x == u8 exactly: scale 1, shift 0


def collect(split, batch_size, *, train, seed=None, norm=None, augment=Augment()):
    rng = None if seed is None else np.random.default_rng(seed)
    if norm is None:  # IDENTITY_U8 for as many channels as the images have
        norm = {"mean": [0.0] * split.x.shape[-1], "std": [1 / 255] * split.x.shape[-1]}
    return list(batches(split, batch_size, train=train, rng=rng, normalization=norm, augment=augment))


def as_u8(x):
    """Undo IDENTITY_U8: the batch as uint8 (B, H, W, C)."""
    hwc = x.transpose(0, 2, 3, 1)
    assert np.array_equal(hwc, np.round(hwc))
    return hwc.astype(np.uint8)


# ----------------------------------------------------------------------------- circles
def test_circles_are_fixed_balanced_and_in_their_rings():
    (xt, yt), (xs, ys) = make_circles()
    (xt2, yt2), (xs2, ys2) = make_circles()
    assert np.array_equal(xt, xt2) and np.array_equal(yt, yt2) and np.array_equal(xs, xs2) and np.array_equal(ys, ys2)
    assert xt.shape == (200, 2) and xs.shape == (200, 2) and xt.dtype == np.float32 and yt.dtype == np.int64
    assert not np.array_equal(xt, xs)
    for x, y in ((xt, yt), (xs, ys)):
        assert np.bincount(y).tolist() == [100, 100]
        r = np.hypot(x[:, 0], x[:, 1])
        assert r[y == 0].min() >= 0.5 - 1e-6 and r[y == 0].max() <= 1.7 + 1e-6  # outer ring
        assert r[y == 1].max() <= 0.8 + 1e-6  # inner disk
        assert ((r < 0.8) == (y == 1)).mean() >= 0.9  # the classes overlap only slightly


def test_circles_do_not_depend_on_the_seed():
    cfg = Data(dataset="circles", val_size=0)
    a, b = load_splits(cfg, 0), load_splits(cfg, 123)
    assert a["train"].classes == ["outer", "inner"]
    for name in ("train", "test"):
        assert np.array_equal(a[name].x, b[name].x) and np.array_equal(a[name].y, b[name].y)


# ----------------------------------------------------------------------------- validation split
@pytest.mark.parametrize("val_size, n_val", [(20, 20), (0.25, 50), (1, 1), (0.1, 20)])
def test_val_split_sizes(val_size, n_val):
    s = load_splits(Data(dataset="circles", val_size=val_size), seed=0)
    assert len(s["val"]) == n_val and len(s["train"]) == 200 - n_val and len(s["test"]) == 200


def test_val_split_is_seeded_disjoint_and_complete():
    train, val = split_indices(1000, 0.2, seed=7)
    train2, val2 = split_indices(1000, 0.2, seed=7)
    other_train, other_val = split_indices(1000, 0.2, seed=8)
    assert np.array_equal(train, train2) and np.array_equal(val, val2)
    assert not np.array_equal(val, other_val)
    assert len(val) == 200 and len(np.intersect1d(train, val)) == 0
    assert np.array_equal(np.sort(np.concatenate([train, val])), np.arange(1000))

    # the same through load_splits: the rows of train and val are the training set, once each
    cfg = Data(dataset="circles", val_size=30)
    full = load_splits(Data(dataset="circles", val_size=0), 0)["train"]
    s = load_splits(cfg, seed=3)
    assert load_splits(cfg, seed=3)["val"].x.tobytes() == s["val"].x.tobytes()
    assert load_splits(cfg, seed=4)["val"].x.tobytes() != s["val"].x.tobytes()
    rows = lambda a: sorted(map(bytes, a))  # noqa: E731
    assert rows(np.concatenate([s["train"].x, s["val"].x])) == rows(full.x)
    assert not set(map(bytes, s["train"].x)) & set(map(bytes, s["val"].x))


def test_val_size_zero_gives_an_empty_val_split_and_too_large_fails():
    s = load_splits(Data(dataset="circles", val_size=0), 0)
    assert len(s["val"]) == 0 and s["val"].x.shape == (0, 2) and s["val"].x.dtype == np.float32
    assert len(s["train"]) == 200
    with pytest.raises(DataError, match="val_size"):
        load_splits(Data(dataset="circles", val_size=200), 0)


@pytest.mark.parametrize("train_size, n_train", [(50, 50), (0.25, 45), (1, 1), (180, 180), (None, 180)])
def test_train_size_keeps_a_seeded_part_of_what_the_validation_split_leaves(train_size, n_train):
    cfg = Data(dataset="circles", val_size=20, train_size=train_size)
    s = load_splits(cfg, seed=5)
    whole = load_splits(Data(dataset="circles", val_size=20), seed=5)
    assert len(s["train"]) == n_train and s["train"].x.dtype == np.float32
    # The validation and test splits do not depend on train_size; the kept examples are training ones.
    assert s["val"].x.tobytes() == whole["val"].x.tobytes() and s["test"].x.tobytes() == whole["test"].x.tobytes()
    rows = lambda a: set(map(bytes, a))  # noqa: E731
    assert rows(s["train"].x) <= rows(whole["train"].x)
    # Drawn with the run's seed: the same seed keeps the same examples (in the data set's order), another does not.
    assert load_splits(cfg, seed=5)["train"].x.tobytes() == s["train"].x.tobytes()
    if n_train not in (1, 180):
        assert load_splits(cfg, seed=6)["train"].x.tobytes() != s["train"].x.tobytes()
        order = [whole["train"].x.tobytes().find(bytes(row)) for row in s["train"].x]
        assert order == sorted(order)


@pytest.mark.parametrize("train_size, message", [
    (181, "data.train_size=181 asks for 181 training examples but the training split has 180 examples left after "
          "the validation split (20 of 200); use a count up to 180"),
    (0.001, "data.train_size=0.001 keeps no example"),
])
def test_train_size_that_asks_for_too_many_or_none_is_a_usage_error(train_size, message):
    with pytest.raises(UsageError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_splits(Data(dataset="circles", val_size=20, train_size=train_size), 0)


@pytest.mark.parametrize("train_size", [0, -3, 2.5, "all"])
def test_train_size_must_be_a_positive_count_or_fraction(train_size):
    from mlp_cli.config import ConfigError, validate

    raw = {"data": {"dataset": "circles", "train_size": train_size}, "model": {"layers": [{"type": "linear",
           "out_features": 2}]}, "train": {"epochs": 1, "batch_size": 4}, "optim": {"lr": 0.1}}
    with pytest.raises(ConfigError, match="data.train_size"):
        validate(raw, "c.yaml")


def test_only_the_requested_splits_are_returned():
    assert list(load_splits(Data(dataset="circles"), 0, ("test",))) == ["test"]
    assert list(load_splits(Data(dataset="circles"), 0, ("val", "train"))) == ["val", "train"]


# ----------------------------------------------------------------------------- normalization
def test_normalization_of_a_known_array():
    x = np.zeros((4, 2, 2, 3), np.uint8)
    x[:2, ..., 0] = 255  # channel 0: half 0, half 255 -> mean 0.5, std 0.5
    x[..., 1] = 51  # channel 1: constant 0.2 -> std 0 becomes 1
    x[..., 2] = np.arange(16, dtype=np.uint8).reshape(4, 2, 2) * 17  # 0, 17, ..., 255
    norm = normalization(Split(x, np.zeros(4, np.int64), ["a"]), Data(dataset="cifar10"))
    v = np.arange(16) * 17 / 255
    np.testing.assert_allclose(norm["mean"], [0.5, 0.2, v.mean()], rtol=0, atol=1e-12)
    np.testing.assert_allclose(norm["std"], [0.5, 1.0, v.std()], rtol=0, atol=1e-12)

    rng = np.random.default_rng(0)
    big = rng.integers(0, 256, (3000, 5, 5, 3), dtype=np.uint8)  # several chunks
    norm = normalization(Split(big, np.zeros(3000, np.int64), ["a"]), Data(dataset="cifar10"))
    ref = big.reshape(-1, 3).astype(np.float64) / 255
    np.testing.assert_allclose(norm["mean"], ref.mean(0), rtol=1e-12)
    np.testing.assert_allclose(norm["std"], ref.std(0), rtol=1e-12)


def test_normalization_identity_without_normalize_and_for_circles():
    split = image_split(c=1)
    assert normalization(split, Data(dataset="mnist", normalize=False)) == {"mean": [0.0], "std": [1.0]}
    circles = load_splits(Data(dataset="circles"), 0, ("train",))["train"]
    assert normalization(circles, Data(dataset="circles", normalize=True)) == {"mean": [0.0, 0.0], "std": [1.0, 1.0]}


def test_batches_normalize_like_a_float64_reference():
    split = image_split(n=37, h=6, w=5, c=3, seed=1)
    norm = normalization(split, Data(dataset="cifar10"))
    ref = (split.x / 255.0 - np.array(norm["mean"])) / np.array(norm["std"])
    got = np.concatenate([x for x, _ in collect(split, 8, train=False, norm=norm)])
    assert got.dtype == np.float32
    np.testing.assert_allclose(got.transpose(0, 2, 3, 1), ref, rtol=0, atol=1e-6)


@pytest.mark.parametrize("channels", [1, 3])
def test_normalize_is_the_plain_float32_formula_bit_for_bit(channels):
    """The fast path (cast, then rows of H*W*C numbers times the tiled factors) rounds exactly as
    u8 * scale[c] + shift[c] in float32, also for a non-contiguous view (a center crop)."""
    from mlp_cli.data.pipeline import _scale_shift

    x = image_split(n=6, h=9, w=7, c=channels, seed=3).x
    norm = {"mean": [0.3, 0.5, 0.45][:channels], "std": [0.2, 0.27, 0.31][:channels]}
    scale, shift = _scale_shift(norm, channels, image=True)
    for images in (x, x[:, 1:8, 2:6]):
        got = normalize(images, norm)
        expected = images.astype(np.float32) * scale + shift
        assert got.transpose(0, 2, 3, 1).flags.c_contiguous
        assert np.array_equal(got.transpose(0, 2, 3, 1), expected)


# ----------------------------------------------------------------------------- batches
def test_batch_shapes_dtype_and_channels_last_layout():
    split = image_split(n=10, h=8, w=6, c=3)
    for train, seed in ((True, 0), (False, None)):
        out = collect(split, 4, train=train, seed=seed, augment=Augment(crop=5, hflip=True))
        assert [len(y) for _, y in out] == [4, 4, 2]  # the last partial batch is kept
        for x, y in out:
            assert x.dtype == np.float32 and x.shape == (len(y), 3, 5, 5) and y.dtype == np.int64
            assert x.transpose(0, 2, 3, 1).flags.c_contiguous


def test_eval_is_in_order_and_center_cropped():
    split = image_split(n=7, h=8, w=10, c=3)
    out = collect(split, 3, train=False, augment=Augment(crop=4, crop_padding=2, hflip=True))
    x = np.concatenate([as_u8(x) for x, _ in out])
    assert np.array_equal(np.concatenate([y for _, y in out]), np.arange(7))
    assert np.array_equal(x, split.x[:, 2:6, 3:7])  # margins (8-4)/2 = 2 and (10-4)/2 = 3
    # no crop: the images as they are
    x = np.concatenate([as_u8(x) for x, _ in collect(split, 3, train=False)])
    assert np.array_equal(x, split.x)


def reference_crops(split, batch_size, seed, crop, pad, hflip, holes=None, norm=None):
    """The training pipeline written the slow way, image by image, drawing the same numbers.

    Returns the order and the uint8 crops; with `holes` (a cutout size), the crops normalized by
    `norm` and then zeroed image by image in a clipped square around centres drawn after the flips."""
    rng = np.random.default_rng(seed)
    order = rng.permutation(len(split))
    out = []
    for start in range(0, len(split), batch_size):
        index = order[start:start + batch_size]
        b = len(index)
        size = split.x.shape[1] + 2 * pad
        if crop != split.x.shape[1] or pad or hflip:  # no crop, padding or flip: nothing drawn
            oy = rng.integers(0, size - crop + 1, b)
            ox = rng.integers(0, size - crop + 1, b)
        else:
            oy = ox = np.zeros(b, int)
        flip = rng.random(b) < 0.5 if hflip else np.zeros(b, bool)
        crops = []
        for k, i in enumerate(index):
            img = np.pad(split.x[i], ((pad, pad), (pad, pad), (0, 0)))
            img = img[oy[k]:oy[k] + crop, ox[k]:ox[k] + crop]
            crops.append(img[:, ::-1] if flip[k] else img)
        if holes is None:
            out += crops
            continue
        x = normalize(np.stack(crops), norm).transpose(0, 2, 3, 1).copy()  # (B, H, W, C)
        cy, cx = rng.integers(0, crop, b), rng.integers(0, crop, b)
        for k in range(b):
            top, left = cy[k] - holes // 2, cx[k] - holes // 2
            x[k, max(top, 0):max(top + holes, 0), max(left, 0):max(left + holes, 0)] = 0.0
        out += list(x)
    return order, np.stack(out)


@pytest.mark.parametrize("channels", [3, 1])  # 1: the window gather of single-channel images
@pytest.mark.parametrize("crop, pad, hflip", [(5, 0, True), (8, 2, True), (6, 3, False), (None, 2, False)])
def test_train_crops_and_flips_match_a_per_image_reference(crop, pad, hflip, channels):
    split = image_split(n=23, h=8, w=8, c=channels, seed=2)
    augment = Augment(crop=crop, crop_padding=pad, hflip=hflip)
    out = collect(split, 5, train=True, seed=11, augment=augment)
    got = np.concatenate([as_u8(x) for x, _ in out])
    order, ref = reference_crops(split, 5, 11, crop or 8, pad, hflip)
    assert np.array_equal(np.concatenate([y for _, y in out]), order)
    assert np.array_equal(got, ref)
    # and each one is a window of its zero-padded image, flipped or not
    for img, i in zip(got, order):
        padded = np.pad(split.x[i], ((pad, pad), (pad, pad), (0, 0)))
        c = img.shape[0]
        windows = [padded[a:a + c, b:b + c] for a in range(padded.shape[0] - c + 1) for b in range(padded.shape[1] - c + 1)]
        assert any(np.array_equal(img, w) or (hflip and np.array_equal(img[:, ::-1], w)) for w in windows)


@pytest.mark.parametrize("channels", [3, 1])
def test_crops_of_a_non_contiguous_data_set(channels):
    base = image_split(n=12, h=8, w=8, c=channels, seed=3)
    split = Split(base.x[:, ::-1], base.y, base.classes)  # a view with negative strides
    assert not split.x.flags.c_contiguous
    augment = Augment(crop=5, hflip=True)
    got = np.concatenate([as_u8(x) for x, _ in collect(split, 5, train=True, seed=2, augment=augment)])
    _, ref = reference_crops(split, 5, 2, 5, 0, True)
    assert np.array_equal(got, ref)


def test_flips_flip_about_half_of_the_images():
    split = image_split(n=200, h=4, w=5, c=1)
    norm = {"mean": [0.0], "std": [1 / 255]}
    out = collect(split, 64, train=True, seed=0, norm=norm, augment=Augment(hflip=True))
    x = np.concatenate([as_u8(x) for x, _ in out])
    order = np.concatenate([y for _, y in out])
    flipped = np.array([np.array_equal(img, split.x[i][:, ::-1]) for img, i in zip(x, order)])
    same = np.array([np.array_equal(img, split.x[i]) for img, i in zip(x, order)])
    assert (flipped | same).all() and 60 < flipped.sum() < 140


def test_same_seed_same_batches_and_every_example_once_per_epoch():
    split = image_split(n=50, h=8, w=8, c=3)
    augment = Augment(crop=6, crop_padding=1, hflip=True)
    a = collect(split, 16, train=True, seed=5, augment=augment)
    b = collect(split, 16, train=True, seed=5, augment=augment)
    c = collect(split, 16, train=True, seed=6, augment=augment)
    assert all(np.array_equal(xa, xb) and np.array_equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b))
    assert not np.array_equal(np.concatenate([y for _, y in a]), np.concatenate([y for _, y in c]))
    assert [len(y) for _, y in a] == [16, 16, 16, 2]
    assert np.array_equal(np.sort(np.concatenate([y for _, y in a])), np.arange(50))


def test_training_without_augmentation_shuffles_only():
    split = image_split(n=9, h=4, w=4, c=3)
    out = collect(split, 4, train=True, seed=1)
    order = np.concatenate([y for _, y in out])
    assert np.array_equal(order, np.random.default_rng(1).permutation(9))
    assert np.array_equal(np.concatenate([as_u8(x) for x, _ in out]), split.x[order])


def test_train_batches_need_a_generator():
    with pytest.raises(ValueError, match="Generator"):
        next(batches(image_split(), 4, train=True, rng=None, normalization=None, augment=Augment()))


def test_feature_batches():
    split = load_splits(Data(dataset="circles", val_size=0), 0, ("train",))["train"]
    norm = normalization(split, Data(dataset="circles"))
    out = list(batches(split, 64, train=True, rng=np.random.default_rng(0), normalization=norm, augment=Augment()))
    assert [x.shape for x, _ in out] == [(64, 2), (64, 2), (64, 2), (8, 2)]
    assert all(x.dtype == np.float32 for x, _ in out)
    order = np.random.default_rng(0).permutation(200)
    assert np.array_equal(np.concatenate([x for x, _ in out]), split.x[order])
    ev = list(batches(split, 150, train=False, rng=None, normalization=norm, augment=Augment()))
    assert np.array_equal(np.concatenate([x for x, _ in ev]), split.x) and [len(y) for _, y in ev] == [150, 50]


# ----------------------------------------------------------------------------- cutout
CIFAR_LIKE = {"mean": [0.49, 0.48, 0.45], "std": [0.25, 0.24, 0.26]}  # zero is not a uint8 value after it


@pytest.mark.parametrize("crop, pad, hflip, holes", [(6, 2, True, 3), (None, 0, False, 4), (8, 1, True, 7),
                                                     (5, 0, False, 1)])
def test_cutout_matches_a_per_image_reference(crop, pad, hflip, holes):
    split = image_split(n=23, h=8, w=8, c=3, seed=4)
    out = collect(split, 5, train=True, seed=9, norm=CIFAR_LIKE,
                  augment=Augment(crop=crop, crop_padding=pad, hflip=hflip, cutout=holes))
    order, ref = reference_crops(split, 5, 9, crop or 8, pad, hflip, holes=holes, norm=CIFAR_LIKE)
    assert np.array_equal(np.concatenate([y for _, y in out]), order)
    got = np.concatenate([x for x, _ in out]).transpose(0, 2, 3, 1)
    assert got.tobytes() == ref.tobytes()  # bit for bit, +0.0 in the holes
    zeroed = (got == 0).all(axis=3).sum(axis=(1, 2))
    assert zeroed.max() <= holes * holes and zeroed.min() >= (holes - holes // 2) ** 2  # whole or clipped squares


def test_cutout_is_vectorized_in_place_and_keeps_the_layout():
    x = np.random.default_rng(0).standard_normal((64, 5, 7, 3)).astype(np.float32).transpose(0, 3, 1, 2)
    before = x.copy()
    assert cutout(x, np.random.default_rng(1), 4) is x
    assert x.transpose(0, 2, 3, 1).flags.c_contiguous
    draws = np.random.default_rng(1)
    cy, cx = draws.integers(0, 5, 64), draws.integers(0, 7, 64)  # rows, then columns
    for k in range(64):
        r0, c0 = cy[k] - 2, cx[k] - 2
        expect = before[k].copy()
        expect[:, max(r0, 0):r0 + 4, max(c0, 0):c0 + 4] = 0
        assert np.array_equal(x[k], expect)
    with pytest.raises(ValueError, match="not smaller than the images"):
        cutout(x, np.random.default_rng(1), 5)


def test_batches_without_cutout_are_unchanged_bit_for_bit():
    """Adding cutout must not move the draws of configs that do not use it: their batches are still,
    bit for bit, the shuffle-crop-flip definition (the reference draws nothing else)."""
    split = image_split(n=23, h=8, w=8, c=3, seed=5)
    for crop, pad, hflip in ((6, 2, True), (None, 0, True), (7, 0, False)):
        for augment in (Augment(crop=crop, crop_padding=pad, hflip=hflip),
                        Augment(crop=crop, crop_padding=pad, hflip=hflip, cutout=None, test_hflip=True)):
            out = collect(split, 5, train=True, seed=3, norm=CIFAR_LIKE, augment=augment)
            order, ref = reference_crops(split, 5, 3, crop or 8, pad, hflip)
            assert np.array_equal(np.concatenate([y for _, y in out]), order)
            expected = np.concatenate([normalize(ref[i:i + 5], CIFAR_LIKE) for i in range(0, len(ref), 5)])
            assert np.concatenate([x for x, _ in out]).tobytes() == expected.tobytes()
    # and with cutout, the first batch is the same crops with holes: cutout draws after them
    plain = collect(split, 23, train=True, seed=3, norm=CIFAR_LIKE, augment=Augment(crop=6, hflip=True))[0][0]
    holed = collect(split, 23, train=True, seed=3, norm=CIFAR_LIKE, augment=Augment(crop=6, hflip=True, cutout=3))[0][0]
    kept = holed != 0
    assert np.array_equal(holed[kept], plain[kept]) and (~kept).all(axis=1).sum() >= 23 * 4


def test_evaluation_never_cuts_out_nor_flips():
    split = image_split(n=11, h=8, w=8, c=3, seed=6)
    plain = collect(split, 4, train=False, norm=CIFAR_LIKE, augment=Augment(crop=6))
    with_aug = collect(split, 4, train=False, norm=CIFAR_LIKE, augment=Augment(crop=6, cutout=3, test_hflip=True))
    assert all(a.tobytes() == b.tobytes() for (a, _), (b, _) in zip(plain, with_aug))


def test_mirror_keeps_the_engine_layout():
    x = normalize(image_split(n=4, h=5, w=6, c=3).x, CIFAR_LIKE)
    m = mirror(x)
    assert m.shape == x.shape and m.transpose(0, 2, 3, 1).flags.c_contiguous
    assert np.array_equal(m, x[:, :, :, ::-1]) and np.array_equal(mirror(m), x)
