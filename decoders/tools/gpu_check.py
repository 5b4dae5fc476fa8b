"""GPU check: `python -m decoders.tools.gpu_check` (bench/gpu_check.sh runs it under an 8-minute bound).

For the paper decoder (3x32x32, 256 levels, 5x160x10) on a CUDA device it reports, then sums up:
1. NLL agreement: the max |NLL difference| in bits per image between CPU float32 and CUDA float32, and CUDA
   bf16 autocast + channels_last, on the same weights and images (no code, and a spatial code);
2. training: images/s, peak memory, FLOPs per image and model FLOP utilisation (MFU, against the GPU's dense
   bf16 peak) in float32 eager and in bf16 + channels_last + torch.compile, and their ratio. "float32" is
   PyTorch's default, which lets cuDNN run float32 convolutions in TF32 (the flags are printed);
3. sampling at batch 256: the cached sampler on whole images, and the naive and the cached sampler side by
   side on the first rows, with the share of integers the two draw alike (on CUDA kernels are not pinned,
   so a last-bit difference can change a draw).
`--device cpu --smoke` runs every step on a tiny decoder in seconds: a check of the script, not of speed.
"""
from __future__ import annotations

import argparse
import io
import sys
import time

import torch

from decoders.tools.bench import bench_sampling, build_parser, compare_cpu_cuda, run_bench
from decoders.config import DecoderConfig
from decoders.device import eval_mode, peak_memory_mib, reset_peak_memory, resolve_device
from decoders.pixelcnn import PixelCNNPP

PAPER = dict(image_shape="3,32,32", levels=256, nr_resnet=5, nr_filters=160, nr_mix=10)
SMOKE = dict(image_shape="3,8,8", levels=256, nr_resnet=1, nr_filters=8, nr_mix=2)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m decoders.tools.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--device", default="cuda", help="cuda (default) or cpu")
    p.add_argument("--smoke", action="store_true", help="a tiny decoder and few steps: checks the script only")
    p.add_argument("--train-batch", type=int, default=64)
    p.add_argument("--steps", type=int, default=10, help="timed training steps per setting")
    p.add_argument("--sample-n", type=int, default=256, help="images per sampling batch")
    p.add_argument("--naive-rows", type=int, default=8, help="image rows the naive sampler draws (side by side)")
    p.add_argument("--no-compile", action="store_true", help="skip torch.compile in the fast training setting")
    return p


def _bench(cfg: dict, extra: list[str], out: io.StringIO) -> dict[str, float]:
    argv = [f"--{k.replace('_', '-')}={v}" for k, v in cfg.items()] + extra + ["--quiet"]
    return run_bench(build_parser().parse_args(argv), out=out)


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    device = resolve_device(args.device)
    if args.smoke and device.type == "cpu":
        args.no_compile = True  # inductor on CPU needs a compiler and minutes; the smoke run checks the script
    cfg = dict(SMOKE if args.smoke else PAPER)
    steps = ["--steps", "1", "--warmup", "1"] if args.smoke else ["--steps", str(args.steps), "--warmup", "3"]
    batch = 4 if args.smoke else args.train_batch
    n_sample = 2 if args.smoke else args.sample_n
    if args.smoke:
        args.naive_rows = min(args.naive_rows, 2)
    t_start = time.perf_counter()
    say = lambda *a: print(*a, flush=True)  # noqa: E731
    say(f"gpu_check: torch {torch.__version__}, device {device}"
        + (f" ({torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda})" if device.type == "cuda" else "")
        + f"; cudnn.allow_tf32={torch.backends.cudnn.allow_tf32} matmul.allow_tf32="
          f"{torch.backends.cuda.matmul.allow_tf32}; decoder {cfg}")
    summary: list[str] = []

    # 1. NLL agreement
    shape = tuple(int(v) for v in cfg["image_shape"].split(","))
    for code_shape in (None, (16, 8, 8)):
        torch.manual_seed(0)
        dcfg = DecoderConfig(shape, levels=cfg["levels"], nr_resnet=cfg["nr_resnet"], nr_filters=cfg["nr_filters"],
                             nr_mix=cfg["nr_mix"], code_shape=code_shape)
        model = PixelCNNPP(dcfg)
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, cfg["levels"], (8, *shape), generator=g)
        c = None if code_shape is None else torch.randn(8, *code_shape, generator=g)
        if c is not None:
            model.set_code_stats(c)
        figs = compare_cpu_cuda(model, x, c, say) if device.type == "cuda" else {}
        if not figs:
            say("nll agreement: skipped (needs CUDA)")
            continue
        summary.append(f"NLL |CPU fp32 - CUDA| (code {code_shape}): fp32 {figs['max_abs_nll_diff_bits_fp32']:.3g}, "
                       f"bf16+channels_last {figs['max_abs_nll_diff_bits_bf16']:.3g} bits/image (max over 8 images)")
        say(summary[-1])
    say(f"[{time.perf_counter() - t_start:.0f} s]")

    # 2. training, fp32 eager vs bf16 + channels_last + compile
    base = ["--device", str(device), "--batch", str(batch), "--sample-n", "0", "--flops"] + steps
    runs = {"fp32 eager": ["--no-bf16", "--no-channels-last"],
            "bf16+channels_last" + ("" if args.no_compile else "+compile"):
                ["--bf16", "--channels-last"] + ([] if args.no_compile else ["--compile"])}
    train = {}
    for name, flags in runs.items():
        out = io.StringIO()
        figs = _bench(cfg, base + flags, out)
        train[name] = figs
        summary.append(f"train {name}: {figs['train_images_per_s']:.4g} img/s at batch {batch}, "
                       f"{figs['train_gflop_per_image']:.4g} GFLOP/image, {figs['train_tflops']:.4g} TFLOP/s, "
                       f"MFU {figs.get('mfu', float('nan')):.3g}, peak {figs['train_peak_memory_mib']:.0f} MiB")
        say(summary[-1])
        say(f"[{time.perf_counter() - t_start:.0f} s]")
    names = list(train)
    ratio = train[names[1]]["train_images_per_s"] / train[names[0]]["train_images_per_s"]
    summary.append(f"train speedup {names[1]} / {names[0]}: {ratio:.3g}x")

    # 3. sampling at batch n_sample, cached vs naive
    torch.manual_seed(0)
    dcfg = DecoderConfig(shape, levels=cfg["levels"], nr_resnet=cfg["nr_resnet"], nr_filters=cfg["nr_filters"],
                         nr_mix=cfg["nr_mix"])
    model = PixelCNNPP(dcfg).to(device)
    reset_peak_memory(device)
    with eval_mode(model):
        figs = bench_sampling(model, None, n_sample, args.naive_rows, True, 0, device, say)
    summary.append(f"sampling batch {n_sample}: cached {n_sample / figs['samples_per_s']:.4g} s per batch of whole "
                   f"images ({figs['samples_per_s']:.4g} img/s); rows 0-{min(args.naive_rows, shape[1]) - 1}: naive "
                   f"{figs['naive_sample_s']:.4g} s, cached {figs['cached_sample_s']:.4g} s, ratio "
                   f"{figs['cached_vs_naive']:.4g}x; same integers {figs['same_integers_fraction']:.6f}; "
                   f"peak {peak_memory_mib(device):.0f} MiB")
    say(summary[-1])

    say(f"== summary ({time.perf_counter() - t_start:.0f} s) ==")
    for line in summary:
        say(line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
