"""The AuM residual block: ``residual += hidden -> RMSNorm -> mixer``, residual kept in fp32."""
from __future__ import annotations

import torch
import torch.nn as nn

from aum.modules.mixer import MambaMixer


class Block(nn.Module):
    """One layer. ``forward(hidden, residual) -> (mixer output, residual)`` like mamba-ssm / Vim blocks.

    The first block receives ``residual=None`` and takes the input as the residual. With
    ``residual_in_fp32`` the running residual stream stays float32 under autocast.
    """

    def __init__(self, dim: int, mixer: MambaMixer, norm_eps: float = 1e-5, residual_in_fp32: bool = True):
        super().__init__()
        self.mixer = mixer
        self.norm = nn.RMSNorm(dim, eps=norm_eps)
        self.residual_in_fp32 = residual_in_fp32

    def forward(self, hidden: torch.Tensor, residual: torch.Tensor | None = None):
        """Add ``hidden`` to the residual stream, normalise, mix; returns ``(mixed, residual)``."""
        residual = hidden if residual is None else residual + hidden
        if self.residual_in_fp32:
            residual = residual.float()
        hidden = self.norm(residual.to(self.norm.weight.dtype))
        return self.mixer(hidden), residual
