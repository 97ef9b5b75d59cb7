"""The Mamba-1 mixer with AuM's three scan directions.

Parameter names are the official ones (``in_proj``, ``conv1d``, ``x_proj``, ``dt_proj``, ``A_log``, ``D``,
``out_proj``, and for the backward direction ``A_b_log``, ``conv1d_b``, ``x_proj_b``, ``dt_proj_b``,
``D_b``), so released state_dicts load without renaming.

* ``none`` (Fo-Fo): one forward scan.
* ``v1`` (Fo-Bi, the AuM paper's choice): the conv output, delta, B, C, D and z are computed once; a forward
  scan with ``A`` and a scan of the flipped sequence with ``A_b``; outputs SUMMED (so ``D*u`` counts twice).
* ``v2`` (Bi-Bi, Vision Mamba): a complete second branch (own conv, x_proj, dt_proj, A, D) on the flipped
  input and flipped gate; the two outputs are AVERAGED.

This follows the fused-kernel semantics of the official code; its non-fused fallback silently drops the
backward direction, which we do not reproduce.
"""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from aum.ops import causal_conv1d, selective_scan

DIRECTIONS = ("none", "v1", "v2")


def _fp32(t: torch.Tensor) -> torch.Tensor:
    """SSM parameters are used in at least float32 (as mamba-ssm does), float64 kept as it is."""
    return t if t.dtype == torch.float64 else t.float()


def _s4d_real_log(channels: int, state: int) -> torch.Tensor:
    """``log(1..N)`` for every channel: the S4D-real initialisation of ``A = -exp(A_log)``."""
    return torch.log(torch.arange(1, state + 1, dtype=torch.float32)).repeat(channels, 1).contiguous()


class MambaMixer(nn.Module):
    """Selective-SSM token mixer: ``[batch, L, d_model] -> [batch, L, d_model]``."""

    def __init__(self, d_model: int, d_state: int = 16, d_conv: int = 4, expand: int = 2,
                 dt_rank: int | str = "auto", direction: str = "v1", dt_min: float = 1e-3,
                 dt_max: float = 0.1, dt_init_floor: float = 1e-4, scan_backend: str | None = None):
        super().__init__()
        if direction not in DIRECTIONS:
            raise ValueError(f"unknown mixer direction {direction!r}; choose one of {DIRECTIONS}")
        self.direction = direction
        self.d_model, self.d_state, self.d_conv = d_model, d_state, d_conv
        self.d_inner = expand * d_model
        self.dt_rank = math.ceil(d_model / 16) if dt_rank == "auto" else int(dt_rank)
        self.scan_backend = scan_backend
        self._dt_range = (dt_min, dt_max, dt_init_floor)

        self.in_proj = nn.Linear(d_model, 2 * self.d_inner, bias=False)
        self.conv1d, self.x_proj, self.dt_proj = self._branch_layers()
        self.A_log = nn.Parameter(_s4d_real_log(self.d_inner, d_state))
        self.D = nn.Parameter(torch.ones(self.d_inner))
        if direction in ("v1", "v2"):
            self.A_b_log = nn.Parameter(_s4d_real_log(self.d_inner, d_state))
        if direction == "v2":
            self.conv1d_b, self.x_proj_b, self.dt_proj_b = self._branch_layers()
            self.D_b = nn.Parameter(torch.ones(self.d_inner))
        self.out_proj = nn.Linear(self.d_inner, d_model, bias=False)

    def _branch_layers(self):
        conv = nn.Conv1d(self.d_inner, self.d_inner, self.d_conv, groups=self.d_inner,
                         padding=self.d_conv - 1, bias=True)
        x_proj = nn.Linear(self.d_inner, self.dt_rank + 2 * self.d_state, bias=False)
        dt_proj = nn.Linear(self.dt_rank, self.d_inner, bias=True)
        self._init_dt(dt_proj)
        return conv, x_proj, dt_proj

    def _init_dt(self, dt_proj: nn.Linear) -> None:
        """Mamba's dt init: weight U(+-rank^-0.5); bias = softplus^-1 of dt ~ log-uniform[dt_min, dt_max]."""
        dt_min, dt_max, floor = self._dt_range
        bound = self.dt_rank ** -0.5
        nn.init.uniform_(dt_proj.weight, -bound, bound)
        dt = torch.exp(torch.rand(self.d_inner) * (math.log(dt_max) - math.log(dt_min)) + math.log(dt_min))
        dt = dt.clamp(min=floor)
        with torch.no_grad():
            dt_proj.bias.copy_(dt + torch.log(-torch.expm1(-dt)))

    def _ssm_inputs(self, xc, x_proj, dt_proj):
        """``x_proj`` then ``dt_proj`` (without its bias) on the conv output: delta ``[b,E,L]``, B, C ``[b,N,L]``."""
        x_dbl = F.linear(xc.transpose(1, 2), x_proj.weight)                      # [b, L, R + 2N]
        dt, B, C = torch.split(x_dbl, [self.dt_rank, self.d_state, self.d_state], dim=-1)
        delta = F.linear(dt, dt_proj.weight).transpose(1, 2)
        return delta, B.transpose(1, 2), C.transpose(1, 2)

    def _scan(self, xc, delta, A, B, C, D, z, dt_bias, reverse=False):
        return selective_scan(xc, delta, A, B, C, _fp32(D), z, delta_bias=_fp32(dt_bias),
                              delta_softplus=True, backend=self.scan_backend, reverse=reverse)

    def _branch(self, x, z, conv, x_proj, dt_proj, A_log, D, reverse=False):
        """One direction; ``reverse``: the branch run on the time-flipped sequence, its output flipped back."""
        xc = causal_conv1d(x, conv.weight, conv.bias, "silu", backend=self.scan_backend, reverse=reverse)
        delta, B, C = self._ssm_inputs(xc, x_proj, dt_proj)
        return self._scan(xc, delta, -torch.exp(_fp32(A_log)), B, C, D, z, dt_proj.bias, reverse=reverse)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Mix ``hidden [batch, L, d_model]`` along L in the configured direction(s)."""
        x, z = self.in_proj(hidden).transpose(1, 2).chunk(2, dim=1)            # each [b, E, L]
        if self.direction == "none":
            y = self._branch(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
        elif self.direction == "v1":
            xc = causal_conv1d(x, self.conv1d.weight, self.conv1d.bias, "silu", backend=self.scan_backend)
            delta, B, C = self._ssm_inputs(xc, self.x_proj, self.dt_proj)
            fwd = self._scan(xc, delta, -torch.exp(_fp32(self.A_log)), B, C, self.D, z, self.dt_proj.bias)
            bwd = self._scan(xc, delta, -torch.exp(_fp32(self.A_b_log)), B, C, self.D, z, self.dt_proj.bias,
                             reverse=True)
            y = fwd + bwd
        else:
            fwd = self._branch(x, z, self.conv1d, self.x_proj, self.dt_proj, self.A_log, self.D)
            bwd = self._branch(x, z, self.conv1d_b, self.x_proj_b, self.dt_proj_b, self.A_b_log, self.D_b,
                               reverse=True)
            y = (fwd + bwd) / 2
        return self.out_proj(y.transpose(1, 2))
