"""DASS (Bhati et al., 2024): a VMamba-style 2-D selective-state-space encoder distilled from AST.

Pure PyTorch, channel-first ``[batch, C, H, W]`` throughout, with H = frequency (mel bin 0 at h = 0) and
W = time. A stem of two stride-2 convolutions, four stages of VSS blocks (an SS2D mixer scanning the grid in
four directions, then an MLP) with a stride-2 downsampling between stages, and a head LN -> average pool ->
Linear. No position embedding and no class token, so any number of frames works (each stride-2 conv maps
``n -> ceil(n / 2)``). ``docs/models.md`` (DASS) has the facts this is built from.

Module names follow the official ``.pth`` (after its ``module.v.`` prefix): ``patch_embed.{0,2,5,7}``,
``layers.{i}.blocks.{j}.{norm,op,norm2,mlp}``, ``layers.{i}.downsample.{1,3}``, ``classifier.{norm,head}``,
with the same shapes, so an official state_dict loads under its own names (``aum.checkpoint.official_dass``).

Read-outs (``forward_features(x, layer=n)`` / ``forward_layers``) are indexed by **block**, ``1..num_layers``
counted across stages (``num_layers = sum(depths)``): the feature map after block ``n`` (before its stage's
downsampling). Blocks of the last stage go through the head's LayerNorm (and the head, for logits), as the
final output does; blocks of earlier stages have another width, so they go through a parameter-free
LayerNorm over channels and carry no logits.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from aum.models.aum import AuMOutput
from aum.ops import selective_scan

K_DIRECTIONS = 4


@dataclass
class DASSConfig:
    """Everything needed to rebuild a DASS encoder (JSON-serialisable through :meth:`to_dict`)."""

    dims: tuple[int, ...] = (96, 192, 384, 768)
    depths: tuple[int, ...] = (2, 2, 8, 2)
    num_classes: int = 0
    num_mel_bins: int = 128
    target_frames: int = 1024
    d_state: int = 1
    d_conv: int = 3
    mlp_ratio: float = 4.0
    drop_path_rate: float = 0.2
    norm_eps: float = 1e-5
    scan_backend: str | None = field(default=None, metadata={"runtime": True})

    def __post_init__(self):
        self.dims = tuple(int(v) for v in self.dims)
        self.depths = tuple(int(v) for v in self.depths)
        if not self.dims or len(self.dims) != len(self.depths):
            raise ValueError(f"dims {self.dims} and depths {self.depths} must be non-empty and of equal length")
        if min(self.dims) < 1 or min(self.depths) < 1 or self.d_state < 1:
            raise ValueError(f"dims, depths and d_state must be >= 1; got {self.dims}, {self.depths}, {self.d_state}")
        if self.dims[0] < 2:
            raise ValueError(f"dims[0] must be >= 2 (the stem's first conv has dims[0] // 2 channels), "
                             f"got {self.dims[0]}")
        if not 0.0 <= self.drop_path_rate < 1.0:
            raise ValueError(f"drop_path_rate must be in [0, 1), got {self.drop_path_rate}")

    @classmethod
    def from_dict(cls, values: dict) -> "DASSConfig":
        """Build from a plain dict; an unknown key is an error naming the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise KeyError(f"unknown DASS config key(s) {unknown}; valid keys: {names}")
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict (runtime-only fields such as the scan backend left out)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self) if not f.metadata.get("runtime")}

    @property
    def num_layers(self) -> int:
        """Number of VSS blocks (read-out points)."""
        return sum(self.depths)

    def dt_rank(self, stage: int) -> int:
        """Rank of the delta projection in ``stage`` ("auto": ``ceil(C / 16)``)."""
        return math.ceil(self.dims[stage] / 16)


def halve(n: int, times: int = 1) -> int:
    """Size after ``times`` stride-2 convolutions (kernel 3, padding 1): ``ceil(n / 2)`` each."""
    for _ in range(times):
        n = (n + 1) // 2
    return n


