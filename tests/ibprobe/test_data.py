"""Datasets: every source path from a tiny fake folder or array, exact invariants, and the missing-data messages."""
from __future__ import annotations

import struct

import numpy as np
import pytest
import torch

from ibprobe.data import load_dataset, stratified_split, to_model_input
from ibprobe.errors import ConfigError, DataError


def _check_invariants(ds):
    assert ds.images.dtype == np.uint8 and ds.images.ndim == 4
    assert ds.labels.dtype == np.int64 and len(ds.labels) == len(ds.images)
    assert int(ds.images.max()) < ds.levels
    assert ds.train_idx.dtype == np.int64 and ds.test_idx.dtype == np.int64
    assert len(np.intersect1d(ds.train_idx, ds.test_idx)) == 0
    assert len(ds.train_idx) + len(ds.test_idx) == len(ds.images)
    assert ds.labels.max() < ds.num_classes


def test_digits_is_the_real_embedded_set():
    ds = load_dataset("digits")
    _check_invariants(ds)
    assert ds.images.shape == (1797, 1, 8, 8) and ds.levels == 17 and ds.images.max() == 16
    assert ds.classes == [str(i) for i in range(10)]
    # stratified: every class has about 20% of its images in test
    per_class = np.bincount(ds.labels[ds.test_idx], minlength=10) / np.bincount(ds.labels, minlength=10)
    assert np.all(np.abs(per_class - 0.2) < 0.02)
    xs, ys = ds.split("test")
    assert np.array_equal(xs, ds.images[ds.test_idx]) and np.array_equal(ys, ds.labels[ds.test_idx])


def test_split_is_fixed_by_seed_and_spec_reloads_the_same_data():
    a, b, c = load_dataset("digits", seed=3), load_dataset("digits", seed=3), load_dataset("digits", seed=4)
    assert np.array_equal(a.test_idx, b.test_idx)
    assert not np.array_equal(a.test_idx, c.test_idx)
    r = load_dataset(**a.describe())
    assert np.array_equal(r.test_idx, a.test_idx) and np.array_equal(r.images, a.images)


def test_requantise_levels():
    ds = load_dataset("digits", levels=4)
    assert ds.levels == 4 and ds.images.max() == 3
    with pytest.raises(ConfigError):
        load_dataset("digits", levels=40)


def test_stratified_split_keeps_every_class_on_both_sides():
    labels = np.array([0] * 5 + [1] * 2 + [2] * 13)
    tr, te = stratified_split(labels, 0.2, seed=0)
    for c in range(3):
        assert (labels[tr] == c).any() and (labels[te] == c).any()


def test_to_model_input_scales_and_normalises_exactly():
    x = np.array([[[[0, 8, 16]]]], dtype=np.uint8)  # (1, 1, 1, 3)
    assert torch.equal(to_model_input(x, 17), torch.tensor([[[[0.0, 0.5, 1.0]]]]))
    y = to_model_input(x, 17, normalize=((0.5,), (0.25,)))
    assert torch.allclose(y, torch.tensor([[[[-2.0, 0.0, 2.0]]]]))
    rgb = np.full((2, 3, 2, 2), 255, np.uint8)
    z = to_model_input(rgb, 256, normalize=((0.0, 0.5, 1.0), (1.0, 0.5, 1.0)))
    assert torch.allclose(z[0, :, 0, 0], torch.tensor([1.0, 1.0, 0.0]))


# ---------------------------------------------------------------------------------------------- npy


def test_npy_nchw_nhwc_and_nhw_layouts(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.integers(0, 256, size=(20, 3, 4, 4), dtype=np.uint8)
    y = np.repeat(np.arange(4), 5)
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "nhwc.npy", x.transpose(0, 2, 3, 1))
    np.save(tmp_path / "nhw.npy", x[:, 0])
    np.save(tmp_path / "y.npy", y)
    a = load_dataset("npy", images_path=tmp_path / "x.npy", labels_path=tmp_path / "y.npy")
    b = load_dataset("npy", images_path=tmp_path / "nhwc.npy", labels_path=tmp_path / "y.npy")
    c = load_dataset("npy", images_path=tmp_path / "nhw.npy")
    _check_invariants(a)
    assert np.array_equal(a.images, x) and np.array_equal(b.images, x)
    assert c.images.shape == (20, 1, 4, 4) and np.array_equal(c.images[:, 0], x[:, 0])
    assert a.levels == 256 and a.classes == ["0", "1", "2", "3"] and np.array_equal(a.labels, y)
    assert c.classes == ["0"] and not c.labels.any()  # labels optional
    assert load_dataset(**a.describe()).images.shape == x.shape


