"""Selective scan (the S6 recurrence of Mamba-1) and the causal depthwise conv1d, behind one call each.

    h_t = exp(delta_t * A) * h_{t-1} + delta_t * B_t * u_t
    y_t = C_t . h_t + D * u_t,        out = y * silu(z)

Shapes follow mamba-ssm's ``selective_scan_fn``: ``u, delta, z: [batch, E, L]``, ``A: [E, N]``,
``B, C: [batch, N, L]`` (input-dependent, shared by all channels) or grouped ``[batch, G, N, L]`` (channel ``c``
uses group ``c // (E / G)``; ``E`` divisible by ``G``), ``D, delta_bias: [E]``.

Four implementations of the same maths:

* ``reference`` - a plain loop over time with autograd; slow and obvious, the yardstick for the tests.
* ``fused`` - a C kernel (``scan_fused.c``, compiled on first use and cached; ``scan_fused.py``) for the whole
  call (bias, softplus, recurrence, ``D``, gate), forward and backward, reading its inputs with their own strides;
  the default off-GPU wherever a C compiler is found; several times faster than ``torch``.
* ``torch`` - pure PyTorch, the fallback off-GPU and the fused kernel's yardstick. It walks the sequence in
  chunks of ``T`` steps, with one fused in-place ``addcmul`` per time step on a ``[batch, E, N]`` state; the
  per-chunk work (discretisation, the read-out with ``C``) is vectorised. A custom autograd function keeps
  memory linear in ``L`` without the state dimension: forward stores only its inputs and the state at each chunk start
  (``ceil(L/T) * batch * E * N`` values, none under ``torch.no_grad()``); backward recomputes each chunk's
  states and runs the adjoint recurrence in reverse. Peak transient memory is a few ``T * batch * E * N``
  blocks, whatever ``L`` is.
* ``cuda`` - mamba-ssm's fused kernel, used automatically for CUDA tensors when it imports.
"""
from __future__ import annotations

import functools
import os

import torch
import torch.nn.functional as F

from aum.ops import scan_fused

BACKENDS = ("auto", "torch", "reference", "cuda", "fused")
# Target number of state elements (chunk_len * batch * E * N) materialised at once by the torch scan.
CHUNK_ELEMENTS = 1 << 21
_LOG2E = 1.4426950408889634


@functools.lru_cache(maxsize=None)
def cuda_kernels():
    """Return ``(selective_scan_fn, causal_conv1d_fn)`` from mamba-ssm / causal-conv1d, or ``None`` each.

    ``import mamba_ssm`` raises on machines without its compiled CUDA extension (and some builds raise
    OSError or RuntimeError rather than ImportError), so every failure means "not available".
    """
    try:
        from mamba_ssm.ops.selective_scan_interface import selective_scan_fn
    except Exception:  # noqa: BLE001 - any failure to load the extension means the kernel is absent
        selective_scan_fn = None
    try:
        from causal_conv1d import causal_conv1d_fn
    except Exception:  # noqa: BLE001
        causal_conv1d_fn = None
    return selective_scan_fn, causal_conv1d_fn


def _resolve(backend: str | None, tensor: torch.Tensor, kernel, fused: bool = False) -> str:
    """The backend to run: ``backend``, else ``$AUM_SCAN_BACKEND``, else ``auto`` made concrete. ``fused``:
    whether the op has a fused CPU kernel (the scan does; the conv runs its PyTorch code for ``fused``)."""
    backend = backend or os.environ.get("AUM_SCAN_BACKEND", "auto")
    if backend not in BACKENDS:
        raise ValueError(f"unknown scan backend {backend!r}; choose one of {BACKENDS}")
    if backend == "auto":
        if tensor.is_cuda and kernel is not None:
            return "cuda"
        if fused and tensor.device.type == "cpu" and scan_fused.library() is not None:
            return "fused"
        return "torch"
    if backend == "fused" and fused:
        if tensor.device.type != "cpu":
            raise RuntimeError("scan backend 'fused' needs CPU tensors; got " + str(tensor.device))
        if scan_fused.library() is None:
            raise RuntimeError("scan backend 'fused' requested but its C kernel could not be built (see the "
                               "warning above); install a C compiler or set AUM_CC, or use backend='torch'")
    if backend == "cuda":
        if kernel is None:
            raise RuntimeError(
                "scan backend 'cuda' requested but mamba-ssm / causal-conv1d did not import; "
                "install the `cuda` extra on a CUDA machine (see README) or use backend='torch'"
            )
        if not tensor.is_cuda:
            raise RuntimeError("scan backend 'cuda' needs CUDA tensors; got " + str(tensor.device))
    return backend


