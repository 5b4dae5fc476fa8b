"""Checks of what a caller hands the decoders: integer images and real-valued codes, with errors that say what
is wrong (DecoderInputError), and row access that reads only the rows asked for (memmaps stay on disk)."""
from __future__ import annotations

import numpy as np
import torch

from decoders.errors import DecoderInputError


def check_images(images, levels: int, image_shape=None, what: str = "images"):
    """`images` if they are integer [N, C, H, W] (numpy, memmap or tensor) with N >= 1, H and W multiples of 4,
    values in [0, levels-1] and, given `image_shape`, that (C, H, W); else DecoderInputError saying what is wrong."""
    if not isinstance(images, (np.ndarray, torch.Tensor)):
        raise DecoderInputError(f"{what} must be a numpy array or torch tensor, got {type(images).__name__}")
    shape = tuple(int(s) for s in images.shape)
    if image_shape is not None:
        want = tuple(int(s) for s in image_shape)
        if len(shape) != 4 or shape[1:] != want:
            raise DecoderInputError(f"{what} have shape {shape}; the decoder expects [N, {', '.join(map(str, want))}]")
    elif len(shape) != 4:
        raise DecoderInputError(f"{what} have shape {shape}; expected [N, C, H, W]")
    if shape[2] % 4 or shape[3] % 4:
        raise DecoderInputError(f"{what} are {shape[2]}x{shape[3]}; the decoder needs height and width that are "
                                f"multiples of 4 (it halves the resolution twice): pad or crop them")
    if isinstance(images, torch.Tensor):
        integer = not images.dtype.is_floating_point and not images.dtype.is_complex and images.dtype != torch.bool
    else:
        integer = np.issubdtype(images.dtype, np.integer)
    if not integer:
        raise DecoderInputError(f"{what} must hold integers in [0, {levels - 1}] (uint8 or int64), got {images.dtype}")
    if shape[0] == 0:
        raise DecoderInputError(f"{what} is empty")
    lo, hi = int(images.min()), int(images.max())
    if lo < 0 or hi > levels - 1:
        raise DecoderInputError(f"{what} have values in [{lo}, {hi}], outside [0, {levels - 1}] (levels={levels}); "
                                f"pass the right number of levels (e.g. 17 for digits, 256 for 8-bit data)")
    return images


def check_model_images(images, mcfg, what: str):
    return check_images(images, mcfg.levels, mcfg.image_shape, what)


def check_codes(codes, mcfg, n: int, what: str):
    """`codes` if they fit the decoder config `mcfg` and `n` images (None for an unconditional one)."""
    code_shape = None if mcfg.code_shape is None else tuple(int(s) for s in mcfg.code_shape)
    if codes is None:
        if code_shape is not None:
            raise DecoderInputError(f"the decoder is conditional (code_shape={code_shape}) but no {what} were given")
        return None
    if code_shape is None:
        raise DecoderInputError(f"{what} were given but the decoder is unconditional (code_shape=None)")
    if not isinstance(codes, (np.ndarray, torch.Tensor)):
        raise DecoderInputError(f"{what} must be a numpy array or torch tensor, got {type(codes).__name__}")
    shape = tuple(int(s) for s in codes.shape)
    if shape[0] != n:
        raise DecoderInputError(f"{what} hold {shape[0]} rows but there are {n} images")
    if shape[1:] != code_shape:
        raise DecoderInputError(f"{what} have shape {shape}; the decoder expects "
                                f"[N, {', '.join(map(str, code_shape))}]")
    if isinstance(codes, torch.Tensor):
        ok = codes.dtype.is_floating_point or not (codes.dtype.is_complex or codes.dtype == torch.bool)
    else:
        ok = np.issubdtype(codes.dtype, np.floating) or np.issubdtype(codes.dtype, np.integer)
    if not ok:
        raise DecoderInputError(f"{what} must be real numbers (float16/float32), got {codes.dtype}")
    for start in range(0, n, 4096):  # chunked, so a float16 memmap is never copied whole
        chunk = codes[start:start + 4096]
        finite = torch.isfinite(chunk).all() if isinstance(chunk, torch.Tensor) else np.isfinite(chunk).all()
        if not bool(finite):
            raise DecoderInputError(f"{what} contain NaN or inf (rows {start}..{min(n, start + 4096) - 1})")
    return codes


def take_rows(arr, idx: np.ndarray) -> torch.Tensor:
    """Rows `idx` of a numpy array, memmap or tensor, as a CPU tensor (only those rows are read)."""
    if isinstance(arr, torch.Tensor):
        return arr[torch.from_numpy(idx)]
    return torch.from_numpy(np.ascontiguousarray(arr[idx]))