def test_npy_declared_levels_and_bad_inputs(tmp_path):
    x = np.random.default_rng(0).integers(0, 17, size=(10, 1, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "x.npy", x)
    assert load_dataset("npy", images_path=tmp_path / "x.npy", levels=17).levels == 17
    with pytest.raises(DataError, match=r"outside \[0, 9\]"):
        load_dataset("npy", images_path=tmp_path / "x.npy", levels=10)
    np.save(tmp_path / "f.npy", x.astype(np.float32) / 16)
    with pytest.raises(DataError, match="dtype float32"):
        load_dataset("npy", images_path=tmp_path / "f.npy")
    np.save(tmp_path / "y.npy", np.zeros(9, np.int64))
    with pytest.raises(DataError, match=r"one label per image, shape \(10,\)"):
        load_dataset("npy", images_path=tmp_path / "x.npy", labels_path=tmp_path / "y.npy")
    np.save(tmp_path / "r5.npy", x[None])
    with pytest.raises(DataError, match="expected"):
        load_dataset("npy", images_path=tmp_path / "r5.npy")
    with pytest.raises(DataError, match="missing.npy does not exist"):
        load_dataset("npy", images_path=tmp_path / "missing.npy")
    (tmp_path / "junk.npy").write_bytes(b"not an array")
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("npy", images_path=tmp_path / "junk.npy")
    with pytest.raises(DataError, match="--images"):
        load_dataset("npy")


# ---------------------------------------------------------------------------------------------- folders


def _write_folder(root, classes, n_per_class, size=(4, 4), mode="L", seed=0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    arrays = {}
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(n_per_class):
            shape = size if mode == "L" else (*size, 3)
            a = rng.integers(0, 256, size=shape, dtype=np.uint8)
            Image.fromarray(a, mode=mode).save(root / c / f"{i}.png")
            arrays[(c, i)] = a
    return arrays


def test_image_folder_grayscale(tmp_path, monkeypatch):
    monkeypatch.setenv("IBPROBE_CACHE", str(tmp_path / "cache"))
    arrays = _write_folder(tmp_path / "imgs", ["cat", "dog"], 5)
    ds = load_dataset("folder", data_root=tmp_path / "imgs", seed=1)
    _check_invariants(ds)
    assert ds.classes == ["cat", "dog"] and ds.images.shape == (10, 1, 4, 4) and ds.levels == 256
    assert np.array_equal(ds.images[0, 0], arrays[("cat", 0)])  # lossless PNG round trip
    assert set(ds.labels[ds.test_idx]) == {0, 1}
    assert len(list((tmp_path / "cache").glob("folder-*.npz"))) == 1  # cached outside the data folder
    assert sorted(p.name for p in (tmp_path / "imgs").iterdir()) == ["cat", "dog"]
    again = load_dataset("folder", data_root=tmp_path / "imgs", seed=1)  # from the cache
    assert np.array_equal(again.images, ds.images) and again.classes == ds.classes
    from PIL import Image

    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "imgs" / "dog" / "new.png")
    grown = load_dataset("folder", data_root=tmp_path / "imgs")  # changed tree: cache is not used
    assert len(grown.images) == 11 and (grown.images == 7).all(axis=(1, 2, 3)).any()


def test_image_folder_mixed_sizes_is_a_clear_error(tmp_path):
    from PIL import Image

    _write_folder(tmp_path / "imgs", ["a"], 2)
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "imgs" / "a" / "odd.png")
    with pytest.raises(DataError, match="same size"):
        load_dataset("folder", data_root=tmp_path / "imgs")
    with pytest.raises(DataError, match="does not exist"):
        load_dataset("folder", data_root=tmp_path / "nope")
    (tmp_path / "empty" / "a").mkdir(parents=True)
    with pytest.raises(DataError, match="no images found"):
        load_dataset("folder", data_root=tmp_path / "empty")