def check_scan_shapes(u, delta, A, B, C, D=None, z=None, delta_bias=None) -> int:
    """Check the scan's input shapes against each other; returns the number of B / C groups ``G`` (1 for
    ``[batch, N, L]``). Raises ``ValueError`` naming the offending input and the expected shape."""
    def fail(msg):
        raise ValueError(f"selective_scan: {msg}")

    if u.dim() != 3:
        fail(f"u must be [batch, E, L]; got shape {tuple(u.shape)}")
    batch, channels, length = u.shape
    if tuple(delta.shape) != tuple(u.shape):
        fail(f"delta must have u's shape {tuple(u.shape)}; got {tuple(delta.shape)}")
    if A.dim() != 2 or A.shape[0] != channels:
        fail(f"A must be [E={channels}, N]; got shape {tuple(A.shape)}")
    state = A.shape[1]
    for name, t in (("B", B), ("C", C)):
        if t.dim() not in (3, 4) or t.shape[0] != batch or tuple(t.shape[-2:]) != (state, length):
            fail(f"{name} must be [batch={batch}, N={state}, L={length}] or [batch, G, N, L]; "
                 f"got shape {tuple(t.shape)}")
    if tuple(B.shape) != tuple(C.shape):
        fail(f"B and C must have the same shape; got {tuple(B.shape)} and {tuple(C.shape)}")
    groups = B.shape[1] if B.dim() == 4 else 1
    if groups < 1 or channels % groups:
        fail(f"E={channels} channels are not divisible by G={groups} groups of B / C")
    for name, t in (("D", D), ("delta_bias", delta_bias)):
        if t is not None and tuple(t.shape) != (channels,):
            fail(f"{name} must be [E={channels}]; got shape {tuple(t.shape)}")
    if z is not None and tuple(z.shape) != tuple(u.shape):
        fail(f"z must have u's shape {tuple(u.shape)}; got {tuple(z.shape)}")
    return groups


def selective_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False, backend=None,
                   reverse=False):
    """Run the selective scan; returns ``[batch, E, L]`` in ``u``'s dtype.

    ``B`` and ``C`` are ``[batch, N, L]`` or grouped ``[batch, G, N, L]`` (see the module docstring).
    ``reverse=True`` scans from the last step to the first: the same as flipping every input along time, scanning
    and flipping the result back (which the ``fused`` backend does without any copies).
    ``backend`` is one of ``auto`` (CUDA kernel for CUDA tensors when mamba-ssm imports; on the CPU the
    ``fused`` C kernel where it builds, else ``torch``), ``torch``, ``fused``, ``reference`` or ``cuda``;
    ``None`` reads the ``AUM_SCAN_BACKEND`` environment variable.
    """
    check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    kernel = cuda_kernels()[0]
    backend = _resolve(backend, u, kernel, fused=True)
    if reverse and backend != "fused":
        z = None if z is None else z.flip(-1)
        return selective_scan(u.flip(-1), delta.flip(-1), A, B.flip(-1), C.flip(-1), D, z, delta_bias,
                              delta_softplus, backend).flip(-1)
    if backend == "cuda":
        return _call_scan_kernel(kernel, u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    if backend == "reference":
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus)
    out_dtype = u.dtype
    compute = torch.float64 if u.dtype == torch.float64 else torch.float32
    if B.dim() == 3:                   # internally always grouped: [batch, G, N, L]
        B, C = B.unsqueeze(1), C.unsqueeze(1)
    u, delta, B, C = (t.to(compute) for t in (u, delta, B, C))
    A = A.to(compute)
    if backend == "fused":
        D, z, delta_bias = (None if t is None else t.to(compute) for t in (D, z, delta_bias))
        inputs = [t for t in (u, delta, A, B, C, D, z, delta_bias) if t is not None]
        save = torch.is_grad_enabled() and any(t.requires_grad for t in inputs)
        y = scan_fused.FusedScan.apply(u, delta, A, B, C, D, z, delta_bias, delta_softplus, reverse, save)
        return y.to(out_dtype)
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    save_states = torch.is_grad_enabled() and any(t.requires_grad for t in (u, delta, A, B, C))
    y = _ChunkedScan.apply(u, delta, A, B, C, save_states)
    if D is not None:
        y = y + D.to(compute)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(out_dtype)


