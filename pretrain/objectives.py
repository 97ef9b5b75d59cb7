"""Self-supervised objectives around an AuM encoder: SSAST (mask tokens in place) and MAE (drop them).

* :class:`SSASTObjective` - masked patches are replaced in place by a learned mask token and the encoder
  sees the whole sequence; two small heads on the masked outputs give the joint SSAST loss:
  InfoNCE between predicted and true patches within each clip (discriminative) plus ``gen_weight`` x MSE
  reconstruction (generative; weight 10 as SSAST). ``gen_weight=0`` or ``disc_weight=0`` give the
  single-term variants (reconstruction-only is known to be weak).
* :class:`MAEObjective` - masked patches are DROPPED: the encoder runs on the visible patches only (in
  order, with their own positions); a light Mamba decoder fills mask tokens back in and reconstructs the
  masked patches against per-patch-normalised targets.

Both take a batch ``{"fbank": [B, frames, mel]}`` and return ``(loss, metrics, details)`` where
``details`` carries the mask and the reconstruction for figures.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from aum.models import AuM
from aum.models.aum import PosEmbed
from aum.modules import Block, MambaMixer
from pretrain.masking import Mask, make_mask, patchify


def _mlp(dim_in: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, dim_in), nn.ReLU(), nn.Linear(dim_in, dim_out))


class _Objective(nn.Module):
    """Shared parts: the encoder, the mask drawing and the patch targets."""

    def __init__(self, encoder: AuM, mask_ratio: float, mask_strategy: str = "random", mask_span: int = 2,
                 mask_cluster: int = 3):
        super().__init__()
        cfg = encoder.config
        if cfg.patch_size != cfg.patch_stride:
            raise ValueError("masked pretraining needs non-overlapping patches (patch_stride == patch_size)")
        self.encoder = encoder
        self.mask_ratio, self.mask_strategy = mask_ratio, mask_strategy
        self.mask_span, self.mask_cluster = mask_span, mask_cluster
        self.patch_dim = cfg.patch_size[0] * cfg.patch_size[1]

    def draw_mask(self, fbank: torch.Tensor) -> Mask:
        """Masks for this batch (drawn from torch's global RNG, so checkpoints capture it)."""
        grid = self.encoder.config.grid(fbank.shape[1], fbank.shape[2])
        return make_mask(fbank.shape[0], grid, self.mask_ratio, self.mask_strategy, span=self.mask_span,
                         cluster=self.mask_cluster, device=fbank.device)

    def targets(self, fbank: torch.Tensor, hidden: torch.Tensor) -> torch.Tensor:
        """True values of the hidden patches, ``[B, n, patch_dim]``."""
        patches = patchify(fbank.float(), self.encoder.config.patch_size)
        return torch.gather(patches, 1, hidden.unsqueeze(-1).expand(-1, -1, patches.shape[-1]))


class SSASTObjective(_Objective):
    """SSAST's joint discriminative + generative objective on in-place mask tokens."""

    def __init__(self, encoder: AuM, mask_ratio: float = 400 / 512, gen_weight: float = 10.0,
                 disc_weight: float = 1.0, **mask_kwargs):
        super().__init__(encoder, mask_ratio, **mask_kwargs)
        dim = encoder.config.embed_dim
        self.gen_weight, self.disc_weight = gen_weight, disc_weight
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        nn.init.normal_(self.mask_token, std=0.02)
        self.disc_head = _mlp(dim, self.patch_dim)
        self.gen_head = _mlp(dim, self.patch_dim)

    def forward(self, batch: dict):
        """Loss on one batch: ``disc_weight * InfoNCE + gen_weight * MSE`` over the masked patches."""
        fbank = batch["fbank"]
        m = self.draw_mask(fbank)
        out = self.encoder.forward_features(fbank, mask=m.mask, mask_token=self.mask_token)
        index = m.hidden.unsqueeze(-1).expand(-1, -1, out.tokens.shape[-1])
        hidden_out = torch.gather(out.tokens, 1, index).float()                   # [B, n, D]
        target = self.targets(fbank, m.hidden)
        disc = self.disc_head(hidden_out)
        logits = torch.bmm(disc, target.transpose(1, 2))                         # [B, n, n]: clip-internal
        labels = torch.arange(logits.shape[1], device=logits.device).expand(logits.shape[0], -1)
        nce = F.cross_entropy(logits.flatten(0, 1), labels.flatten())
        recon = self.gen_head(hidden_out)
        mse = F.mse_loss(recon, target)
        loss = self.disc_weight * nce + self.gen_weight * mse
        acc = (logits.argmax(-1) == labels).float().mean()
        metrics = {"nce": nce.item(), "mse": mse.item(), "nce_acc": acc.item()}
        return loss, metrics, {"mask": m, "recon": recon.detach(), "target_norm": None}


class MAEDecoder(nn.Module):
    """A light decoder: project, re-insert mask tokens, add positions, a few Mamba blocks, predict patches."""

    def __init__(self, enc_dim: int, dim: int, depth: int, patch_dim: int, grid: tuple[int, int],
                 mixer: str = "v1"):
        super().__init__()
        self.embed = nn.Linear(enc_dim, dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = PosEmbed(dim, grid, n_prefix=0)
        self.layers = nn.ModuleList(Block(dim, MambaMixer(dim, direction=mixer)) for _ in range(depth))
        self.norm_f = nn.RMSNorm(dim, eps=1e-5)
        self.pred = nn.Linear(dim, patch_dim)
        nn.init.normal_(self.mask_token, std=0.02)
        nn.init.trunc_normal_(self.pos_embed.pos_embed, std=0.02)

    def forward(self, visible: torch.Tensor, m: Mask, grid: tuple[int, int]) -> torch.Tensor:
        """``visible [B, K, enc_dim]`` at ``m.keep`` -> predictions for every patch ``[B, N, patch_dim]``."""
        x = self.embed(visible)
        batch, n = m.mask.shape
        full = self.mask_token.to(x.dtype).expand(batch, n, -1).clone()
        full.scatter_(1, m.keep.unsqueeze(-1).expand(-1, -1, x.shape[-1]), x)
        _, pos = self.pos_embed(grid)
        hidden, residual = full + pos.to(full.dtype), None
        for block in self.layers:
            hidden, residual = block(hidden, residual)
        return self.pred(self.norm_f((residual + hidden).to(self.norm_f.weight.dtype)))


class MAEObjective(_Objective):
    """Masked autoencoder: the encoder sees only visible patches; the decoder reconstructs the rest."""

    def __init__(self, encoder: AuM, mask_ratio: float = 0.75, decoder_dim: int = 128, decoder_depth: int = 2,
                 norm_pix: bool = True, **mask_kwargs):
        super().__init__(encoder, mask_ratio, **mask_kwargs)
        cfg = encoder.config
        self.norm_pix = norm_pix
        self.decoder = MAEDecoder(cfg.embed_dim, decoder_dim, decoder_depth, self.patch_dim,
                                  cfg.grid(cfg.target_frames), mixer=cfg.mixer)

    def forward(self, batch: dict):
        """Loss on one batch: MSE of the decoder's predictions on the masked patches."""
        fbank = batch["fbank"]
        m = self.draw_mask(fbank)
        out = self.encoder.forward_features(fbank, keep=m.keep)
        pred = self.decoder(out.tokens, m, out.grid).float()
        pred = torch.gather(pred, 1, m.hidden.unsqueeze(-1).expand(-1, -1, pred.shape[-1]))
        target = self.targets(fbank, m.hidden)
        stats = None
        if self.norm_pix:
            mean, var = target.mean(-1, keepdim=True), target.var(-1, keepdim=True)
            stats = (mean, var)
            target = (target - mean) / (var + 1e-6).sqrt()
        mse = F.mse_loss(pred, target)
        return mse, {"mse": mse.item()}, {"mask": m, "recon": pred.detach(), "target_norm": stats}


OBJECTIVES = {"ssast": SSASTObjective, "mae": MAEObjective}