def test_cinic10_tree(tmp_path):
    root = tmp_path / "cinic"
    for j, split in enumerate(["train", "valid", "test"]):
        _write_folder(root / split, ["airplane", "bird"], 2 + j, mode="RGB", seed=j)
    ds = load_dataset("cinic10", data_root=root)
    _check_invariants(ds)
    assert ds.images.shape == (2 * (2 + 3 + 4), 3, 4, 4)
    assert len(ds.train_idx) == 2 * 2 and len(ds.test_idx) == 2 * (3 + 4)  # valid and test are held out
    assert ds.classes == ["airplane", "bird"]


def test_cinic10_missing_names_path_and_url(tmp_path):
    with pytest.raises(DataError) as e:
        load_dataset("cinic10", data_root=tmp_path)
    msg = str(e.value)
    assert str(tmp_path / "train") in msg and "datashare.ed.ac.uk" in msg


# ---------------------------------------------------------------------------------------------- torchvision


def _write_idx(path, arr):
    dtype_code = 0x08
    header = struct.pack(">HBB", 0, dtype_code, arr.ndim) + b"".join(struct.pack(">I", s) for s in arr.shape)
    path.write_bytes(header + arr.astype(np.uint8).tobytes())


def test_mnist_from_fake_raw_files(tmp_path):
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    rng = np.random.default_rng(0)
    xtr, xte = rng.integers(0, 256, (12, 28, 28)), rng.integers(0, 256, (4, 28, 28))
    ytr, yte = np.arange(12) % 10, np.arange(4)
    _write_idx(raw / "train-images-idx3-ubyte", xtr)
    _write_idx(raw / "train-labels-idx1-ubyte", ytr)
    _write_idx(raw / "t10k-images-idx3-ubyte", xte)
    _write_idx(raw / "t10k-labels-idx1-ubyte", yte)
    ds = load_dataset("mnist", data_root=tmp_path)
    _check_invariants(ds)
    assert ds.images.shape == (16, 1, 28, 28) and ds.levels == 256
    assert np.array_equal(ds.test_idx, np.arange(12, 16))  # torchvision's own split
    assert np.array_equal(ds.images[ds.test_idx, 0], xte) and np.array_equal(ds.labels[ds.train_idx], ytr)


@pytest.mark.parametrize("name", ["cifar10", "cifar100", "svhn", "mnist", "fashion_mnist"])
def test_torchvision_missing_says_where_and_how(tmp_path, name):
    with pytest.raises(DataError) as e:
        load_dataset(name, data_root=tmp_path / "data")
    msg = str(e.value)
    assert str(tmp_path / "data") in msg and "--download" in msg and "\n" not in msg


def test_unknown_dataset_lists_names():
    with pytest.raises(ConfigError, match="digits"):
        load_dataset("imagenet")


def test_max_train_keeps_a_seeded_subset_as_the_training_split():
    """A quick run trains on a subset; the analysis then knows exactly which images the network saw."""
    full, sub = load_dataset("digits"), load_dataset("digits", max_train=100)
    assert len(sub.train_idx) == 100 and set(sub.train_idx) < set(full.train_idx)
    assert np.array_equal(sub.test_idx, full.test_idx) and sub.spec["max_train"] == 100
    keep = np.sort(np.random.default_rng(0).permutation(len(full.train_idx))[:100])
    assert np.array_equal(sub.train_idx, full.train_idx[keep])
    assert np.array_equal(load_dataset(**sub.spec).train_idx, sub.train_idx)


# ------------------------------------------------------------------------------------------------ user arrays, read safely
def _npy(tmp_path, name, a, **kw):
    np.save(tmp_path / name, a, **kw)
    return tmp_path / name


