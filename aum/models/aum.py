"""Audio Mamba (AuM): a bidirectional selective-state-space encoder over log-mel patches.

Layout and parameter names follow the official AuM checkpoints (``patch_embed.proj``, ``cls_token``,
``pos_embed.pos_embed`` with the class slot at index 0, ``layers.{i}.mixer/norm``, ``norm_f``, ``head``),
so their state_dicts load as they are. ``docs/models.md`` (AuM) has the facts this is built from.

Input: ``[batch, frames, mel]`` log-mel fbank. The spectrogram is read as an image ``[batch, 1, mel, frames]``
and cut into 16x16 patches; tokens are in frequency-major order (``index = f * T' + t``). Any number of
frames (at least one patch) works: the position embedding is interpolated to the input's patch grid.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from aum.modules import DIRECTIONS, Block, MambaMixer

CLS_POSITIONS = ("head", "middle", "tail", "none")


@dataclass
class AuMConfig:
    """Everything needed to rebuild an AuM encoder (stored in every checkpoint as JSON)."""

    embed_dim: int = 768
    depth: int = 24
    mixer: str = "v1"
    cls_position: str = "middle"
    num_classes: int = 0
    num_mel_bins: int = 128
    target_frames: int = 1024
    patch_size: tuple[int, int] = (16, 16)
    patch_stride: tuple[int, int] = (16, 16)
    d_state: int = 16
    d_conv: int = 4
    expand: int = 2
    norm_eps: float = 1e-5
    residual_in_fp32: bool = True
    scan_backend: str | None = field(default=None, metadata={"runtime": True})

    def __post_init__(self):
        self.patch_size = tuple(int(v) for v in self.patch_size)
        self.patch_stride = tuple(int(v) for v in self.patch_stride)
        if self.mixer not in DIRECTIONS:
            raise ValueError(f"unknown mixer {self.mixer!r}; choose one of {DIRECTIONS}")
        if self.cls_position not in CLS_POSITIONS:
            raise ValueError(f"unknown cls_position {self.cls_position!r}; choose one of {CLS_POSITIONS}")

    @classmethod
    def from_dict(cls, values: dict) -> "AuMConfig":
        """Build from a plain dict; an unknown key is an error naming the valid ones."""
        names = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(values) - set(names))
        if unknown:
            raise KeyError(f"unknown AuM config key(s) {unknown}; valid keys: {names}")
        return cls(**values)

    def to_dict(self) -> dict:
        """Plain, JSON-serialisable dict (runtime-only fields such as the scan backend left out)."""
        return {f.name: (list(v) if isinstance(v := getattr(self, f.name), tuple) else v)
                for f in dataclasses.fields(self) if not f.metadata.get("runtime")}

    def grid(self, frames: int, mel: int | None = None) -> tuple[int, int]:
        """Patch grid ``(frequency, time)`` of a ``[frames, mel]`` spectrogram."""
        mel = self.num_mel_bins if mel is None else mel
        (pf, pt), (sf, st) = self.patch_size, self.patch_stride
        if frames < pt or mel < pf:
            raise ValueError(f"input of {frames} frames x {mel} mel bins is smaller than one "
                             f"{pf}x{pt} patch; pad it to at least {pt} frames")
        return (mel - pf) // sf + 1, (frames - pt) // st + 1


class AuMOutput(NamedTuple):
    """What the encoder gives back.

    ``tokens``: final-normed patch tokens ``[B, F'*T', D]`` (frequency-major); ``grid``: ``(F', T')``;
    ``cls``: class-token output ``[B, D]`` or ``None``; ``pooled``: the clip embedding (class token, or the
    mean of patch tokens when there is none); ``logits``: head output ``[B, classes]`` or ``None``.
    """

    tokens: torch.Tensor
    grid: tuple[int, int]
    cls: torch.Tensor | None
    pooled: torch.Tensor
    logits: torch.Tensor | None


class PatchEmbed(nn.Module):
    """``Conv2d(1, D, patch, stride)`` over the ``[mel, frames]`` image, flattened frequency-major."""

    def __init__(self, dim: int, patch_size, stride):
        super().__init__()
        self.proj = nn.Conv2d(1, dim, kernel_size=patch_size, stride=stride)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """``[B, 1, mel, frames] -> [B, F'*T', D]``."""
        return self.proj(image).flatten(2).transpose(1, 2)


class PosEmbed(nn.Module):
    """Learned absolute position embedding ``[1, n_prefix + F'*T', D]`` with the class slot at index 0."""

    def __init__(self, dim: int, grid: tuple[int, int], n_prefix: int):
        super().__init__()
        self.grid, self.n_prefix = tuple(grid), n_prefix
        self.pos_embed = nn.Parameter(torch.zeros(1, n_prefix + grid[0] * grid[1], dim))

    def forward(self, grid: tuple[int, int]) -> tuple[torch.Tensor | None, torch.Tensor]:
        """``(class-slot embedding [1,1,D] or None, patch embeddings [1, F'*T', D])`` for ``grid``."""
        prefix = self.pos_embed[:, : self.n_prefix] if self.n_prefix else None
        return prefix, resize_pos_grid(self.pos_embed[:, self.n_prefix:], self.grid, grid)


def resize_pos_grid(pos: torch.Tensor, old: tuple[int, int], new: tuple[int, int]) -> torch.Tensor:
    """Bilinear, antialiased resize of ``[1, old_f*old_t, D]`` patch embeddings to the ``new`` grid."""
    if tuple(old) == tuple(new):
        return pos
    dim = pos.shape[-1]
    img = pos.reshape(1, old[0], old[1], dim).permute(0, 3, 1, 2)
    img = F.interpolate(img.float(), size=tuple(new), mode="bilinear", antialias=True, align_corners=False)
    return img.permute(0, 2, 3, 1).reshape(1, new[0] * new[1], dim).to(pos.dtype)


class AuM(nn.Module):
    """The Audio Mamba encoder. ``forward(fbank [B, frames, mel])`` returns logits (or the pooled embedding
    when ``num_classes == 0``); ``forward_features`` returns an :class:`AuMOutput`."""

    def __init__(self, config: AuMConfig | None = None, **overrides):
        super().__init__()
        config = dataclasses.replace(config or AuMConfig())        # our own copy: reset_classifier edits it
        if overrides:
            config = AuMConfig.from_dict({**config.to_dict(), "scan_backend": config.scan_backend, **overrides})
        self.config = c = config
        self.embed_dim = self.num_features = c.embed_dim
        self.patch_embed = PatchEmbed(c.embed_dim, c.patch_size, c.patch_stride)
        has_cls = c.cls_position != "none"
        if has_cls:
            self.cls_token = nn.Parameter(torch.zeros(1, 1, c.embed_dim))
        self.pos_embed = PosEmbed(c.embed_dim, c.grid(c.target_frames), n_prefix=int(has_cls))
        self.layers = nn.ModuleList(
            Block(c.embed_dim,
                  MambaMixer(c.embed_dim, d_state=c.d_state, d_conv=c.d_conv, expand=c.expand,
                             direction=c.mixer, scan_backend=c.scan_backend),
                  norm_eps=c.norm_eps, residual_in_fp32=c.residual_in_fp32)
            for _ in range(c.depth))
        self.norm_f = nn.RMSNorm(c.embed_dim, eps=c.norm_eps)
        self.head = nn.Linear(c.embed_dim, c.num_classes) if c.num_classes > 0 else nn.Identity()
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        """From-scratch init of the official code (docs/models.md, "Initialisation from scratch")."""
        nn.init.trunc_normal_(self.pos_embed.pos_embed, std=0.02)
        if hasattr(self, "cls_token"):
            nn.init.trunc_normal_(self.cls_token, std=0.02)
        w = self.patch_embed.proj.weight                       # lecun normal: truncated at 2 std
        std = math.sqrt(1.0 / (w.shape[1] * w.shape[2] * w.shape[3])) / 0.87962566103423978
        nn.init.trunc_normal_(w, std=std, a=-2 * std, b=2 * std)
        nn.init.zeros_(self.patch_embed.proj.bias)
        if isinstance(self.head, nn.Linear):
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
        for layer in self.layers:
            nn.init.kaiming_uniform_(layer.mixer.out_proj.weight, a=math.sqrt(5))
            layer.mixer.out_proj.weight /= math.sqrt(self.config.depth)

    @property
    def has_cls(self) -> bool:
        """Whether the encoder carries a class token."""
        return self.config.cls_position != "none"

    # the self-description DASS shares (aum.models.dass), for callers that handle both families
    family = "aum"

    @property
    def num_layers(self) -> int:
        """Read-out points of ``forward_features(layer=...)``: the blocks, ``depth``."""
        return self.config.depth

    def layer_dim(self, layer: int | None = None) -> int:
        """Token width at read-out ``layer`` (the same at every layer)."""
        return self.embed_dim

    def frame_multiple(self, layer: int | None = None) -> int:
        """Input frames per token along time (the patch stride)."""
        return int(self.config.patch_stride[1])

    def token_frames(self, layer: int | None = None) -> int:
        """Input frames one token covers along time (the patch width; ``frame_multiple`` is the step)."""
        return int(self.config.patch_size[1])

    def token_grid(self, frames: int, mel: int | None = None, layer: int | None = None) -> tuple[int, int]:
        """Token grid ``(frequency, time)`` of a ``[frames, mel]`` input (the same at every layer)."""
        return self.config.grid(frames, mel)

    def cls_index(self, n_patches: int) -> int:
        """Where the class token sits in a sequence of ``n_patches`` patch tokens."""
        return {"head": 0, "middle": n_patches // 2, "tail": n_patches}[self.config.cls_position]

    def embed(self, fbank: torch.Tensor, mask: torch.Tensor | None = None,
              mask_token: torch.Tensor | None = None, keep: torch.Tensor | None = None):
        """Patch-embed, add positions and insert the class token: ``(sequence, grid, cls index)``.

        For masked pretraining: ``mask`` (bool ``[B, N]``) replaces those patch embeddings in place by
        ``mask_token`` (``[1, 1, D]``) before positions are added (SSAST); ``keep`` (long ``[B, K]``,
        ascending) keeps only those patches, each with its own position (MAE). The class token goes to its
        configured place in the resulting sequence.
        """
        if fbank.dim() != 3 or fbank.shape[-1] != self.config.num_mel_bins:
            raise ValueError(f"AuM expects a fbank of shape [batch, frames, {self.config.num_mel_bins}], "
                             f"got {tuple(fbank.shape)}")
        grid = self.config.grid(fbank.shape[1], fbank.shape[2])
        x = self.patch_embed(fbank.unsqueeze(1).transpose(2, 3))
        if mask is not None:
            x = torch.where(mask.unsqueeze(-1), mask_token.to(x.dtype), x)
        cls_pos, patch_pos = self.pos_embed(grid)
        x = x + patch_pos.to(x.dtype)
        if keep is not None:
            x = torch.gather(x, 1, keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]))
        if not self.has_cls:
            return x, grid, None
        idx = self.cls_index(x.shape[1])
        cls = (self.cls_token + cls_pos).to(x.dtype).expand(x.shape[0], -1, -1)
        return torch.cat([x[:, :idx], cls, x[:, idx:]], dim=1), grid, idx

    def forward_features(self, fbank: torch.Tensor, layer: int | None = None, mask: torch.Tensor | None = None,
                         mask_token: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> AuMOutput:
        """Run the encoder. ``layer`` (1..depth) stops early and reads the residual stream after that many
        blocks through ``norm_f`` (for probing intermediate layers); ``mask``/``mask_token``/``keep`` as in
        :meth:`embed` (``tokens`` then holds the kept patches only)."""
        return self.forward_layers(fbank, [self.config.depth if layer is None else layer], mask=mask,
                                   mask_token=mask_token, keep=keep)[0]

    def forward_layers(self, fbank: torch.Tensor, layers, mask: torch.Tensor | None = None,
                       mask_token: torch.Tensor | None = None, keep: torch.Tensor | None = None) -> list[AuMOutput]:
        """:meth:`forward_features` read at several layers (1..depth, in any order) in one pass through the
        blocks: one :class:`AuMOutput` per entry of ``layers``, each through ``norm_f`` (and the head)."""
        layers = [int(n) for n in layers]
        if not layers or not all(1 <= n <= self.config.depth for n in layers):
            raise ValueError(f"layer must be in 1..{self.config.depth}, got {layers}")
        x, grid, idx = self.embed(fbank, mask=mask, mask_token=mask_token, keep=keep)
        read: dict[int, AuMOutput] = {}
        hidden, residual = x, None
        for n, block in enumerate(self.layers[:max(layers)], start=1):
            hidden, residual = block(hidden, residual)
            if n in layers:
                read[n] = self._read_out(residual + hidden, grid, idx)
        return [read[n] for n in layers]

    def _read_out(self, stream: torch.Tensor, grid, idx: int | None) -> AuMOutput:
        out = self.norm_f(stream.to(self.norm_f.weight.dtype))
        if idx is None:
            tokens, cls, pooled = out, None, out.mean(dim=1)
        else:
            tokens = torch.cat([out[:, :idx], out[:, idx + 1:]], dim=1)
            cls = pooled = out[:, idx]
        logits = self.head(pooled) if isinstance(self.head, nn.Linear) else None
        return AuMOutput(tokens, grid, cls, pooled, logits)

    def forward(self, fbank: torch.Tensor) -> torch.Tensor:
        """Logits ``[B, classes]``, or the pooled clip embedding ``[B, D]`` for a headless encoder."""
        out = self.forward_features(fbank)
        return out.pooled if out.logits is None else out.logits

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head (``0`` removes it), e.g. to fine-tune on a benchmark with other classes."""
        self.config.num_classes = num_classes
        self.head = nn.Linear(self.embed_dim, num_classes) if num_classes > 0 else nn.Identity()
        if num_classes > 0:
            nn.init.trunc_normal_(self.head.weight, std=0.02)
            nn.init.zeros_(self.head.bias)
