"""PixelCNN++ (Salimans, Karpathy, Chen, Kingma, 2017, "PixelCNN++: Improving the PixelCNN with Discretized
Logistic Mixture Likelihood and Other Modifications"), optionally conditioned on a code h.

Two streams (u: rows above; ul: rows above and pixels to the left), gated residual blocks with concat_elu,
three resolutions with strided down-sampling and transposed-conv up-sampling, skip connections from every
up-pass block into the matching down-pass block, dropout, weight normalisation, and a discretized logistic
mixture output. The code h may see the whole image; only x is autoregressive (rows, then columns, then
channels within a pixel). A vector code enters every gated block as a per-channel bias (with vector_cond="mlp"
through a two-layer ELU network first); a spatial code goes through a small conditioning network
to each resolution and enters every block through a 1x1 conv. The blocks' projections start at zero, so a
conditional model warm-started from an unconditional one equals it.
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils import parametrize

from decoders import mixture
from decoders.config import DecoderConfig
from decoders.errors import DecoderInputError, IncompatibleWeightsError
from decoders.kernels import concat_elu, concat_elu_of_cat, down_shift, elu, exact_kernels, right_shift
from decoders.layers import (DownRightShiftedConv2d, DownRightShiftedDeconv2d, DownShiftedConv2d,
                             DownShiftedDeconv2d, GatedResnet, Nin)
from decoders.sampling import CachedSampler

_LN2 = math.log(2.0)
_STATS_CHUNK_ELEMENTS = 2**22  # code values per float64 chunk in set_code_stats
SAMPLE_METHODS = ("cached", "naive")
Stream = tuple[torch.Tensor, torch.Tensor]  # a stream tensor (B, F, H, W) and its concat_elu (B, 2F, H, W)


class ConditioningNet(nn.Module):
    """Spatial code (B, C', H', W') of any size -> features at (H, W), (H/2, W/2), (H/4, W/4). Not causal."""

    def __init__(self, code_channels: int, image_hw: tuple[int, int], filters: int):
        super().__init__()
        self.image_hw = image_hw
        self.stem = nn.Conv2d(code_channels, filters, 3, padding=1)
        self.body = nn.Conv2d(filters, filters, 3, padding=1)
        self.down1 = nn.Conv2d(filters, filters, 3, stride=2, padding=1)
        self.down2 = nn.Conv2d(filters, filters, 3, stride=2, padding=1)

    def resize(self, h: torch.Tensor) -> torch.Tensor:
        """Average-pool the dimensions larger than the image, interpolate the smaller ones: -> (B, C', H, W)."""
        (th, tw), (ch, cw) = self.image_hw, h.shape[-2:]
        if (ch, cw) == (th, tw):
            return h
        if ch > th or cw > tw:
            h = F.adaptive_avg_pool2d(h, (min(ch, th), min(cw, tw)))
        if h.shape[-2:] != (th, tw):
            h = F.interpolate(h, size=(th, tw), mode="bilinear", align_corners=False)
        return h

    def forward(self, h: torch.Tensor) -> list[torch.Tensor]:
        f0 = elu(self.body(elu(self.stem(self.resize(h)))))  # (B, F, H, W)
        f1 = elu(self.down1(f0))  # (B, F, H/2, W/2)
        f2 = elu(self.down2(f1))  # (B, F, H/4, W/4)
        return [f0, f1, f2]


class VectorConditioningNet(nn.Module):
    """Vector code (B, D) -> features (B, width): two ELU layers, so each block's linear map of them can be any
    smooth function of the code (a scalar template id selects its template). Not zero-initialised: the blocks'
    maps of its output are, so a fresh conditional decoder still computes its unconditional start."""

    def __init__(self, code_dim: int, width: int):
        super().__init__()
        self.hidden = nn.Linear(code_dim, width)
        self.out = nn.Linear(width, width)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return elu(self.out(elu(self.hidden(h))))  # (B, width)


class PixelCNNPP(nn.Module):
    """Conditional PixelCNN++ over integer images (B, C, H, W) in [0, L-1]; see the module docstring."""

    def __init__(self, cfg: DecoderConfig):
        super().__init__()
        self.cfg = cfg
        c, h, w = cfg.image_shape
        nf, nr, kind = cfg.nr_filters, cfg.nr_resnet, cfg.code_kind
        cond = None
        if kind == "vector":
            mlp = cfg.vector_cond == "mlp"
            cond = ("vector", cfg.cond_filters if mlp else cfg.code_shape[0])
            self.register_buffer("code_mean", torch.zeros(cfg.code_shape[0]))
            self.register_buffer("code_std", torch.ones(cfg.code_shape[0]))
            if mlp:
                self.cond_net = VectorConditioningNet(cfg.code_shape[0], cfg.cond_filters)
        elif kind == "spatial":
            cond = ("spatial", cfg.cond_filters)
            self.register_buffer("code_mean", torch.zeros(cfg.code_shape[0], 1, 1))
            self.register_buffer("code_std", torch.ones(cfg.code_shape[0], 1, 1))
            self.cond_net = ConditioningNet(cfg.code_shape[0], (h, w), cfg.cond_filters)

        def u_block(skip: int) -> GatedResnet:
            return GatedResnet(nf, DownShiftedConv2d, skip, cfg.dropout, cond)

        def ul_block(skip: int) -> GatedResnet:
            return GatedResnet(nf, DownRightShiftedConv2d, skip, cfg.dropout, cond)

        # up pass: nr blocks per resolution; down pass: nr, nr+1, nr+1 (one more to take the down-sampling skips)
        self.up_u = nn.ModuleList(nn.ModuleList(u_block(0) for _ in range(nr)) for _ in range(3))
        self.up_ul = nn.ModuleList(nn.ModuleList(ul_block(1) for _ in range(nr)) for _ in range(3))
        down_counts = (nr, nr + 1, nr + 1)
        self.down_u = nn.ModuleList(nn.ModuleList(u_block(1) for _ in range(n)) for n in down_counts)
        self.down_ul = nn.ModuleList(nn.ModuleList(ul_block(2) for _ in range(n)) for n in down_counts)
        self.downsize_u = nn.ModuleList(DownShiftedConv2d(nf, nf, stride=(2, 2)) for _ in range(2))
        self.downsize_ul = nn.ModuleList(DownRightShiftedConv2d(nf, nf, stride=(2, 2)) for _ in range(2))
        self.upsize_u = nn.ModuleList(DownShiftedDeconv2d(nf, nf) for _ in range(2))
        self.upsize_ul = nn.ModuleList(DownRightShiftedDeconv2d(nf, nf) for _ in range(2))
        # input: C image channels + a channel of ones, so zero padding differs from black pixels
        self.u_init = DownShiftedConv2d(c + 1, nf, kernel=(2, 3))
        self.ul_init_down = DownShiftedConv2d(c + 1, nf, kernel=(1, 3))
        self.ul_init_right = DownRightShiftedConv2d(c + 1, nf, kernel=(2, 1))
        self.nin_out = Nin(nf, mixture.num_params(c, cfg.nr_mix))

    # ------------------------------------------------------------------------------------------ weights
    def code_path_names(self) -> list[str]:
        """Names in state_dict() of the code path: its standardisation, conditioning net and block projections."""
        return [k for k in self.state_dict() if k.startswith(("code_mean", "code_std", "cond_net.")) or ".cond." in k]

    def start_from(self, source: "PixelCNNPP | dict[str, torch.Tensor]") -> None:
        """Copy every weight of an unconditional decoder (a model or its state dict) into this one.

        The code path (`code_path_names`) is left as built: its projections start at zero, so a conditional decoder
        started this way computes exactly the source's distribution until it learns to use the code. Every other
        weight must be in `source` under the same name and shape, and `source` must hold nothing else (and a source
        model must have the same config but for its code); otherwise IncompatibleWeightsError, and nothing is copied.
        """
        if isinstance(source, PixelCNNPP):
            fields = ("image_shape", "levels", "nr_resnet", "nr_filters", "nr_mix", "dropout")
            other = [f"{f} {getattr(source.cfg, f)} vs {getattr(self.cfg, f)}" for f in fields
                     if getattr(source.cfg, f) != getattr(self.cfg, f)]
            if other:
                raise IncompatibleWeightsError(f"cannot start this decoder from one of another config: "
                                               f"{', '.join(other)}")
        state = source.state_dict() if isinstance(source, nn.Module) else dict(source)
        own = self.state_dict()
        code = set(self.code_path_names())
        missing = [k for k in own if k not in code and k not in state]
        extra = [k for k in state if k not in own or k in code]
        shapes = [f"{k} {tuple(state[k].shape)} vs {tuple(own[k].shape)}" for k in own
                  if k in state and k not in code and tuple(state[k].shape) != tuple(own[k].shape)]
        if missing or extra or shapes:
            what = [f"{len(v)} {name} ({', '.join(v[:3])}{', ...' if len(v) > 3 else ''})"
                    for name, v in (("missing", missing), ("unexpected", extra), ("of another shape", shapes)) if v]
            raise IncompatibleWeightsError(f"cannot start this decoder ({self.cfg.nr_resnet}x{self.cfg.nr_filters}x"
                                           f"{self.cfg.nr_mix}) from the given weights: {'; '.join(what)}")
        self.load_state_dict({k: v for k, v in state.items()}, strict=False)

    # ------------------------------------------------------------------------------------------ codes
    def set_code_stats(self, codes: torch.Tensor | np.ndarray) -> None:
        """Set the standardisation of raw codes from training codes (N, *code_shape), float16/32 numpy or tensor.

        Per feature (vector) or per channel (spatial), accumulated in float64 over chunks (so large spatial code
        sets need no float64 copy); std clamped below at 1e-6, zero-variance features get std 1.
        """
        if self.cfg.code_shape is None:
            raise DecoderInputError("set_code_stats: this decoder is unconditional (code_shape=None)")
        want = tuple(self.cfg.code_shape)
        if len(codes.shape) != len(want) + 1 or tuple(codes.shape[1:]) != want or codes.shape[0] < 1:
            raise DecoderInputError(f"set_code_stats: codes have shape {list(codes.shape)}; "
                             f"this decoder expects [N, {', '.join(map(str, want))}] with N >= 1")
        per_row = int(np.prod(want))
        step = max(1, _STATS_CHUNK_ELEMENTS // per_row)
        count, mean, m2 = 0, None, None
        for start in range(0, codes.shape[0], step):
            part = codes[start:start + step]
            c = (part if isinstance(part, torch.Tensor) else torch.from_numpy(np.asarray(part))).to(torch.float64)
            if not torch.isfinite(c).all():
                raise DecoderInputError("set_code_stats: codes contain NaN or inf")
            flat = c.reshape(-1, want[0]) if len(want) == 1 else c.transpose(0, 1).reshape(want[0], -1).T  # (n, F)
            n_part, mean_part = flat.shape[0], flat.mean(0)
            m2_part = ((flat - mean_part) ** 2).sum(0)
            if mean is None:
                count, mean, m2 = n_part, mean_part, m2_part
            else:  # Chan et al. parallel variance
                delta, total = mean_part - mean, count + n_part
                mean = mean + delta * (n_part / total)
                m2 = m2 + m2_part + delta ** 2 * (count * n_part / total)
                count = total
        std = (m2 / count).sqrt()
        std = torch.where(std > 0, std.clamp(min=1e-6), torch.ones_like(std))
        shape = self.code_mean.shape
        self.code_mean.copy_(mean.reshape(shape).float())
        self.code_std.copy_(std.reshape(shape).float())

    def _as_code_tensor(self, code, batch: int | None) -> torch.Tensor:
        want = tuple(self.cfg.code_shape)
        t = torch.as_tensor(np.asarray(code) if not isinstance(code, torch.Tensor) else code)
        if t.dim() != len(want) + 1 or tuple(t.shape[1:]) != want or (batch is not None and t.shape[0] != batch):
            exp = f"[{batch if batch is not None else 'N'}, {', '.join(map(str, want))}]"
            raise DecoderInputError(f"code has shape {list(t.shape)}; this decoder expects {exp}")
        if not (t.is_floating_point() or t.dtype in (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)):
            raise DecoderInputError(f"code must hold numbers, got dtype {t.dtype}")
        return t.to(device=self._device(), dtype=torch.float32)

    def _device(self) -> torch.device:
        return self.nin_out.conv.parametrizations.weight.original0.device

    def _condition(self, code, batch: int) -> list[torch.Tensor] | torch.Tensor | None:
        """Raw code -> standardised conditioning input (vector (B, D) or per-resolution features)."""
        if self.cfg.code_shape is None:
            if code is not None:
                raise DecoderInputError("this decoder is unconditional (code_shape=None) but a code was given")
            return None
        if code is None:
            raise DecoderInputError(f"this decoder is conditional (code_shape={tuple(self.cfg.code_shape)}); give a "
                                    f"code")
        h = (self._as_code_tensor(code, batch) - self.code_mean) / self.code_std  # (B, *code_shape)
        return self.cond_net(h) if hasattr(self, "cond_net") else h

    # ------------------------------------------------------------------------------------------ network
    def _check_x(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor):
            x = torch.as_tensor(np.asarray(x))
        want = tuple(self.cfg.image_shape)
        if x.dim() != 4 or tuple(x.shape[1:]) != want:
            raise DecoderInputError(f"x has shape {list(x.shape)}; this decoder expects "
                                    f"[B, {', '.join(map(str, want))}]")
        if x.is_floating_point() or x.is_complex() or x.dtype == torch.bool:
            raise DecoderInputError(f"x must hold integers in [0, {self.cfg.levels - 1}] (uint8 or int64), got "
                                    f"{x.dtype}")
        if x.device.type == "cpu" and x.numel() and (int(x.min()) < 0 or int(x.max()) > self.cfg.levels - 1):
            raise DecoderInputError(f"x has values in [{int(x.min())}, {int(x.max())}], "
                                    f"outside [0, {self.cfg.levels - 1}]")
        return x

    def _input(self, x: torch.Tensor) -> torch.Tensor:
        """Network input (B, C+1, H, W) for integer images x (B, C, H, W): values scaled to [-1, 1] and a channel of
        ones (zero in the convs' padding, so the border is visible); the cached sampler builds its rows with it."""
        xs = mixture.scale_values(x, self.cfg.levels)  # (B, C, H, W) in [-1, 1]
        return torch.cat((xs, torch.ones_like(xs[:, :1])), dim=1)

    @staticmethod
    def _cond_at(cond, level: int, rows: int) -> torch.Tensor | None:
        """Conditioning input of the blocks at resolution `level` for an image of `rows` rows: None, the vector
        (B, D), or the spatial features cropped like the image."""
        if cond is None or isinstance(cond, torch.Tensor):
            return cond
        return cond[level][:, :, :rows >> level]

    def _up_pass(self, xs: torch.Tensor, cond) -> tuple[list[Stream], list[Stream]]:
        """The up pass of Salimans et al. (2017) (the "UP PASS" of pclucas14/pixel-cnn-pp's `PixelCNN.forward`) on the
        network input xs (B, C+1, H, W): the input convs, then at each resolution nr gated blocks per stream and,
        but at the last, a strided down-sampling. Returns every u and every ul it made, in order, each with its
        concat_elu, computed once: it is the next block's input and, in the down pass, a skip."""
        u = down_shift(self.u_init(xs))  # (B, F, H, W)
        ul = down_shift(self.ul_init_down(xs)) + right_shift(self.ul_init_right(xs))
        u_list, ul_list = [(u, concat_elu(u))], [(ul, concat_elu(ul))]
        for level in range(3):
            (u, ua), (ul, ula), h = u_list[-1], ul_list[-1], self._cond_at(cond, level, xs.shape[2])
            for bu, bul in zip(self.up_u[level], self.up_ul[level]):
                u = bu(u, h=h, x_act=ua)
                ua = concat_elu(u)
                ul = bul(ul, h=h, x_act=ula, a_act=ua)
                ula = concat_elu(ul)
                u_list.append((u, ua))
                ul_list.append((ul, ula))
            if level < 2:
                d_u, d_ul = self.downsize_u[level](u), self.downsize_ul[level](ul)  # (B, F, H/2, W/2)
                u_list.append((d_u, concat_elu(d_u)))
                ul_list.append((d_ul, concat_elu(d_ul)))
        return u_list, ul_list

    def _down_pass(self, u_list: list[Stream], ul_list: list[Stream], cond, rows: int) -> torch.Tensor:
        """The down pass ("DOWN PASS" there): starts from the up pass's last u and ul and pops the rest of the lists
        as skips, coarsest first, through nr, nr+1, nr+1 gated blocks per stream with a transposed-conv up-sampling
        between resolutions. Returns the last ul (B, F, H, W); `rows` is the image's height H."""
        (u, ua), (ul, ula) = u_list.pop(), ul_list.pop()
        for i, level in enumerate((2, 1, 0)):
            h = self._cond_at(cond, level, rows)
            blocks = list(zip(self.down_u[i], self.down_ul[i]))
            for k, (bu, bul) in enumerate(blocks):
                u = bu(u, h=h, x_act=ua, a_act=u_list.pop()[1])
                ua = concat_elu(u)
                ul = bul(ul, h=h, x_act=ula, a_act=concat_elu_of_cat(ua, ul_list.pop()[1]))
                if level > 0 or k + 1 < len(blocks):  # the last ul goes to the output through elu alone
                    ula = concat_elu(ul)
            if level > 0:
                u, ul = self.upsize_u[i](u), self.upsize_ul[i](ul)  # (B, F, 2H, 2W)
                ua, ula = concat_elu(u), concat_elu(ul)
        return ul

    def _network(self, x: torch.Tensor, cond) -> torch.Tensor:
        """Mixture parameters (B, P, H', W') for x (B, C, H', W'), H' <= H a multiple of 4 (a top crop is exact)."""
        u_list, ul_list = self._up_pass(self._input(x), cond)  # input (B, C+1, H', W')
        ul = self._down_pass(u_list, ul_list, cond, x.shape[2])  # (B, F, H', W')
        return self.nin_out(elu(ul))  # (B, P, H', W')

    def forward(self, x: torch.Tensor, code=None) -> torch.Tensor:
        """Raw mixture parameters (B, P, H, W) for integer images x (B, C, H, W)."""
        x = self._check_x(x)
        return self._network(x, self._condition(code, x.shape[0]))

    def log_prob(self, x: torch.Tensor, code=None) -> torch.Tensor:
        """log p(x_{c,i,j} | earlier sub-pixels, code) in nats, (B, C, H, W); float32 also under autocast."""
        x = self._check_x(x)
        params = self._network(x, self._condition(code, x.shape[0]))
        return mixture.log_prob(params, x, self.cfg.levels, self.cfg.nr_mix)

    def nll_bits(self, x: torch.Tensor, code=None) -> torch.Tensor:
        """Per-image NLL in bits, (B,): -sum(log_prob)/ln 2, computed from the pixels' joint log-probs."""
        x = self._check_x(x)
        params = self._network(x, self._condition(code, x.shape[0]))
        return -mixture.joint_log_prob(params, x, self.cfg.levels, self.cfg.nr_mix).sum(dim=(1, 2)) / _LN2

    # ------------------------------------------------------------------------------------------ sampling
    @torch.no_grad()
    def sample(self, code=None, n: int | None = None, generator: torch.Generator | None = None,
               method: str = "cached") -> torch.Tensor:
        """Draw n images, uint8 (n, C, H, W) in [0, L-1], exactly from the model, in eval mode.

        With a code of batch B, n defaults to B (and must equal it); without a code n is required.
        The same generator state gives the same samples. method "cached" (decoders/sampling.py) computes each
        layer once per position; "naive" runs the network on the image so far for every pixel, the reference.
        On CPU both draw the same integers from the same generator state (bit-identical mixture parameters).
        """
        cfg = self.cfg
        if method not in SAMPLE_METHODS:
            raise DecoderInputError(f"sample: method must be one of {', '.join(SAMPLE_METHODS)}, got {method!r}")
        if code is not None and cfg.code_shape is None:
            raise DecoderInputError("sample: this decoder is unconditional (code_shape=None) but a code was given")
        if code is not None:
            code_t = self._as_code_tensor(code, None)
            if n is not None and n != code_t.shape[0]:
                raise DecoderInputError(f"sample: n={n} but the code has batch {code_t.shape[0]}")
            n = code_t.shape[0]
        elif n is None:
            raise DecoderInputError("sample: give n (the number of images) when there is no code")
        if n < 1:
            raise DecoderInputError(f"sample: n must be >= 1, got {n}")
        return self._sample(code, n, generator, method)

    @torch.no_grad()
    def _sample(self, code, n: int, generator: torch.Generator | None, method: str, rows: int | None = None,
                exact: bool = True) -> torch.Tensor:
        """sample() after its checks; the benchmark also times a prefix of `rows` image rows, and the naive
        sampler with PyTorch's own kernel choice (exact=False: the sampler as it was before the cached one)."""
        c, h, w = self.cfg.image_shape
        rows = h if rows is None else rows
        was_training = self.training
        self.eval()
        try:
            with parametrize.cached(), exact_kernels(exact):
                cond = self._condition(code, n)
                x = torch.zeros(n, c, h, w, dtype=torch.long, device=self._device())
                if method == "cached":
                    CachedSampler(self, cond).run(x, generator, rows)
                else:
                    self._sample_naive(x, cond, generator, rows)
        finally:
            self.train(was_training)
        return x.to(torch.uint8)

    def _sample_naive(self, x: torch.Tensor, cond, generator: torch.Generator | None, rows: int) -> None:
        """The reference: for every pixel, the network on the image so far (rows below the current 4 cropped)."""
        cfg = self.cfg
        h, w = cfg.image_shape[1:]
        for i in range(rows):
            crop = min(h, (i // 4 + 1) * 4)  # outputs of rows <= i only see rows <= i: crop the rest
            for j in range(w):
                params = self._network(x[:, :, :crop], cond)[:, :, i, j].contiguous()  # (n, P)
                x[:, :, i, j] = mixture.sample(params, cfg.levels, cfg.nr_mix, cfg.channels, generator)