def drop_path(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Stochastic depth: drop whole samples' residual branch with probability ``p`` (identity at eval)."""
    if p == 0.0 or not training:
        return x
    keep = x.new_empty((x.shape[0],) + (1,) * (x.dim() - 1)).bernoulli_(1.0 - p)
    return x * keep / (1.0 - p)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of a channel-first ``[B, C, H, W]`` map, at each position."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Normalise ``x`` over dim 1."""
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class Linear2d(nn.Linear):
    """A 1x1 convolution stored as a Linear (2-D weight ``[out, in]``), applied to ``[B, C, H, W]``."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, in, H, W] -> [B, out, H, W]``."""
        return F.conv2d(x, self.weight[:, :, None, None], self.bias)


def cross_scan(x: torch.Tensor) -> torch.Tensor:
    """``[B, C, H, W] -> [B, 4, C, H*W]``: row-major (time fastest), column-major (frequency fastest), and
    both reversed."""
    rows = x.flatten(2)
    cols = x.transpose(2, 3).flatten(2)
    return torch.stack([rows, cols, rows.flip(-1), cols.flip(-1)], dim=1)


def cross_merge(ys: torch.Tensor, height: int, width: int) -> torch.Tensor:
    """Inverse of :func:`cross_scan`, summed over directions: ``[B, 4, C, H*W] -> [B, C, H, W]``."""
    b, _, c, _ = ys.shape
    rows = ys[:, 0] + ys[:, 2].flip(-1)
    cols = ys[:, 1] + ys[:, 3].flip(-1)
    return (rows.view(b, c, height, width) + cols.view(b, c, width, height).transpose(2, 3)).contiguous()


class SS2D(nn.Module):
    """The 2-D selective-scan mixer (VMamba ``v05_noz``: no gate branch): 1x1 in-projection, depthwise 3x3
    conv + SiLU, four-direction selective scan with per-direction B, C, delta, merge, LayerNorm, 1x1 out."""

    def __init__(self, dim: int, d_state: int = 1, dt_rank: int | None = None, d_conv: int = 3,
                 norm_eps: float = 1e-5, scan_backend: str | None = None):
        super().__init__()
        k, n = K_DIRECTIONS, d_state
        self.dim, self.d_state, self.scan_backend = dim, d_state, scan_backend
        self.dt_rank = r = dt_rank or math.ceil(dim / 16)
        self.in_proj = Linear2d(dim, dim, bias=False)
        self.conv2d = nn.Conv2d(dim, dim, d_conv, padding=(d_conv - 1) // 2, groups=dim, bias=False)
        self.x_proj_weight = nn.Parameter(torch.empty(k, r + 2 * n, dim))
        self.dt_projs_weight = nn.Parameter(torch.empty(k, dim, r))
        self.dt_projs_bias = nn.Parameter(torch.empty(k, dim))
        self.A_logs = nn.Parameter(torch.empty(k * dim, n))
        self.Ds = nn.Parameter(torch.empty(k * dim))
        self.out_norm = LayerNorm2d(dim, eps=norm_eps)
        self.out_proj = Linear2d(dim, dim, bias=False)
        self.reset_ssm_parameters()

    @torch.no_grad()
    def reset_ssm_parameters(self, dt_min: float = 1e-3, dt_max: float = 0.1, dt_floor: float = 1e-4) -> None:
        """Mamba init: x_proj as a default Linear, dt weights U(+-rank^-0.5), dt bias = softplus^-1 of a
        log-uniform step in ``[dt_min, dt_max]``, ``A = -[1..N]`` (stored as its log), ``D = 1``."""
        bound = 1.0 / math.sqrt(self.dim)                      # nn.Linear's default (kaiming uniform, a=sqrt 5)
        self.x_proj_weight.uniform_(-bound, bound)
        self.dt_projs_weight.uniform_(-self.dt_rank ** -0.5, self.dt_rank ** -0.5)
        dt = torch.exp(torch.rand_like(self.dt_projs_bias) * (math.log(dt_max) - math.log(dt_min))
                       + math.log(dt_min)).clamp(min=dt_floor)
        self.dt_projs_bias.copy_(dt + torch.log(-torch.expm1(-dt)))
        a = torch.arange(1, self.d_state + 1, dtype=torch.float32, device=self.A_logs.device)
        self.A_logs.copy_(torch.log(a).expand_as(self.A_logs))
        self.Ds.fill_(1.0)

    def scan_inputs(self, x: torch.Tensor):
        """Per-direction scan inputs of a conv-activated map ``x [B, C, H, W]``: ``(xs [B, 4, C, L],
        dts [B, 4, C, L], Bs [B, 4, N, L], Cs [B, 4, N, L])``."""
        xs = cross_scan(x)
        dbl = torch.einsum("kec,bkcl->bkel", self.x_proj_weight.to(xs.dtype), xs)
        dt, bs, cs = torch.split(dbl, [self.dt_rank, self.d_state, self.d_state], dim=2)
        dts = torch.einsum("kcr,bkrl->bkcl", self.dt_projs_weight.to(xs.dtype), dt)
        return xs, dts, bs.contiguous(), cs.contiguous()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        b, c, h, w = x.shape
        x = F.silu(self.conv2d(self.in_proj(x)))
        xs, dts, bs, cs = self.scan_inputs(x)
        y = selective_scan(xs.reshape(b, -1, h * w), dts.reshape(b, -1, h * w), -torch.exp(self.A_logs), bs, cs,
                           D=self.Ds, delta_bias=self.dt_projs_bias.reshape(-1), delta_softplus=True,
                           backend=self.scan_backend)       # computes in float32 (float64 for float64 input)
        y = cross_merge(y.view(b, K_DIRECTIONS, c, h * w), h, w)
        return self.out_proj(self.out_norm(y).to(x.dtype))


class MLP(nn.Module):
    """1x1 conv ``C -> hidden`` (bias), exact GELU, 1x1 conv ``hidden -> C`` (bias)."""

    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = Linear2d(dim, hidden)
        self.fc2 = Linear2d(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        return self.fc2(F.gelu(self.fc1(x)))


class VSSBlock(nn.Module):
    """Pre-norm residual block: ``x + DropPath(SS2D(LN(x)))``, then ``x + DropPath(MLP(LN(x)))``."""

    def __init__(self, dim: int, config: DASSConfig, drop_path: float, dt_rank: int):
        super().__init__()
        self.drop_prob = drop_path
        self.norm = LayerNorm2d(dim, eps=config.norm_eps)
        self.op = SS2D(dim, d_state=config.d_state, dt_rank=dt_rank, d_conv=config.d_conv,
                       norm_eps=config.norm_eps, scan_backend=config.scan_backend)
        self.norm2 = LayerNorm2d(dim, eps=config.norm_eps)
        self.mlp = MLP(dim, int(dim * config.mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``[B, C, H, W] -> [B, C, H, W]``."""
        x = x + drop_path(self.op(self.norm(x)), self.drop_prob, self.training)
        return x + drop_path(self.mlp(self.norm2(x)), self.drop_prob, self.training)


class Stage(nn.Module):
    """``blocks`` at one width, then ``downsample`` (stride-2 conv to the next width + LN; identity last)."""

    def __init__(self, blocks: list[VSSBlock], dim: int, next_dim: int | None, norm_eps: float):
        super().__init__()
        self.blocks = nn.Sequential(*blocks)
        self.downsample = nn.Identity() if next_dim is None else nn.Sequential(
            nn.Identity(), nn.Conv2d(dim, next_dim, 3, stride=2, padding=1), nn.Identity(),
            LayerNorm2d(next_dim, eps=norm_eps))


class DASS(nn.Module):
    """The DASS encoder. ``forward(fbank [B, frames, mel])`` returns logits (or the pooled embedding when
    ``num_classes == 0``); ``forward_features`` returns an :class:`aum.models.AuMOutput` with ``cls=None``."""

    family: ClassVar[str] = "dass"
    feature_preset: ClassVar[str] = "audioset"     # Kaldi fbank, AudioSet mean/std (docs/models.md)
    has_cls: ClassVar[bool] = False                # no class token: ``pooled`` is the mean of the tokens

    def __init__(self, config: DASSConfig | None = None, **overrides):
        super().__init__()
        config = dataclasses.replace(config or DASSConfig())
        if overrides:
            config = DASSConfig.from_dict({**config.to_dict(), "scan_backend": config.scan_backend, **overrides})
        self.config = c = config
        self.embed_dim = self.num_features = c.dims[-1]
        stem = c.dims[0] // 2
        self.patch_embed = nn.Sequential(
            nn.Conv2d(1, stem, 3, stride=2, padding=1), nn.Identity(), LayerNorm2d(stem, eps=c.norm_eps),
            nn.Identity(), nn.GELU(), nn.Conv2d(stem, c.dims[0], 3, stride=2, padding=1), nn.Identity(),
            LayerNorm2d(c.dims[0], eps=c.norm_eps))
        rates = [c.drop_path_rate * j / max(1, c.num_layers - 1) for j in range(c.num_layers)]   # linear 0 -> max
        self.layers = nn.ModuleList()
        for i, (dim, depth) in enumerate(zip(c.dims, c.depths)):
            first = sum(c.depths[:i])
            blocks = [VSSBlock(dim, c, rates[first + j], c.dt_rank(i)) for j in range(depth)]
            nxt = c.dims[i + 1] if i + 1 < len(c.dims) else None
            self.layers.append(Stage(blocks, dim, nxt, c.norm_eps))
        self.classifier = nn.ModuleDict({"norm": LayerNorm2d(c.dims[-1], eps=c.norm_eps), "head": self._head()})
        self.apply(self._init_module)

    def _head(self) -> nn.Module:
        n = self.config.num_classes
        return nn.Linear(self.embed_dim, n) if n > 0 else nn.Identity()

    @staticmethod
    @torch.no_grad()
    def _init_module(m: nn.Module) -> None:
        if isinstance(m, nn.Linear):                # also the 1x1 Linear2d projections and the head
            nn.init.trunc_normal_(m.weight, std=0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)

    # -- self-description, for callers that handle several encoder families --------------------------------
    @property
    def num_layers(self) -> int:
        """Read-out points of ``forward_features(layer=...)``: the blocks, ``sum(depths)``."""
        return self.config.num_layers

    def stage_of(self, layer: int) -> int:
        """Stage (0-based) of read-out ``layer`` (1..num_layers)."""
        if not 1 <= layer <= self.num_layers:
            raise ValueError(f"layer must be in 1..{self.num_layers}, got {layer}")
        return next(i for i in range(len(self.config.depths)) if layer <= sum(self.config.depths[:i + 1]))

    def layer_dim(self, layer: int | None = None) -> int:
        """Token width at read-out ``layer`` (default: the last, = ``embed_dim``)."""
        return self.embed_dim if layer is None else self.config.dims[self.stage_of(layer)]

    def frame_multiple(self, layer: int | None = None) -> int:
        """Input frames (and mel bins) per token along time (frequency) at read-out ``layer`` (32 at the last)."""
        stage = len(self.config.dims) - 1 if layer is None else self.stage_of(layer)
        return 2 ** (2 + stage)

    def token_frames(self, layer: int | None = None) -> int:
        """Input frames one token stands for along time at read-out ``layer``: its ``frame_multiple`` cell (a
        partial last cell counts as a token: ``ceil``)."""
        return self.frame_multiple(layer)

    def token_grid(self, frames: int, mel: int | None = None, layer: int | None = None) -> tuple[int, int]:
        """Token grid ``(frequency, time)`` of a ``[frames, mel]`` input at read-out ``layer`` (default last)."""
        mel = self.config.num_mel_bins if mel is None else mel
        times = int(math.log2(self.frame_multiple(layer)))
        return halve(mel, times), halve(frames, times)

    # -- forward -------------------------------------------------------------------------------------------
    def forward_features(self, fbank: torch.Tensor, layer: int | None = None) -> AuMOutput:
        """Run the encoder on a normalised fbank ``[B, frames, mel]``. ``layer`` (1..num_layers, default the
        last) reads the feature map after that block (see the module docstring for the norm used)."""
        return self.forward_layers(fbank, [self.num_layers if layer is None else layer])[0]

    def forward_layers(self, fbank: torch.Tensor, layers) -> list[AuMOutput]:
        """:meth:`forward_features` read after several blocks (1..num_layers, any order) in one pass."""
        layers = [int(n) for n in layers]
        if not layers or not all(1 <= n <= self.num_layers for n in layers):
            raise ValueError(f"layer must be in 1..{self.num_layers}, got {layers}")
        if fbank.dim() != 3 or fbank.shape[-1] != self.config.num_mel_bins or fbank.shape[1] < 1:
            raise ValueError(f"DASS expects a fbank of shape [batch, frames >= 1, {self.config.num_mel_bins}], "
                             f"got {tuple(fbank.shape)}")
        x = self.patch_embed(fbank.unsqueeze(1).transpose(2, 3))     # [B, 1, mel, frames]: H = freq, W = time
        read: dict[int, AuMOutput] = {}
        n, last = 0, max(layers)
        for i, stage in enumerate(self.layers):
            for block in stage.blocks:
                x = block(x)
                n += 1
                if n in layers:
                    read[n] = self._read_out(x, i == len(self.layers) - 1)
                if n == last:
                    return [read[k] for k in layers]
            x = stage.downsample(x)
        return [read[k] for k in layers]

    def _read_out(self, x: torch.Tensor, last_stage: bool) -> AuMOutput:
        if last_stage:
            x = self.classifier["norm"](x)
        else:
            x = F.layer_norm(x.permute(0, 2, 3, 1), (x.shape[1],), eps=self.config.norm_eps).permute(0, 3, 1, 2)
        grid = (x.shape[2], x.shape[3])
        tokens = x.flatten(2).transpose(1, 2)                          # frequency-major: index = f * W + t
        pooled = tokens.mean(dim=1)
        head = self.classifier["head"]
        logits = head(pooled) if last_stage and isinstance(head, nn.Linear) else None
        return AuMOutput(tokens, grid, None, pooled, logits)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]``, or the pooled clip embedding ``[B, C]`` for a headless encoder."""
        out = self.forward_features(fbank)
        return out.pooled if out.logits is None else out.logits

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (``0`` removes it), e.g. to fine-tune on a benchmark with other classes."""
        self.config.num_classes = num_classes
        self.classifier["head"] = self._head()
        self._init_module(self.classifier["head"])