def test_an_npz_gives_its_one_array_or_the_one_named(tmp_path):
    from ibprobe.data import read_array

    x = np.arange(24, dtype=np.uint8).reshape(2, 1, 3, 4)
    np.savez(tmp_path / "one.npz", x)
    np.savez(tmp_path / "two.npz", x=x, y=np.arange(2))
    assert np.array_equal(read_array(tmp_path / "one.npz", "images"), x)
    assert np.array_equal(read_array(tmp_path / "two.npz", "images", key="x"), x)
    with pytest.raises(ConfigError, match=r"holds 2 arrays \(x, y\); choose one with --images-key NAME"):
        read_array(tmp_path / "two.npz", "images")
    with pytest.raises(ConfigError, match="--labels-key z: .* has no array 'z'; it holds x, y"):
        read_array(tmp_path / "two.npz", "labels", key="z")
    np.savez(tmp_path / "none.npz")
    with pytest.raises(DataError, match="holds no arrays"):
        read_array(tmp_path / "none.npz", "images")
    f = np.asfortranarray(x[0, 0])
    assert np.array_equal(read_array(_npy(tmp_path, "f.npy", f), "images"), f)


@pytest.mark.parametrize("make,match", [
    (lambda p: np.save(p, np.array([1, None], dtype=object), allow_pickle=True), "holds Python objects"),
    (lambda p: np.save(p, np.zeros(3, np.float32)), "has dtype float32"),
    (lambda p: np.save(p, np.zeros(3, "m8[s]")), "has dtype timedelta64"),  # numpy calls it an integer
    (lambda p: p.write_bytes(np.zeros(100, np.uint8).tobytes()), "it is not a .npy or .npz file"),  # a memmap's bytes
    (lambda p: p.write_bytes(b"PK\x03\x04 no zip"), "a damaged .npz"),
    (lambda p: p.write_bytes(b"\x93NUMPY\x01\x00garbage"), ".npy header is damaged"),
    (lambda p: p.mkdir(), "is a folder"),
], ids=["pickle", "float", "timedelta", "raw-bytes", "broken-zip", "broken-header", "folder"])
def test_an_array_file_that_is_not_integers_is_refused_naming_it(tmp_path, make, match):
    from ibprobe.data import read_array

    make(tmp_path / "x.npy")
    with pytest.raises(DataError, match=match) as e:
        read_array(tmp_path / "x.npy", "images")
    assert "x.npy" in str(e.value)


def test_a_size_in_a_header_sizes_nothing_before_the_data_is_there(tmp_path):
    """A header that declares 10^10 images over a file of 64 bytes, or a truncated file, is refused before any
    array of the declared size is made (peak traced memory stays under 1 MB)."""
    import io
    import tracemalloc
    import zipfile

    from ibprobe.data import read_array

    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "|u1", "fortran_order": False, "shape": (10**10, 1, 8, 8)})
    (tmp_path / "lies.npy").write_bytes(buf.getvalue() + bytes(64))
    with zipfile.ZipFile(tmp_path / "lies.npz", "w") as z:  # an .npz member too, which is read the other way
        z.writestr("x.npy", buf.getvalue() + bytes(64))
    tracemalloc.start()
    for name in ("lies.npy", "lies.npz"):
        with pytest.raises(DataError, match=f"{name}.*(truncated|damaged)"):
            read_array(tmp_path / name, "images")
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    assert peak < 2**20, peak


@pytest.mark.parametrize("labels,ok", [
    (np.array([0, 1, 2, 1]), True),
    (np.array([0, 1, 999, 1]), True),  # up to 1000 classes even with few images
    (np.array([0, 1, 10**9, 1]), False),
    (np.array([0, 1, 2**63, 1], dtype=np.uint64), False),
    (np.array([0, -1, 2, 1]), False),
    (np.array([0, 1, 2, 1], dtype=np.uint8), True),
], ids=["small", "below-the-limit", "a-billion", "2**63", "negative", "uint8"])
def test_labels_are_class_indices_checked_before_they_size_anything(tmp_path, labels, ok):
    x = _npy(tmp_path, "x.npy", np.zeros((4, 1, 2, 2), np.uint8))
    y = _npy(tmp_path, "y.npy", labels)
    if ok:
        ds = load_dataset("npy", images_path=x, labels_path=y, levels=2)
        assert ds.num_classes == int(labels.max()) + 1 and ds.labels.dtype == np.int64
    else:
        with pytest.raises(DataError, match=r"y.npy has labels in .*class indices 0..K-1 with K at most"):
            load_dataset("npy", images_path=x, labels_path=y, levels=2)
