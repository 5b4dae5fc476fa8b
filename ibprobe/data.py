"""Datasets as uint8 images [N, C, H, W] with a declared number of intensity levels L and a fixed split.

Every loader returns a `Dataset` whose images hold integers in [0, L-1], int64 labels, class names and a
fixed, seeded train/test split. `Dataset.spec` is the keyword dict that reloads the same data with
`load_dataset(**spec)`, so a run folder can rebuild its data without re-passing flags.

Sources: `digits` (scikit-learn's 1,797 real 8x8 digits, 17 levels, bundled, the default), torchvision sets
(`cifar10`, `cifar100`, `svhn`, `mnist`, `fashion_mnist`) from a data root, `cinic10` and `folder`
(ImageFolder trees), and `npy` (user arrays).
"""
from __future__ import annotations

import hashlib
import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from ibprobe.errors import ConfigError, DataError
from ibprobe.rundir.files import atomic_write_bytes

DATASET_NAMES = ("digits", "cifar10", "cifar100", "svhn", "mnist", "fashion_mnist", "cinic10", "folder", "npy")

# (C, H, W), number of classes, levels: known without loading, e.g. for `ibprobe layers --dataset`.
DATASET_SHAPES: dict[str, tuple[tuple[int, int, int], int, int]] = {
    "digits": ((1, 8, 8), 10, 17),
    "cifar10": ((3, 32, 32), 10, 256),
    "cifar100": ((3, 32, 32), 100, 256),
    "svhn": ((3, 32, 32), 10, 256),
    "mnist": ((1, 28, 28), 10, 256),
    "fashion_mnist": ((1, 28, 28), 10, 256),
    "cinic10": ((3, 32, 32), 10, 256),
}

CINIC10_URL = "https://datashare.ed.ac.uk/handle/10283/3192"
IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm")


@dataclass
class Dataset:
    """Images, labels and a fixed split. `images` is uint8 [N, C, H, W] with values in [0, levels-1]."""

    name: str
    images: np.ndarray
    labels: np.ndarray
    levels: int
    classes: list[str]
    train_idx: np.ndarray
    test_idx: np.ndarray
    spec: dict = field(default_factory=dict)

    @property
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(int(s) for s in self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray]:
        """(images, labels) of the "train" or "test" split."""
        if which not in ("train", "test"):
            raise ConfigError(f"split must be 'train' or 'test', got {which!r}")
        idx = self.train_idx if which == "train" else self.test_idx
        return self.images[idx], self.labels[idx]

    def describe(self) -> dict:
        """The keyword arguments that reload this dataset with `load_dataset(**spec)`."""
        return dict(self.spec)


def default_data_root() -> Path:
    """$IBPROBE_DATA, else ./data."""
    return Path(os.environ.get("IBPROBE_DATA", "data"))


def cache_dir() -> Path:
    """Where decoded data is cached (not the data folder): $IBPROBE_CACHE, $XDG_CACHE_HOME/ibprobe, ~/.cache/ibprobe."""
    return Path(os.environ.get("IBPROBE_CACHE") or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
                / "ibprobe")