def selective_scan_reference(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Slow, obvious selective scan: one Python step per time step, autograd for gradients (tests only)."""
    groups = check_scan_shapes(u, delta, A, B, C, D, z, delta_bias)
    dtype = u.dtype
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    u, delta, A, B, C = (t.to(compute) for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.to(compute)[:, None]
    if delta_softplus:
        delta = F.softplus(delta)
    batch, channels, length = u.shape
    per_group = channels // groups
    # channels split as [G, E / G]: channel g * (E / G) + i reads B[:, g], C[:, g]
    u4, delta4 = u.view(batch, groups, per_group, length), delta.view(batch, groups, per_group, length)
    B4, C4 = B.view(batch, groups, -1, length), C.view(batch, groups, -1, length)
    A3 = A.view(groups, per_group, A.shape[1])
    h = u.new_zeros(batch, groups, per_group, A.shape[1])
    ys = []
    for t in range(length):
        decay = torch.exp(delta4[..., t, None] * A3)                                   # [b, G, E/G, N]
        drive = delta4[..., t, None] * B4[:, :, None, :, t] * u4[..., t, None]           # [b, G, E/G, N]
        h = decay * h + drive
        ys.append((h * C4[:, :, None, :, t]).sum(-1).reshape(batch, channels))
    y = torch.stack(ys, dim=-1)
    if D is not None:
        y = y + D.to(compute)[:, None] * u
    if z is not None:
        y = y * F.silu(z.to(compute))
    return y.to(dtype)


def _chunk_len(batch: int, channels: int, state: int, length: int) -> int:
    per_step = max(1, batch * channels * state)
    return max(1, min(length, CHUNK_ELEMENTS // per_step))


def _chunk_terms(u, delta, A_log2_t, B, start, stop, decay, drive):
    """Fill one chunk's time-major ``decay = exp(delta*A)`` and ``drive = delta*B*u`` buffers, both
    ``[t, b, G, N, H]`` (``H = E / G`` channels of a group innermost, so the read-out over N is a small
    matmul). ``u``, ``delta`` are ``[b, G, H, L]``, ``B`` is ``[b, G, N, L]``. Returns the chunk's ``delta``
    and ``delta*u`` as ``[t, b, G, 1, H]``.

    ``A_log2_t`` is ``(A * log2 e)`` as ``[G, N, H]``: PyTorch's vectorised exp2 is about 3x faster than exp
    on CPU and agrees with it to float rounding.
    """
    d = delta[..., start:stop].permute(3, 0, 1, 2).unsqueeze(3)
    torch.exp2(torch.mul(d, A_log2_t, out=decay), out=decay)
    du = d * u[..., start:stop].permute(3, 0, 1, 2).unsqueeze(3)
    torch.mul(du, B[..., start:stop].permute(3, 0, 1, 2).unsqueeze(-1), out=drive)
    return d, du


def _run_recurrence(decay, drive, h0):
    """In place: ``drive[k] <- decay[k] * drive[k-1] + drive[k]`` (``drive[-1]`` = ``h0``); returns states."""
    drive[0].addcmul_(decay[0], h0)
    for k in range(1, drive.shape[0]):
        drive[k].addcmul_(decay[k], drive[k - 1])
    return drive


def _time_major(x):
    """``[b, G, K, t] -> [t, b, G, K]`` (a view)."""
    return x.permute(3, 0, 1, 2)


def _group_major(A, groups):
    """``A [E, N] -> [G, N, E/G]`` (a view): channel ``g * E/G + i`` at ``[g, :, i]``."""
    return A.view(groups, A.shape[0] // groups, A.shape[1]).transpose(1, 2)


class _ChunkedScan(torch.autograd.Function):
    """``y_t = C_t . h_t`` for the recurrence above, with recompute-in-backward (see module docstring).

    Takes ``u, delta [b, E, L]``, ``A [E, N]`` and grouped ``B, C [b, G, N, L]``. Internally states are
    ``[b, G, N, H]`` per step (``H = E / G``) and chunks are ``[t, b, G, N, H]``.
    """

    @staticmethod
    def forward(ctx, u, delta, A, B, C, save_states):
        batch, channels, length = u.shape
        groups, n = B.shape[1], A.shape[1]
        per_group = channels // groups
        u4, delta4 = u.view(batch, groups, per_group, length), delta.view(batch, groups, per_group, length)
        T = _chunk_len(batch, channels, n, length)
        a2 = _group_major(A * _LOG2E, groups).contiguous()
        y = u.new_empty(batch, channels, length)
        y4 = y.view(batch, groups, per_group, length)
        h = u.new_zeros(batch, groups, n, per_group)
        decay_buf, drive_buf = u.new_empty(2, T, batch, groups, n, per_group)       # reused by every chunk
        starts = []
        for s in range(0, length, T):
            e = min(s + T, length)
            if save_states:
                starts.append(h.clone())
            decay, states = decay_buf[: e - s], drive_buf[: e - s]
            _chunk_terms(u4, delta4, a2, B, s, e, decay, states)
            _run_recurrence(decay, states, h)
            c = _time_major(C[..., s:e]).unsqueeze(3)                                  # [t, b, G, 1, N]
            y4[..., s:e] = torch.matmul(c, states).squeeze(3).permute(1, 2, 3, 0)
            h.copy_(states[-1])
        if save_states:
            ctx.save_for_backward(u, delta, A, B, C, torch.stack(starts))
            ctx.T = T
        return y

    @staticmethod
    def backward(ctx, gy):
        u, delta, A, B, C, starts = ctx.saved_tensors
        T, (batch, channels, length) = ctx.T, u.shape
        groups = B.shape[1]
        per_group = channels // groups
        u4, delta4 = u.view(batch, groups, per_group, length), delta.view(batch, groups, per_group, length)
        gy4 = gy.contiguous().view(batch, groups, per_group, length)
        a2, a_t = _group_major(A * _LOG2E, groups).contiguous(), _group_major(A, groups)
        gu, gdelta = torch.empty_like(u), torch.empty_like(delta)
        gu4, gdelta4 = gu.view_as(u4), gdelta.view_as(delta4)
        gB, gC = torch.empty_like(B), torch.empty_like(C)
        gA_t = torch.zeros_like(a_t)                                              # [G, N, H]
        carry = torch.zeros_like(starts[0])      # decay[k+1] * grad_h[k+1] flowing in from the next chunk
        bufs = u.new_empty(4, T, *starts[0].shape)                        # reused by every chunk
        for idx in reversed(range(len(starts))):
            s = idx * T
            e = min(s + T, length)
            h0 = starts[idx]
            decay, states, gh, g_exp = (buf[: e - s] for buf in bufs)
            d, du = _chunk_terms(u4, delta4, a2, B, s, e, decay, states)
            _run_recurrence(decay, states, h0)
            g = _time_major(gy4[..., s:e]).unsqueeze(-1)                              # [t, b, G, H, 1]
            gC[..., s:e] = torch.matmul(states, g).squeeze(-1).permute(1, 2, 3, 0)
            # adjoint recurrence, backwards in time: gh[k] = C[k] gy[k] + decay[k+1] gh[k+1]
            torch.mul(_time_major(C[..., s:e]).unsqueeze(-1), g.transpose(-1, -2), out=gh)  # [t, b, G, N, H]
            gh[-1].add_(carry)
            for k in range(gh.shape[0] - 2, -1, -1):
                gh[k].addcmul_(decay[k + 1], gh[k + 1])
            torch.mul(decay[0], gh[0], out=carry)
            # through the decay exp(delta * A): d/d(delta * A) = gh[k] * h[k-1] * decay[k]
            torch.mul(gh[0], h0, out=g_exp[0])
            torch.mul(gh[1:], states[:-1], out=g_exp[1:])
            g_exp.mul_(decay)
            # through the drive delta * B * u
            gh_b = torch.matmul(_time_major(B[..., s:e]).unsqueeze(3), gh).squeeze(3)  # sum_n gh * B: [t, b, G, H]
            d, du = d.squeeze(3), du.squeeze(3)
            gB[..., s:e] = torch.matmul(gh, du.unsqueeze(-1)).squeeze(-1).permute(1, 2, 3, 0)
            scratch = states                                                       # states are no longer needed
            gA_t += torch.mul(g_exp, d.unsqueeze(3), out=scratch).sum((0, 1))
            g_delta = torch.mul(g_exp, a_t, out=scratch).sum(3)                    # [t, b, G, H]
            ut = _time_major(u4[..., s:e])
            gdelta4[..., s:e] = g_delta.add_(gh_b * ut).permute(1, 2, 3, 0)
            gu4[..., s:e] = (gh_b * d).permute(1, 2, 3, 0)
        return gu, gdelta, gA_t.transpose(1, 2).reshape(channels, -1), gB, gC, None


def _call_scan_kernel(kernel, u, delta, A, B, C, D, z, delta_bias, delta_softplus):
    """mamba-ssm's ``selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
    return_last_state=False)``, optional arguments by name. Its kernel wants ``delta``, ``B``, ``C`` and ``z``
    in ``u``'s dtype and ``A``, ``D``, ``delta_bias`` in float32; under autocast they can arrive mixed (e.g. a
    float32 conv output with bfloat16 projections), so they are cast here (it computes in float32 inside)."""
    delta, B, C = (t.to(u.dtype) for t in (delta, B, C))
    z = None if z is None else z.to(u.dtype)
    D, delta_bias = (None if t is None else t.float() for t in (D, delta_bias))
    return kernel(u, delta, A.float(), B, C, D=D, z=z, delta_bias=delta_bias, delta_softplus=delta_softplus)


def _call_conv_kernel(kernel, x, weight, bias, activation):
    """causal-conv1d's ``causal_conv1d_fn(x, weight [E, K], bias=None, seq_idx=None, initial_states=None,
    return_final_states=False, final_states_out=None, activation=None)``: ``activation`` only by name (the
    fourth positional parameter is ``seq_idx``)."""
    return kernel(x, weight.squeeze(1), bias=bias, activation=activation)


def causal_conv1d(x, weight, bias=None, activation: str | None = "silu", backend=None, reverse=False):
    """Depthwise causal conv over time (left pad ``K-1``), then SiLU: ``x [b, E, L]``, ``weight [E, 1, K]``.

    ``reverse=True``: the anti-causal conv (right pad), i.e. ``causal_conv1d(x.flip(-1)).flip(-1)``. A time-major
    ``x`` (a transposed ``[b, L, E]`` tensor, as a Linear layer's output is) gives a time-major result."""
    kernel = cuda_kernels()[1]
    backend = _resolve(backend, x, kernel)
    if backend == "cuda":
        if reverse:
            return _call_conv_kernel(kernel, x.flip(-1), weight, bias, activation).flip(-1)
        return _call_conv_kernel(kernel, x, weight, bias, activation)
    # a sum of K shifted copies: same result as F.conv1d(padding=K-1)[..., :L], and its backward is a
    # few elementwise ops instead of CPU's slow depthwise-convolution backward
    k, length = weight.shape[-1], x.shape[-1]
    taps = weight.squeeze(1)
    time_major = x.dim() == 3 and x.stride(1) == 1 and x.stride(2) != 1
    if time_major:                                 # compute on [b, L, E]: channels broadcast innermost
        x, taps, time = x.transpose(1, 2), taps.t()[..., None, :], 1
        bias = None if bias is None else bias[None, :]
    else:
        taps, time = taps.t()[..., :, None], x.dim() - 1
        bias = None if bias is None else bias[:, None]
    pad = [0, 0] * (x.dim() - 1 - time) + ([0, k - 1] if reverse else [k - 1, 0])
    padded = F.pad(x, pad)
    # out_t = sum_j w_j x_{t - (K-1) + j} (causal) or sum_j w_j x_{t + (K-1) - j} (reverse), the w_{K-1} term first
    out = padded.narrow(time, 0 if reverse else k - 1, length) * taps[k - 1]
    for j in range(k - 1):
        out = out + padded.narrow(time, k - 1 - j if reverse else j, length) * taps[j]
    if bias is not None:
        out = out + bias
    if activation in ("silu", "swish"):
        out = F.silu(out)
    elif activation is not None:
        raise ValueError(f"unsupported activation {activation!r}")
    return out.transpose(1, 2) if time_major else out


def chunk_memory_bytes(batch: int, channels: int, state: int, length: int, dtype=torch.float32) -> int:
    """Bytes of one ``[T, batch, E, N]`` block the torch scan holds per chunk (for planning / benchmarks)."""
    T = _chunk_len(batch, channels, state, length)
    return T * batch * channels * state * torch.empty(0, dtype=dtype).element_size()


__all__ = ["selective_scan", "selective_scan_reference", "causal_conv1d", "cuda_kernels", "BACKENDS",
           "chunk_memory_bytes", "check_scan_shapes"]
