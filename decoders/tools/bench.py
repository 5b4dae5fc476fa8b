"""Decoder benchmark: `python -m decoders.tools.bench [flags]` (also `ibprobe bench decoder [flags]`).

Prints, for one decoder config, device and batch, one figure per line:
train_images_per_s, eval_images_per_s, samples_per_s (the default, cached sampler, whole images) and
peak_memory_mib (CUDA: max allocated; CPU: the process's max resident set size). Side by side it times the
naive sampler (the network on the image so far for every pixel, with PyTorch's own kernels and threads, as
sampling ran before the cached sampler) and the cached one on the same first --sample-naive-rows image rows,
the same images and generator state: naive_sample_s, cached_sample_s and cached_vs_naive (their ratio; the
naive sampler's cost per row grows down the image, the cached one's does not, so a ratio over the first rows
understates the whole image's). --sample-check also draws those rows with the naive sampler under the cached
one's exact kernels and prints same_integers_fraction. With --compare-cpu-cuda it also prints the max |NLL
difference| in bits per image between CPU float32 and CUDA (float32, and bf16 autocast + channels_last)
on the same weights and batch; with --flops the model's training FLOPs per image (forward and backward, counted
by torch.utils.flop_counter), the achieved TFLOP/s and the model FLOP utilisation against --peak-tflops (by
default the dense bf16 peak of known GPUs). Data are random images, so the figures measure speed, not quality.
"""
from __future__ import annotations

import argparse
import copy
import sys
import time

import torch

from decoders.device import (DeviceSetup, autocast, eval_mode, peak_memory_mib, reset_peak_memory, setup_device,
                             synchronize, to_channels_last)
from decoders.fitting import make_train_step