def load_dataset(
    name: str = "digits",
    *,
    data_root: str | os.PathLike | None = None,
    download: bool = False,
    seed: int = 0,
    test_fraction: float = 0.2,
    images_path: str | os.PathLike | None = None,
    labels_path: str | os.PathLike | None = None,
    levels: int | None = None,
    max_train: int | None = None,
    images_key: str | None = None,
    labels_key: str | None = None,
) -> Dataset:
    """Load a dataset by name; see the module docstring. Raises DataError/ConfigError for user mistakes.

    `max_train`: keep a seeded subset of this many images as the training split (a quick run trains on it); the
    others leave the split, so "the images the network trained on" stays exact.

    `levels`: for `npy`, the declared number of intensity levels; for other sets, an optional coarser
    re-quantisation (x * levels // native_levels). `images_key` / `labels_key`: the array of an .npz file to read
    (not needed when it holds one).
    """
    name = str(name).lower().replace("-", "_")
    if name not in DATASET_NAMES:
        raise ConfigError(f"unknown dataset {name!r}; choose one of: {', '.join(DATASET_NAMES)}")
    if not 0.0 < float(test_fraction) < 1.0:
        raise ConfigError(f"test_fraction must be in (0, 1), got {test_fraction}")
    spec = {
        "name": name, "data_root": None if data_root is None else str(data_root), "seed": int(seed),
        "test_fraction": float(test_fraction), "images_path": None if images_path is None else str(images_path),
        "labels_path": None if labels_path is None else str(labels_path), "levels": levels,
    }
    if max_train is not None:
        spec["max_train"] = int(max_train)
    spec.update({k: str(v) for k, v in (("images_key", images_key), ("labels_key", labels_key)) if v is not None})
    root = Path(data_root) if data_root is not None else default_data_root()
    split: tuple[np.ndarray, np.ndarray] | None = None  # fixed (train_idx, test_idx) of the source
    if name == "digits":
        images, labels, native, classes = _load_digits()
    elif name in ("cifar10", "cifar100", "svhn", "mnist", "fashion_mnist"):
        images, labels, native, classes, split = _load_torchvision(name, root, download)
    elif name == "cinic10":
        images, labels, native, classes, split = _load_cinic10(root)
    elif name == "folder":
        if data_root is None:
            raise DataError("dataset 'folder' needs --data-root DIR, an ImageFolder tree DIR/<class>/<image>.png")
        images, labels, classes = _load_image_folder(root)
        native = 256
    else:
        images, labels, native, classes = _load_npy(images_path, labels_path, levels, images_key, labels_key)
        levels = None  # already the declared level count

    if levels is not None and int(levels) != native:
        levels = int(levels)
        if not 2 <= levels < native:
            raise ConfigError(f"levels={levels} must be between 2 and the data's native {native} levels")
        images = (images.astype(np.int64) * levels // native).astype(np.uint8)
        native = levels
    if split is None:
        split = stratified_split(labels, test_fraction, seed)
    train_idx, test_idx = split
    if max_train is not None and int(max_train) < len(train_idx):
        train_idx = train_idx[np.sort(np.random.default_rng(seed).permutation(len(train_idx))[: int(max_train)])]
    return Dataset(name=name, images=np.ascontiguousarray(images, dtype=np.uint8), labels=labels.astype(np.int64),
                   levels=int(native), classes=list(classes), train_idx=train_idx.astype(np.int64),
                   test_idx=test_idx.astype(np.int64), spec=spec)


def stratified_split(labels: np.ndarray, test_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded stratified split: about test_fraction of each class goes to test (sorted index arrays)."""
    rng = np.random.default_rng(seed)
    train, test = [], []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        k = int(round(test_fraction * len(idx)))
        if len(idx) >= 2:
            k = min(max(k, 1), len(idx) - 1)
        test.append(idx[:k])
        train.append(idx[k:])
    return np.sort(np.concatenate(train)).astype(np.int64), np.sort(np.concatenate(test)).astype(np.int64)


def to_model_input(images: np.ndarray | torch.Tensor, levels: int, normalize: Any = None) -> torch.Tensor:
    """uint8/int images [B, C, H, W] -> float32 x/(levels-1) in [0, 1], then optional (x - mean) / std per channel.

    `normalize` is None or (mean, std), each a scalar or a per-channel sequence (on the [0, 1] scale).
    """
    x = torch.as_tensor(np.asarray(images) if not isinstance(images, torch.Tensor) else images)
    x = x.to(torch.float32) / float(levels - 1)  # (B, C, H, W)
    if normalize is not None:
        try:
            mean, std = normalize
        except (TypeError, ValueError):
            raise ConfigError(f"normalize must be (mean, std), got {normalize!r}") from None
        mean_t = torch.as_tensor(mean, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
        std_t = torch.as_tensor(std, dtype=torch.float32, device=x.device).reshape(1, -1, 1, 1)
        x = (x - mean_t) / std_t
    return x


# ------------------------------------------------------------------------------------------------ loaders


def _load_digits():
    from sklearn.datasets import load_digits

    d = load_digits()
    images = d.images.astype(np.uint8)[:, None]  # (N, 1, 8, 8), values 0..16
    return images, d.target.astype(np.int64), 17, [str(i) for i in range(10)]


_TV = {
    "cifar10": ("CIFAR10", "cifar-10-batches-py"),
    "cifar100": ("CIFAR100", "cifar-100-python"),
    "svhn": ("SVHN", "train_32x32.mat"),
    "mnist": ("MNIST", "MNIST/raw"),
    "fashion_mnist": ("FashionMNIST", "FashionMNIST/raw"),
}


def _load_torchvision(name: str, root: Path, download: bool):
    import torchvision.datasets as tvd

    cls_name, expected = _TV[name]
    cls = getattr(tvd, cls_name)
    parts = []
    for train in (True, False):
        try:
            if name == "svhn":
                ds = cls(str(root), split="train" if train else "test", download=download)
            else:
                ds = cls(str(root), train=train, download=download)
        except (RuntimeError, OSError, ValueError) as e:
            how = "check your network connection" if download else "pass --download to fetch it"
            raise DataError(
                f"dataset {name!r} not found or unreadable under {root} (expected {root / expected}); "
                f"{how}, or point --data-root at the folder that holds it"
                + ("" if isinstance(e, RuntimeError) else f" ({e})")
            ) from None
        if name == "svhn":
            images = np.asarray(ds.data, dtype=np.uint8)  # (N, 3, 32, 32)
            labels = np.asarray(ds.labels, dtype=np.int64) % 10  # torchvision maps '10' to 0 already
            classes = [str(i) for i in range(10)]
        else:
            data = ds.data.numpy() if isinstance(ds.data, torch.Tensor) else np.asarray(ds.data)
            images = data[:, None] if data.ndim == 3 else data.transpose(0, 3, 1, 2)  # -> (N, C, H, W)
            labels = np.asarray(ds.targets, dtype=np.int64)
            classes = [str(c) for c in ds.classes]
        parts.append((np.ascontiguousarray(images, dtype=np.uint8), labels))
    (xtr, ytr), (xte, yte) = parts
    n_tr, n_te = len(xtr), len(xte)
    split = (np.arange(n_tr), n_tr + np.arange(n_te))
    return np.concatenate([xtr, xte]), np.concatenate([ytr, yte]), 256, classes, split


def _load_cinic10(root: Path):
    base = root
    if not (base / "train").is_dir():
        for cand in ("cinic10", "CINIC-10", "cinic-10"):
            if (root / cand / "train").is_dir():
                base = root / cand
                break
    missing = [s for s in ("train", "valid", "test") if not (base / s).is_dir()]
    if missing:
        raise DataError(
            f"CINIC-10 not found: expected folders {base}/train, {base}/valid and {base}/test "
            f"(missing: {', '.join(missing)}); download CINIC-10 from {CINIC10_URL}, unpack it and pass "
            f"--data-root pointing at the unpacked folder"
        )
    xs, ys = [], []
    classes = None
    for s in ("train", "valid", "test"):
        x, y, cls = _load_image_folder(base / s, force_rgb=True)
        if classes is None:
            classes = cls
        elif cls != classes:
            raise DataError(f"CINIC-10 split {base / s} has classes {cls}, but train has {classes}")
        xs.append(x)
        ys.append(y)
    n_train = len(xs[0])  # the network trains on train; valid and test are held out (the paper's protocol)
    split = (np.arange(n_train), n_train + np.arange(len(xs[1]) + len(xs[2])))
    return np.concatenate(xs), np.concatenate(ys), 256, classes, split


def _load_image_folder(root: Path, force_rgb: bool = False):
    """ImageFolder tree root/<class>/<image>; all images must share one size. Grayscale if all are.

    Decoded arrays are cached in cache_dir()/folder-<digest of root>.npz (when writable), keyed by the file list,
    sizes and times; the data folder itself is only read.
    """
    from PIL import Image

    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist; expected an ImageFolder tree {root}/<class>/<image>.png")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    files: list[tuple[Path, int]] = []
    for i, c in enumerate(classes):
        files += [(f, i) for f in sorted((root / c).iterdir()) if f.suffix.lower() in IMAGE_EXTENSIONS]
    if not files:
        raise DataError(f"no images found in {root}; expected an ImageFolder tree {root}/<class>/<image>.png "
                        f"(extensions: {', '.join(IMAGE_EXTENSIONS)})")
    key = hashlib.sha1(repr((force_rgb, [(str(f.relative_to(root)), f.stat().st_size, f.stat().st_mtime_ns)
                                         for f, _ in files])).encode()).hexdigest()
    cache = cache_dir() / f"folder-{hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]}.npz"
    if cache.is_file():
        try:
            with np.load(cache, allow_pickle=False) as z:
                if str(z["key"]) == key:
                    return z["images"], z["labels"], [str(c) for c in z["classes"]]
        except (OSError, ValueError, KeyError):
            pass
    gray = not force_rgb
    if gray:
        for f, _ in files:  # headers only: is every image single-channel?
            try:
                with Image.open(f) as im:
                    if im.mode not in ("L", "1", "I;16", "I", "F"):
                        gray = False
                        break
            except OSError as e:
                raise DataError(f"cannot read image {f}: {e}") from None
    mode = "L" if gray else "RGB"
    out = None
    for k, (f, _) in enumerate(files):
        try:
            with Image.open(f) as im:
                a = np.asarray(im.convert(mode), dtype=np.uint8)
        except OSError as e:
            raise DataError(f"cannot read image {f}: {e}") from None
        a = a[None] if a.ndim == 2 else a.transpose(2, 0, 1)  # (C, H, W)
        if out is None:
            out = np.empty((len(files), *a.shape), np.uint8)  # (N, C, H, W)
        elif a.shape != out.shape[1:]:
            raise DataError(f"image {f} has shape {a.shape} (C,H,W) but the first image has {out.shape[1:]}; "
                            f"all images in {root} must have the same size")
        out[k] = a
    labels = np.array([y for _, y in files], dtype=np.int64)
    try:
        buf = io.BytesIO()
        np.savez(buf, key=np.array(key), images=out, labels=labels, classes=np.array(classes))
        atomic_write_bytes(cache, buf.getvalue())
    except OSError:
        pass  # read-only data folder: decode again next time
    return out, labels, classes


MAX_CLASSES = 1000  # class indices may exceed the number of images up to this many classes (ImageNet's)


def _load_npy(images_path, labels_path, levels, images_key=None, labels_key=None):
    if images_path is None:
        raise DataError("dataset 'npy' needs --images PATH.npy (uint8 [N,C,H,W]) and optionally --labels PATH.npy")
    images = read_array(images_path, "images", key=images_key, kinds="biu")
    images = _to_nchw(images, images_path)
    if images.shape[0] == 0 or images.size == 0:
        raise DataError(f"{images_path} holds no images (shape {tuple(images.shape)}); save some with np.save")
    lo, hi = int(images.min()), int(images.max())
    if levels is None:
        if hi > 255:
            raise DataError(f"{images_path} has values up to {hi}; pass --levels L (values must be < L <= 256)")
        levels = 256
    levels = int(levels)
    if not 2 <= levels <= 256:
        raise ConfigError(f"levels must be between 2 and 256, got {levels}")
    if lo < 0 or hi >= levels:
        raise DataError(f"{images_path} has values in [{lo}, {hi}], outside [0, {levels - 1}] for levels={levels}")
    n = len(images)
    if labels_path is None:
        labels = np.zeros(n, dtype=np.int64)
        classes = ["0"]
    else:
        labels = read_array(labels_path, "labels", key=labels_key, kinds="iu")
        if labels.ndim != 1 or len(labels) != n:
            raise DataError(f"{labels_path} has shape {labels.shape}; expected one label per image, shape ({n},)")
        lo, hi = int(labels.min()), int(labels.max())
        if lo < 0 or hi >= max(n, MAX_CLASSES):  # checked before the class count sizes anything
            raise DataError(f"{labels_path} has labels in [{lo}, {hi}]; labels must be class indices 0..K-1 with K "
                            f"at most the number of images ({n}) or {MAX_CLASSES}: number your classes from 0, e.g. "
                            f"y = np.unique(y, return_inverse=True)[1]")
        labels = labels.astype(np.int64)
        classes = [str(i) for i in range(hi + 1)]
    return images.astype(np.uint8), labels, levels, classes


def read_array(path: str | os.PathLike, what: str, key: str | None = None, kinds: str = "biu") -> np.ndarray:
    """A user's array: a .npy file, or one array of a .npz (its only one, or `key`), checked before it is read.

    Its header must declare a dtype of one of `kinds` (numpy kind letters: b bool, i int, u unsigned), no Python
    objects (a pickled array is refused, never unpickled), and no more data than the file holds, so that no size
    written in a file sizes an allocation the data does not fill. Every failure is a DataError naming the file.
    """
    path = Path(path)
    flag = f"--{what}-key"
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist; save your array with np.save('{path.name}', array)")
    if path.is_dir():
        raise DataError(f"{what} file {path} is a folder; give a .npy file (np.save) or an .npz file (np.savez)")
    try:
        with open(path, "rb") as f:
            head = f.read(6)
            f.seek(0)
            if head.startswith(b"PK"):
                return _read_npz(f, path, what, key, kinds)
            if key is not None:
                raise ConfigError(f"{flag} {key}: {path} is not an .npz file but one array; drop {flag}")
            if head != b"\x93NUMPY":
                raise DataError(f"cannot read {what} file {path}: it is not a .npy or .npz file (it starts with "
                                f"{head!r}); save your array with np.save('{path.name}', array)")
            return _read_member(f, os.fstat(f.fileno()).st_size, path, what, kinds)
    except OSError as e:
        raise DataError(f"cannot read {what} file {path}: {e.strerror or e}") from None


def _read_npz(f, path: Path, what: str, key: str | None, kinds: str) -> np.ndarray:
    import zipfile
    import zlib

    flag = f"--{what}-key"
    try:
        with zipfile.ZipFile(f) as z:
            names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
            if not names:
                raise DataError(f"{what} file {path} is a zip file that holds no arrays; save yours with "
                                f"np.savez('{path.name}', {what}=array)")
            if key is None and len(names) > 1:
                raise ConfigError(f"{what} file {path} holds {len(names)} arrays ({', '.join(names[:8])}); choose one "
                                  f"with {flag} NAME")
            if key is not None and key not in names:
                raise ConfigError(f"{flag} {key}: {path} has no array {key!r}; it holds {', '.join(names[:8])}")
            info = z.getinfo(f"{key or names[0]}.npy")
            with z.open(info) as m:
                return _read_member(m, info.file_size, Path(f"{path}[{key or names[0]}]"), what, kinds,
                                    real_file=False)
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError) as e:
        raise DataError(f"cannot read {what} file {path}: a damaged .npz file ({type(e).__name__}: {e}); save it "
                        f"again with np.savez") from None


def _read_member(f, size: int, path: Path, what: str, kinds: str, real_file: bool = True) -> np.ndarray:
    """The array of the .npy stream `f` of `size` bytes, after its header has been checked."""
    fmt = np.lib.format
    try:
        version = fmt.read_magic(f)
        header = getattr(fmt, "_read_array_header", None)
        shape, fortran, dtype = header(f, version) if header else (
            fmt.read_array_header_1_0(f) if version == (1, 0) else fmt.read_array_header_2_0(f))
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"cannot read {what} file {path}: its .npy header is damaged ({e}); save it again with "
                        f"np.save") from None
    if dtype.hasobject:
        raise DataError(f"{what} file {path} holds Python objects (a pickled array, dtype {dtype}), which are never "
                        f"unpickled; save a numeric array, e.g. np.save(path, np.asarray(x, dtype=np.uint8))")
    if dtype.kind not in kinds:
        want = "integer class indices" if what == "labels" else "integers in [0, levels-1] (e.g. uint8); quantise " \
            "floats first, e.g. np.round(x * 255).astype(np.uint8)"
        raise DataError(f"{what} file {path} has dtype {dtype}; {what} must be {want}")
    declared = int(np.prod(shape, dtype=object)) * dtype.itemsize
    held = size - f.tell()
    if declared > held:
        raise DataError(f"{what} file {path} is truncated or damaged: its header declares an array of shape "
                        f"{tuple(shape)} ({declared} bytes), the file holds {max(held, 0)}; save it again with np.save")
    order = "F" if fortran else "C"
    try:
        if real_file:
            return np.fromfile(f, dtype=dtype, count=int(np.prod(shape, dtype=object))).reshape(shape, order=order)
        data = f.read(declared)
        if len(data) != declared:
            raise DataError(f"{what} file {path} is truncated: {len(data)} of {declared} bytes")
        return np.frombuffer(data, dtype=dtype).reshape(shape, order=order).copy()
    except (ValueError, OSError, EOFError) as e:
        raise DataError(f"cannot read {what} file {path} ({type(e).__name__}: {e}); save it again with np.save") \
            from None


def _to_nchw(images: np.ndarray, path) -> np.ndarray:
    if images.ndim == 3:
        return images[:, None]
    if images.ndim != 4:
        raise DataError(f"{path} has shape {images.shape}; expected [N,C,H,W], [N,H,W,C] or [N,H,W]")
    if images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
    return images


def known_shape(name: str) -> tuple[tuple[int, int, int], int, int]:
    """(in_shape, num_classes, levels) of a named dataset without loading it."""
    if name not in DATASET_SHAPES:
        raise ConfigError(f"the shape of dataset {name!r} is only known after loading; pass --in-shape C,H,W "
                          f"and --num-classes N, or one of: {', '.join(DATASET_SHAPES)}")
    return DATASET_SHAPES[name]


def describe_sizes(ds: Dataset) -> str:
    """One line: name, shape, levels, classes, split sizes."""
    c, h, w = ds.image_shape
    return (f"{ds.name}: {len(ds.images)} images {c}x{h}x{w}, {ds.levels} levels, {ds.num_classes} classes, "
            f"train {len(ds.train_idx)} / test {len(ds.test_idx)}")


__all__: Sequence[str] = ["Dataset", "load_dataset", "DATASET_NAMES", "DATASET_SHAPES", "to_model_input",
                          "stratified_split", "known_shape", "describe_sizes"]
