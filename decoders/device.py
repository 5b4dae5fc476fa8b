"""Device and precision, resolved once: CUDA when present (bf16 autocast, channels_last, optional
torch.compile), otherwise CPU in plain float32.

Everything here is a no-op on CPU, so the fit loop and the benchmark read the same on both devices.
"""
from __future__ import annotations

import contextlib
import resource
import sys
from dataclasses import dataclass
from typing import Iterator, TypeVar

import torch

from decoders.errors import DecoderConfigError

T = TypeVar("T", torch.Tensor, torch.nn.Module)


def resolve_device(device: str | torch.device | None = "auto") -> torch.device:
    """'auto' -> cuda if available, else cpu. Asking for cuda without one raises DecoderConfigError."""
    if device is None or str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise DecoderConfigError(f"unknown device {device!r}; use auto, cpu or cuda") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise DecoderConfigError("device cuda was asked for, but torch sees no CUDA device; use cpu or auto")
    if dev.type not in ("cpu", "cuda"):
        raise DecoderConfigError(f"unsupported device {device!r}; use auto, cpu or cuda")
    return dev


@dataclass(frozen=True)
class DeviceSetup:
    """The effective device and precision options (CUDA-only options are False on CPU)."""

    device: torch.device
    bf16: bool = False
    channels_last: bool = False
    compile: bool = False

    @property
    def is_cuda(self) -> bool:
        return self.device.type == "cuda"


def setup_device(device: str | torch.device | None = "auto", *, bf16: bool = True, channels_last: bool = True,
                 compile: bool = False) -> DeviceSetup:
    """Resolve the device once; bf16 and channels_last only take effect on CUDA."""
    dev = resolve_device(device)
    cuda = dev.type == "cuda"
    if cuda and bf16 and not torch.cuda.is_bf16_supported():
        bf16 = False
    return DeviceSetup(device=dev, bf16=bool(bf16 and cuda), channels_last=bool(channels_last and cuda),
                       compile=bool(compile))


def autocast(setup: DeviceSetup, enabled: bool = True) -> contextlib.AbstractContextManager:
    """bf16 autocast on CUDA when the setup asks for it; a no-op otherwise (CPU stays float32)."""
    if enabled and setup.bf16 and setup.is_cuda:
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def to_channels_last(obj: T, setup: DeviceSetup) -> T:
    """Module or 4-D tensor in channels_last memory format when the setup asks for it; unchanged otherwise."""
    if not setup.channels_last:
        return obj
    if isinstance(obj, torch.nn.Module):
        return obj.to(memory_format=torch.channels_last)
    if obj.dim() == 4:
        return obj.contiguous(memory_format=torch.channels_last)
    return obj


def synchronize(device: torch.device) -> None:
    """Wait for queued CUDA work (for honest timings); a no-op on CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_peak_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)


def peak_memory_mib(device: torch.device) -> float:
    """Peak memory in MiB: allocated CUDA memory on CUDA, the process's max resident set size on CPU."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10


def cuda_rng_states() -> list[torch.Tensor]:
    """All CUDA generator states (empty without CUDA), for checkpoints."""
    return list(torch.cuda.get_rng_state_all()) if torch.cuda.is_available() else []


def set_cuda_rng_states(states: list[torch.Tensor]) -> None:
    if states and torch.cuda.is_available() and len(states) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(states)


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[torch.nn.Module]:
    """model.eval() and no_grad for the block, then the previous training flag back."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            yield model
    finally:
        model.train(was_training)


@contextlib.contextmanager
def one_cpu_thread(device: torch.device) -> Iterator[None]:
    """On the CPU, torch uses one thread for the block (the per-pixel steps of small decoders only wait on a
    second); the previous thread count is back afterwards. A no-op on CUDA."""
    threads = torch.get_num_threads()
    if device.type == "cpu":
        torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