def _ints(text: str) -> tuple[int, ...]:
    try:
        vals = tuple(int(p) for p in text.replace("x", ",").split(",") if p.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a comma-separated list of integers") from None
    if not vals or any(v < 1 for v in vals):
        raise argparse.ArgumentTypeError(f"{text!r} must list positive integers")
    return vals


class _Parser(argparse.ArgumentParser):
    """argparse, with a refused flag said in one line (not the usage block) and exit code 2."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {' '.join(message.split())}; see `{self.prog} --help`\n")


def build_parser(prog: str = "python -m decoders.tools.bench") -> argparse.ArgumentParser:
    p = _Parser(prog=prog, description="Throughput and peak memory of one PixelCNN++ decoder config.")
    p.add_argument("--image-shape", type=_ints, default=(3, 32, 32), help="C,H,W (default 3,32,32)")
    p.add_argument("--levels", type=int, default=256)
    p.add_argument("--nr-resnet", type=int, default=5)
    p.add_argument("--nr-filters", type=int, default=160)
    p.add_argument("--nr-mix", type=int, default=10)
    p.add_argument("--dropout", type=float, default=0.5)
    p.add_argument("--code-shape", type=_ints, default=None, help="D (vector code) or C,H,W (spatial code)")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True, help="bf16 autocast (CUDA only)")
    p.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True, help="(CUDA only)")
    p.add_argument("--compile", action="store_true", help="torch.compile the training loss")
    p.add_argument("--eval-bf16", action="store_true", help="evaluate and sample under bf16 too (default float32)")
    p.add_argument("--steps", type=int, default=10, help="timed training/eval steps")
    p.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    p.add_argument("--sample-n", type=int, default=None, help="images to sample (default min(batch, 8); 0 skips)")
    p.add_argument("--sample-naive-rows", type=int, default=4,
                   help="image rows both samplers draw for the side-by-side timing (default 4; 0 skips the naive one)")
    p.add_argument("--sample-check", action="store_true",
                   help="also draw those rows with the naive sampler on exact kernels and compare the integers")
    p.add_argument("--compare-cpu-cuda", action="store_true",
                   help="also print the max |NLL difference| (bits/image) between CPU and CUDA")
    p.add_argument("--flops", action="store_true", help="count training FLOPs per image; print TFLOP/s and MFU")
    p.add_argument("--peak-tflops", type=float, default=None,
                   help="peak TFLOP/s of the device for MFU (default: dense bf16 peak of a known GPU)")
    p.add_argument("--threads", type=int, default=None, help="CPU intra-op threads (default: torch's choice)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quiet", action="store_true", help="print the figures only")
    return p


def _inputs(cfg, batch: int, seed: int) -> tuple[torch.Tensor, torch.Tensor | None]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(0, cfg.levels, (batch, *cfg.image_shape), generator=g, dtype=torch.uint8)  # (B, C, H, W)
    c = None if cfg.code_shape is None else torch.randn((batch, *cfg.code_shape), generator=g)  # (B, ...)
    return x, c


def _to(x: torch.Tensor, c: torch.Tensor | None, setup: DeviceSetup):
    x = to_channels_last(x.to(setup.device).long(), setup)
    c = None if c is None else to_channels_last(c.to(setup.device), setup)
    return x, c


def timed(fn, n: int, device: torch.device) -> float:
    """Seconds for n calls of fn, the device synchronised before and after (all n, not per call)."""
    synchronize(device)
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    synchronize(device)
    return time.perf_counter() - t0


def run_bench(args: argparse.Namespace, out=None) -> dict[str, float]:
    """Run the benchmark described by parsed flags; print (to `out`, default stdout) and return the figures."""
    from decoders.config import DecoderConfig
    from decoders.pixelcnn import PixelCNNPP

    out = sys.stdout if out is None else out
    if args.batch < 1 or args.steps < 1 or args.warmup < 0:
        raise ValueError("--batch and --steps must be >= 1, --warmup >= 0")
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError("--threads must be >= 1")
        torch.set_num_threads(args.threads)
    cfg = DecoderConfig(image_shape=tuple(args.image_shape), levels=args.levels, nr_resnet=args.nr_resnet,
                        nr_filters=args.nr_filters, nr_mix=args.nr_mix, dropout=args.dropout,
                        code_shape=args.code_shape)
    setup = setup_device(args.device, bf16=args.bf16, channels_last=args.channels_last, compile=args.compile)
    torch.manual_seed(args.seed)
    model = PixelCNNPP(cfg)
    x_cpu, c_cpu = _inputs(cfg, args.batch, args.seed)
    if c_cpu is not None:
        model.set_code_stats(c_cpu)
    n_params = sum(p.numel() for p in model.parameters())
    dims = x_cpu[0].numel()
    say = (lambda *a: None) if args.quiet else (lambda *a: print(*a, file=out, flush=True))
    say(f"config: image_shape={'x'.join(map(str, cfg.image_shape))} levels={cfg.levels} nr_resnet={cfg.nr_resnet} "
        f"nr_filters={cfg.nr_filters} nr_mix={cfg.nr_mix} code_shape={cfg.code_shape} params={n_params} "
        f"batch={args.batch} device={setup.device} bf16={setup.bf16} channels_last={setup.channels_last} "
        f"compile={setup.compile} threads={torch.get_num_threads()}")

    figures: dict[str, float] = {}
    if args.compare_cpu_cuda:
        figures.update(compare_cpu_cuda(model, x_cpu, c_cpu, say))

    reset_peak_memory(setup.device)
    model.to(setup.device)
    to_channels_last(model, setup)
    x, c = _to(x_cpu, c_cpu, setup)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=True)  # as decoders.fitting
    step = make_train_step(model, optimizer, setup, grad_clip=100.0, bits_per_image_to_loss=1.0 / dims)
    model.train()
    losses: list[torch.Tensor] = []
    timed(lambda: step(x, c), args.warmup, setup.device)
    dt = timed(lambda: losses.append(step(x, c)[0]), args.steps, setup.device)
    figures["train_images_per_s"] = args.steps * args.batch / dt
    figures["train_peak_memory_mib"] = peak_memory_mib(setup.device)
    say(f"train_bits_per_dim (random images, last step): {float(losses[-1]):.4f}")
    if args.flops:
        figures.update(_flop_figures(model, x, c, figures["train_images_per_s"], args.peak_tflops, setup.device, say))

    with eval_mode(model):
        def eval_step():
            with autocast(setup, enabled=args.eval_bf16):
                model.nll_bits(x, c)
        timed(eval_step, args.warmup, setup.device)
        figures["eval_images_per_s"] = args.steps * args.batch / timed(eval_step, args.steps, setup.device)

        n = min(args.batch, 8) if args.sample_n is None else args.sample_n
        if n > 0:
            with autocast(setup, enabled=args.eval_bf16):
                figures.update(bench_sampling(model, None if c is None else c[:n], n, args.sample_naive_rows,
                                              args.sample_check, args.seed, setup.device, say))
    figures["peak_memory_mib"] = peak_memory_mib(setup.device)
    for key in ("train_images_per_s", "train_gflop_per_image", "train_tflops", "mfu", "eval_images_per_s",
                "samples_per_s", "naive_sample_s", "cached_sample_s", "cached_vs_naive", "train_peak_memory_mib",
                "peak_memory_mib"):
        if key in figures:
            print(f"{key}: {figures[key]:.4g}", file=out, flush=True)
    for key, val in figures.items():
        if key.startswith("max_abs_nll_diff"):
            print(f"{key}: {val:.4g}", file=out, flush=True)
    if "same_integers_fraction" in figures:
        print(f"same_integers_fraction: {figures['same_integers_fraction']:.6g}", file=out, flush=True)
    return figures


# dense bf16 tensor-core peaks (TFLOP/s) of GPUs the paper-scale runs use; matched against the device name
_PEAK_BF16_TFLOPS = {"H200": 989.0, "H100": 989.0, "A100": 312.0, "L40S": 362.0, "L4": 121.0}


def _flop_figures(model, x, c, images_per_s: float, peak_tflops: float | None, device: torch.device,
                  say) -> dict[str, float]:
    """Training FLOPs per image (one forward and backward, counted in float32 eager), TFLOP/s and MFU."""
    from torch.utils.flop_counter import FlopCounterMode

    model.zero_grad(set_to_none=True)
    with FlopCounterMode(display=False) as counter:
        model.nll_bits(x, c).float().mean().backward()
    model.zero_grad(set_to_none=True)
    per_image = counter.get_total_flops() / x.shape[0]
    out = {"train_gflop_per_image": per_image / 1e9, "train_tflops": per_image * images_per_s / 1e12}
    if peak_tflops is None and device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        peak_tflops = next((v for k, v in _PEAK_BF16_TFLOPS.items() if k in name), None)
        say(f"mfu against {name}'s dense bf16 peak: {peak_tflops} TFLOP/s" if peak_tflops else
            f"mfu: no peak known for {name}; give --peak-tflops")
    if peak_tflops:
        out["mfu"] = out["train_tflops"] / peak_tflops
    return out


def bench_sampling(model, code, n: int, naive_rows: int, check: bool, seed: int, device: torch.device,
                   say) -> dict[str, float]:
    """Whole images with the cached sampler; naive and cached side by side on the first rows (see module doc).

    Returns samples_per_s, and with naive_rows > 0 naive_sample_s, cached_sample_s, cached_vs_naive; with check
    also same_integers_fraction, the share of the drawn integers the naive sampler on exact kernels repeats
    (1.0 on CPU; on CUDA, where kernels are not pinned, a last-bit difference can change a draw).
    """
    h = model.cfg.image_shape[1]
    threads = torch.get_num_threads()

    def draw(method: str, rows: int | None, exact: bool = True) -> tuple[float, torch.Tensor]:
        gen = torch.Generator(device=device).manual_seed(seed)
        got = []
        dt = timed(lambda: got.append(model._sample(code, n, gen, method, rows, exact)), 1, device)
        return dt, got[0]

    figures = {"samples_per_s": n / draw("cached", None)[0]}
    rows = min(naive_rows, h)
    if rows > 0:
        exact_threads = 1 if device.type == "cpu" else threads
        t_naive, _ = draw("naive", rows, exact=False)
        t_cached, x_cached = draw("cached", rows)
        figures.update(naive_sample_s=t_naive, cached_sample_s=t_cached, cached_vs_naive=t_naive / t_cached)
        say(f"sampling side by side: image rows 0-{rows - 1} of {h}, {n} images; naive with PyTorch's kernels on "
            f"{threads} threads, cached on exact kernels ({exact_threads} thread{'s' * (exact_threads > 1)})")
        if check:
            t_exact, x_exact = draw("naive", rows)
            same = (x_exact[:, :, :rows] == x_cached[:, :, :rows]).double().mean().item()
            figures["same_integers_fraction"] = same
            say(f"naive on exact kernels: {t_exact:.4g} s for the same rows")
    return figures


def compare_cpu_cuda(model: torch.nn.Module, x: torch.Tensor, c: torch.Tensor | None, say) -> dict[str, float]:
    """Max |NLL difference| (bits per image) of the same weights and batch on CPU fp32 vs CUDA fp32 and bf16."""
    if not torch.cuda.is_available():
        say("compare_cpu_cuda: skipped, torch sees no CUDA device")
        return {}
    cpu = copy.deepcopy(model).cpu()
    with eval_mode(cpu):
        ref = cpu.nll_bits(x.long(), c).double()  # (B,) bits
    out = {}
    for name, bf16 in (("fp32", False), ("bf16", True)):
        setup = setup_device("cuda", bf16=bf16, channels_last=bf16)
        gpu = to_channels_last(copy.deepcopy(cpu).to(setup.device), setup)
        xg, cg = _to(x, c, setup)
        with eval_mode(gpu), autocast(setup):
            nll = gpu.nll_bits(xg, cg).double().cpu()  # (B,) bits
        out[f"max_abs_nll_diff_bits_{name}"] = float((nll - ref).abs().max())
    say(f"mean_nll_bits_cpu: {float(ref.mean()):.6g} (tf32 matmul={torch.backends.cuda.matmul.allow_tf32} "
        f"cudnn={torch.backends.cudnn.allow_tf32})")
    return out


def main(argv: list[str] | None = None, prog: str = "python -m decoders.tools.bench") -> int:
    """Entry point; returns an exit code (2 and one line on stderr for a bad flag or config). `prog`: the command
    that runs it, as its messages name it."""
    args = build_parser(prog).parse_args(argv)
    try:
        run_bench(args)
    except ValueError as e:
        print(f"{prog}: error: {' '.join(str(e).split())}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
