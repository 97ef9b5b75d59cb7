"""The PyTorch selective scan against the plain loop: outputs and gradients, float32 and float64."""
import math
import subprocess
import sys
import textwrap

import pytest
import torch

import aum.ops.scan as scan_mod
import aum.ops.scan_fused as fused_mod
from aum.ops import causal_conv1d, selective_scan, selective_scan_reference

# The two production CPU backends; the fused one skips (with its reason) where its C kernel cannot be built.
CPU_BACKENDS = ["torch", "fused"]


def _need(backend):
    if backend == "fused" and fused_mod.library() is None:
        pytest.skip("fused scan kernel unavailable here (no working C compiler); the torch backend is tested")


def _set_chunk(monkeypatch, backend, elements, batch, channels, state):
    """Chunks of ``elements // (batch * channels * state)`` steps for the torch backend, the same (at most
    the default) for the fused one: chunk edges inside short sequences."""
    monkeypatch.setattr(scan_mod, "CHUNK_ELEMENTS", elements)
    steps = max(1, elements // (batch * channels * state))
    monkeypatch.setattr(fused_mod, "CHUNK", min(steps, fused_mod.CHUNK))


def _inputs(batch, channels, state, length, dtype, seed):
    g = torch.Generator().manual_seed(seed)

    def rnd(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    return {
        "u": rnd(batch, channels, length),
        "delta": rnd(batch, channels, length, scale=0.7),
        "A": -(torch.rand(channels, state, generator=g, dtype=torch.float64) * 3 + 0.05).to(dtype),
        "B": rnd(batch, state, length),
        "C": rnd(batch, state, length),
        "D": rnd(channels),
        "z": rnd(batch, channels, length),
        "delta_bias": rnd(channels, scale=0.5),
    }


def _close(actual, expected, rel, magnitude=None):
    """``|actual - expected| <= rel * scale`` with scale the largest magnitude of the quantity's summands
    (``magnitude``: the same computation on absolute values), or of ``expected`` itself. Sums that cancel
    (e.g. the gradient of C, a sum over channels) are judged against the size of what was summed, as
    floating-point error bounds are."""
    scale = float((expected if magnitude is None else magnitude).detach().abs().max().clamp_min(1e-30))
    torch.testing.assert_close(actual, expected, rtol=rel, atol=rel * scale)


def _abs_reference(x, names, grad_out, softplus):
    """The float64 reference on absolute values of the signed inputs: a bound on every summand's size."""
    leaves = {k: (x[k].double() if k in ("A", "delta", "delta_bias") else x[k].double().abs()).requires_grad_()
              for k in names}
    out = selective_scan_reference(**leaves, delta_softplus=softplus)
    return out, torch.autograd.grad(out, list(leaves.values()), grad_out.abs())


# (batch, channels, state, length, chunk elements): length 1, odd lengths, lengths across chunk edges.
CASES = [
    (1, 3, 4, 1, 1 << 21),
    (2, 5, 3, 7, 1 << 21),
    (2, 4, 4, 33, 2 * 4 * 4 * 8),      # chunks of 8: 33 = 4 full chunks + 1
    (3, 2, 5, 64, 3 * 2 * 5 * 16),     # exactly 4 chunks
    (1, 6, 16, 129, 6 * 16 * 1),       # chunk length 1: every step its own chunk
    (2, 3, 2, 50, 2 * 3 * 2 * 7),      # chunks of 7
]
OPTIONALS = [("D", "z", "delta_bias"), (), ("z",), ("D",), ("delta_bias",)]


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("optional", OPTIONALS)
def test_scan_matches_reference(monkeypatch, backend, dtype, rel, case, optional):
    _need(backend)
    batch, channels, state, length, chunk = case
    _set_chunk(monkeypatch, backend, chunk, batch, channels, state)
    x = _inputs(batch, channels, state, length, dtype, seed=length * 7 + len(optional))
    names = ["u", "delta", "A", "B", "C", *optional]
    leaves = {k: x[k].clone().requires_grad_() for k in names}
    # the reference runs in float64 on the same values: the ground truth for both precisions
    ref_leaves = {k: x[k].double().requires_grad_() for k in names}
    softplus = "delta_bias" in optional or length % 2 == 1
    out = selective_scan(**leaves, delta_softplus=softplus, backend=backend)
    ref = selective_scan_reference(**ref_leaves, delta_softplus=softplus)
    assert out.dtype == dtype and out.shape == (batch, channels, length)
    _close(out.double(), ref, rel)
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(dtype))
    ref_grads = torch.autograd.grad(ref, list(ref_leaves.values()), grad_out)
    _, magnitudes = _abs_reference(x, names, grad_out, softplus)
    for name, g, r, m in zip(names, grads, ref_grads, magnitudes):
        assert g.shape == r.shape and g.dtype == dtype, name
        _close(g.double(), r, rel, m)


def test_reference_matches_hand_computed_two_steps():
    # one channel, one state: h1 = d1*b1*u1, h2 = exp(d2*a)*h1 + d2*b2*u2, y = c*h + D*u
    u = torch.tensor([[[2.0, -1.0]]], dtype=torch.float64)
    delta = torch.tensor([[[0.5, 0.25]]], dtype=torch.float64)
    A = torch.tensor([[-2.0]], dtype=torch.float64)
    B = torch.tensor([[[3.0, 4.0]]], dtype=torch.float64)
    C = torch.tensor([[[0.5, -1.0]]], dtype=torch.float64)
    D = torch.tensor([0.1], dtype=torch.float64)
    h1 = 0.5 * 3.0 * 2.0
    h2 = math.exp(0.25 * -2.0) * h1 + 0.25 * 4.0 * -1.0
    expected = torch.tensor([0.5 * h1 + 0.1 * 2.0, -1.0 * h2 + 0.1 * -1.0], dtype=torch.float64).reshape(1, 1, 2)
    for fn in (selective_scan_reference, lambda *a, **k: selective_scan(*a, backend="torch", **k)):
        torch.testing.assert_close(fn(u, delta, A, B, C, D), expected, rtol=1e-12, atol=1e-12)


def test_no_grad_path_saves_nothing_and_grad_path_saves_chunk_states(monkeypatch):
    monkeypatch.setattr(scan_mod, "CHUNK_ELEMENTS", 2 * 4 * 3 * 5)   # chunks of 5 steps
    x = _inputs(2, 4, 3, 23, torch.float32, seed=3)
    u = x["u"].requires_grad_()
    out = selective_scan(u, x["delta"], x["A"], x["B"], x["C"], backend="torch")
    saved = out.grad_fn.next_functions[0][0].saved_tensors if out.grad_fn.name() != "_ChunkedScanBackward" \
        else out.grad_fn.saved_tensors
    starts = saved[-1]
    assert starts.shape == (5, 2, 1, 3, 4)         # ceil(23 / 5) chunk-start states of [b, G, N, E/G]
    with torch.no_grad():
        out = selective_scan(u, x["delta"], x["A"], x["B"], x["C"], backend="torch")
    assert out.grad_fn is None


@pytest.mark.subprocess
@pytest.mark.parametrize("backend", CPU_BACKENDS)
def test_no_grad_memory_does_not_grow_with_state_times_length(backend):
    """Under no_grad, the scan of a sequence whose full hidden states would take 512 MB stays far below."""
    _need(backend)
    code = textwrap.dedent("""
        import resource, sys, torch
        from aum.ops import selective_scan
        torch.manual_seed(0)
        b, e, n, L = 1, 512, 16, 16384          # all hidden states: b*e*n*L*4 bytes = 512 MiB
        u = torch.randn(b, e, L); d = torch.rand(b, e, L) * 0.1; A = -torch.rand(e, n)
        B = torch.randn(b, n, L); C = torch.randn(b, n, L)
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        with torch.no_grad():
            y = selective_scan(u, d, A, B, C, backend=sys.argv[1])
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        assert torch.isfinite(y).all()
        print((after - before) / 1024)
    """)
    res = subprocess.run([sys.executable, "-c", code, backend], capture_output=True, text=True, check=True)
    growth_mib = float(res.stdout.strip().splitlines()[-1])
    assert growth_mib < 160, f"peak memory grew by {growth_mib:.0f} MiB; all states would be 512 MiB"


def test_unknown_and_unavailable_backends_are_clear_errors():
    x = _inputs(1, 2, 2, 3, torch.float32, seed=0)
    with pytest.raises(ValueError, match="unknown scan backend"):
        selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="triton")
    if scan_mod.cuda_kernels()[0] is None:
        with pytest.raises(RuntimeError, match="mamba-ssm"):
            selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], backend="cuda")


def test_auto_backend_on_cpu_is_fused_where_it_builds_else_torch(monkeypatch):
    monkeypatch.delenv("AUM_SCAN_BACKEND", raising=False)
    x = _inputs(2, 3, 4, 9, torch.float64, seed=5)
    expected = "torch" if fused_mod.library() is None else "fused"
    assert scan_mod._resolve(None, x["u"], None, fused=True) == expected
    assert scan_mod._resolve(None, x["u"], None) == "torch"          # the conv has no fused kernel
    auto = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"])
    ref = selective_scan_reference(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"])
    _close(auto, ref, 1e-10)


def test_causal_conv1d_matches_a_loop():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(2, 3, 9, generator=g, dtype=torch.float64)
    w = torch.randn(3, 1, 4, generator=g, dtype=torch.float64)
    bias = torch.randn(3, generator=g, dtype=torch.float64)
    out = causal_conv1d(x, w, bias, activation=None)
    expected = torch.zeros_like(x)
    for t in range(9):
        for k in range(4):                      # tap k looks back 3 - k steps; before t = 0 is zero
            src = t - (3 - k)
            if src >= 0:
                expected[:, :, t] += w[:, 0, k] * x[:, :, src]
    expected += bias[:, None]
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(causal_conv1d(x, w, bias), torch.nn.functional.silu(expected))



def test_causal_conv1d_reverse_and_time_major_layout():
    """``reverse`` is the conv of the flipped sequence flipped back; a transposed ``[b, L, E]`` input (a Linear
    layer's output) gives the same values in the same time-major layout, with the same gradients."""
    g = torch.Generator().manual_seed(3)
    x = torch.randn(2, 9, 5, generator=g, dtype=torch.float64).transpose(1, 2)          # [b, E, L], time-major
    w = torch.randn(5, 1, 4, generator=g, dtype=torch.float64)
    bias = torch.randn(5, generator=g, dtype=torch.float64)
    dense = x.contiguous()
    for reverse in (False, True):
        expected = causal_conv1d(dense.flip(-1), w, bias).flip(-1) if reverse else causal_conv1d(dense, w, bias)
        assert causal_conv1d(dense, w, bias, reverse=reverse).stride(-1) == 1
        leaf = x.detach().requires_grad_()
        out = causal_conv1d(leaf, w, bias, reverse=reverse)
        assert out.stride(1) == 1                                                   # stays time-major
        torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(causal_conv1d(dense, w, bias, reverse=reverse), expected, rtol=1e-12,
                                   atol=1e-12)
        dense_leaf = dense.detach().requires_grad_()
        gx, = torch.autograd.grad(out.sum(), leaf)
        gd, = torch.autograd.grad(causal_conv1d(dense_leaf, w, bias, reverse=reverse).sum(), dense_leaf)
        torch.testing.assert_close(gx, gd, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
def test_reverse_scan_is_the_flipped_scan_flipped_back(backend, dtype, rel):
    _need(backend)
    x = _grouped_inputs(2, 20, 2, 16, 37, dtype, seed=5)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    ref_leaves = {k: v.double().requires_grad_() for k, v in x.items()}
    out = selective_scan(**leaves, delta_softplus=True, backend=backend, reverse=True)
    flipped = {k: (v.flip(-1) if k in ("u", "delta", "z", "B", "C") else v) for k, v in ref_leaves.items()}
    ref = selective_scan_reference(**flipped, delta_softplus=True).flip(-1)
    _close(out.double(), ref, rel)
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(4))
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(dtype))
    ref_grads = torch.autograd.grad(ref, list(ref_leaves.values()), grad_out)
    for name, g, r in zip(leaves, grads, ref_grads):
        assert g.shape == r.shape and g.dtype == dtype, name
        _close(g.double(), r, rel * 10)


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("reverse", [False, True])
def test_strided_inputs_as_the_mixer_makes_them_match_dense_ones(backend, reverse):
    """delta, z as transposed ``[b, L, E]`` tensors and B, C as transposed slices of one ``[b, L, R + 2N]``
    projection, as MambaMixer hands them over: the fused kernel reads them in place; results and gradients
    equal those of dense copies."""
    _need(backend)
    batch, channels, state, length = 2, 20, 16, 29
    g = torch.Generator().manual_seed(9)
    u = torch.randn(batch, length, channels, generator=g, dtype=torch.float64).transpose(1, 2)
    delta = (torch.randn(batch, length, channels, generator=g, dtype=torch.float64) * 0.5).transpose(1, 2)
    z = torch.randn(batch, length, 2 * channels, generator=g, dtype=torch.float64).transpose(1, 2)[:, channels:]
    proj = torch.randn(batch, length, 3 + 2 * state, generator=g, dtype=torch.float64)
    B, C = proj[..., 3:3 + state].transpose(1, 2), proj[..., 3 + state:].transpose(1, 2)
    A = -(torch.rand(channels, state, generator=g, dtype=torch.float64) + 0.1)
    D, bias = torch.randn(channels, generator=g, dtype=torch.float64), torch.randn(channels, generator=g,
                                                                                      dtype=torch.float64)
    strided = {"u": u, "delta": delta, "A": A, "B": B, "C": C, "D": D, "z": z, "delta_bias": bias}
    assert not any(v.is_contiguous() for k, v in strided.items() if k in ("u", "delta", "z", "B", "C"))
    results = []
    for x in (strided, {k: v.contiguous() for k, v in strided.items()}):
        leaves = {k: v.detach().requires_grad_() for k, v in x.items()}
        out = selective_scan(**leaves, delta_softplus=True, backend=backend, reverse=reverse)
        grads = torch.autograd.grad(out, list(leaves.values()), torch.cos(torch.arange(out.numel(),
                                    dtype=out.dtype)).view(out.shape))
        results.append((out, grads))
    (out_s, grads_s), (out_d, grads_d) = results
    torch.testing.assert_close(out_s, out_d, rtol=1e-12, atol=1e-12)
    for name, a, b in zip(strided, grads_s, grads_d):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-12, msg=name)

def test_cuda_kernels_are_called_with_their_upstream_signatures():
    """Stand-ins with mamba-ssm's and causal-conv1d's exact parameter lists and dtype rules (run on the CPU):
    our calls must land every argument in the right parameter (causal_conv1d_fn's 4th positional is seq_idx,
    not activation) and in the dtype the kernel checks: both found on an H100 with the real kernels."""
    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        assert return_last_state is False       # and the kernel's dtype checks (selective_scan.cpp):
        assert delta.dtype == B.dtype == C.dtype == z.dtype == u.dtype, "delta/B/C/z must have u's dtype"
        assert A.dtype == D.dtype == delta_bias.dtype == torch.float32
        return selective_scan_reference(u, delta, A, B, C, D, z, delta_bias, delta_softplus).to(u.dtype)

    def causal_conv1d_fn(x, weight, bias=None, seq_idx=None, initial_states=None, return_final_states=False,
                         final_states_out=None, activation=None):
        assert seq_idx is None and initial_states is None and not return_final_states and weight.dim() == 2
        return causal_conv1d(x, weight[:, None], bias, activation=activation, backend="torch")

    x = _inputs(2, 3, 4, 9, torch.float32, seed=7)
    args = (x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True)
    _close(scan_mod._call_scan_kernel(selective_scan_fn, *args), selective_scan_reference(*args), 1e-6)
    # mixed dtypes as under bf16 autocast with the torch conv (u float32, projections bfloat16): seen on an H100
    mixed = {k: (v.bfloat16() if k in ("delta", "B", "C", "z") else v) for k, v in x.items()}
    margs = (mixed["u"], mixed["delta"], mixed["A"], mixed["B"], mixed["C"], mixed["D"], mixed["z"],
             mixed["delta_bias"], True)
    ref = selective_scan_reference(*(a.float() if torch.is_tensor(a) else a for a in margs))
    _close(scan_mod._call_scan_kernel(selective_scan_fn, *margs), ref, 1e-5)
    g = torch.Generator().manual_seed(1)
    w, bias = torch.randn(3, 1, 4, generator=g, dtype=torch.float64), torch.randn(3, generator=g, dtype=torch.float64)
    for activation in ("silu", None):
        torch.testing.assert_close(scan_mod._call_conv_kernel(causal_conv1d_fn, x["u"], w, bias, activation),
                                   causal_conv1d(x["u"], w, bias, activation=activation, backend="torch"))


# ---- grouped B / C: [batch, G, N, L], channel c reads group c // (E / G) --------------------------------------

def _grouped_inputs(batch, channels, groups, state, length, dtype, seed):
    x = _inputs(batch, channels, state, length, dtype, seed)
    g = torch.Generator().manual_seed(seed + 1000)
    for k in ("B", "C"):
        x[k] = torch.randn(batch, groups, state, length, generator=g, dtype=torch.float64).to(dtype)
    return x


def _naive_grouped_scan(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False):
    """Float64 ground truth written independently of the library: B / C gathered per channel by index."""
    u, delta, A, B, C = (t.double() for t in (u, delta, A, B, C))
    if delta_bias is not None:
        delta = delta + delta_bias.double()[:, None]
    if delta_softplus:
        delta = torch.log1p(torch.exp(delta))
    channels = u.shape[1]
    group_of = torch.arange(channels) // (channels // B.shape[1])
    Bc, Cc = B[:, group_of], C[:, group_of]                       # [b, E, N, L]
    h = torch.zeros(u.shape[0], channels, A.shape[1], dtype=torch.float64)
    ys = []
    for t in range(u.shape[-1]):
        h = torch.exp(delta[..., t, None] * A) * h + (delta[..., t] * u[..., t])[..., None] * Bc[..., t]
        ys.append((h * Cc[..., t]).sum(-1))
    y = torch.stack(ys, -1)
    if D is not None:
        y = y + D.double()[:, None] * u
    if z is not None:
        y = y * z.double() * torch.sigmoid(z.double())
    return y


GROUP_LENGTHS = [(1, 1 << 21), (7, 1 << 21), (33, 2 * 8 * 16 * 5)]     # the last: chunks of 5 (N = 16) or more


@pytest.mark.parametrize("backend", CPU_BACKENDS)
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 1e-5)])
@pytest.mark.parametrize("groups", [1, 2, 4])
@pytest.mark.parametrize("state", [1, 16])
@pytest.mark.parametrize("length,chunk", GROUP_LENGTHS)
def test_grouped_scan_matches_reference_and_naive_loop(monkeypatch, backend, dtype, rel, groups, state, length,
                                                       chunk):
    _need(backend)
    batch, channels = 2, 8
    _set_chunk(monkeypatch, backend, chunk, batch, channels, state)
    x = _grouped_inputs(batch, channels, groups, state, length, dtype, seed=groups * 31 + state + length)
    names = ["u", "delta", "A", "B", "C", "D", "z", "delta_bias"]
    leaves = {k: x[k].clone().requires_grad_() for k in names}
    ref_leaves = {k: x[k].double().requires_grad_() for k in names}
    naive_leaves = {k: x[k].double().requires_grad_() for k in names}
    out = selective_scan(**leaves, delta_softplus=True, backend=backend)
    ref = selective_scan_reference(**ref_leaves, delta_softplus=True)
    naive = _naive_grouped_scan(**naive_leaves, delta_softplus=True)
    assert out.shape == (batch, channels, length) and out.dtype == dtype
    torch.testing.assert_close(ref, naive, rtol=1e-12, atol=1e-12)        # the reference's grouping itself
    _close(out.double(), naive, rel)
    grad_out = torch.randn(out.shape, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
    grads = torch.autograd.grad(out, list(leaves.values()), grad_out.to(dtype))
    ref_grads = torch.autograd.grad(ref, list(ref_leaves.values()), grad_out)
    naive_grads = torch.autograd.grad(naive, list(naive_leaves.values()), grad_out)
    _, magnitudes = _abs_reference(x, names, grad_out, True)
    for name, g, r, n, m in zip(names, grads, ref_grads, naive_grads, magnitudes):
        assert g.shape == x[name].shape and g.dtype == dtype, name
        torch.testing.assert_close(r, n, rtol=1e-12, atol=1e-12, msg=name)
        _close(g.double(), n, rel, m)


def test_one_group_equals_ungrouped_b_c():
    x = _grouped_inputs(2, 6, 1, 4, 9, torch.float64, seed=11)
    args = (x["u"], x["delta"], x["A"])
    for backend in ("torch", "reference", "fused"):
        _need(backend)
        grouped = selective_scan(*args, x["B"], x["C"], x["D"], x["z"], backend=backend)
        flat = selective_scan(*args, x["B"][:, 0], x["C"][:, 0], x["D"], x["z"], backend=backend)
        torch.testing.assert_close(grouped, flat, rtol=0, atol=0)


@pytest.mark.parametrize("backend", ["torch", "reference", "fused"])
def test_bad_scan_shapes_are_clear_errors(backend):
    x = _grouped_inputs(2, 6, 2, 4, 5, torch.float32, seed=0)
    u, delta, A, B, C = x["u"], x["delta"], x["A"], x["B"], x["C"]
    bad = [
        (dict(B=torch.randn(2, 4, 4, 5), C=torch.randn(2, 4, 4, 5)), "E=6 channels are not divisible by G=4"),
        (dict(B=B[..., :4], C=C[..., :4]), r"B must be \[batch=2, N=4, L=5\]"),
        (dict(C=C[:, :1]), "B and C must have the same shape"),
        (dict(A=A[:5]), r"A must be \[E=6, N\]"),
        (dict(delta=delta[..., :4]), "delta must have u's shape"),
        (dict(B=B[None], C=C[None]), r"or \[batch, G, N, L\]"),
        (dict(D=torch.randn(5)), r"D must be \[E=6\]"),
        (dict(z=torch.randn(2, 6, 4)), "z must have u's shape"),
    ]
    for change, message in bad:
        kwargs = {"u": u, "delta": delta, "A": A, "B": B, "C": C, **change}
        with pytest.raises(ValueError, match=message):
            selective_scan(**kwargs, backend=backend)


def test_cuda_dispatch_hands_grouped_b_c_to_the_kernel_unchanged(monkeypatch):
    """mamba-ssm's selective_scan_fn takes variable B / C as (batch, n_groups, dstate, L): a stand-in with
    its shape rule must receive our 4-d B, C as they are (same storage), after our shape check."""
    received = {}

    def selective_scan_fn(u, delta, A, B, C, D=None, z=None, delta_bias=None, delta_softplus=False,
                          return_last_state=False):
        assert B.dim() == 4 and u.shape[1] % B.shape[1] == 0       # (batch, n_groups, dstate, L)
        received.update(B=B, C=C)
        return _naive_grouped_scan(u, delta, A, B, C, D, z, delta_bias, delta_softplus).to(u.dtype)

    monkeypatch.setattr(scan_mod, "cuda_kernels", lambda: (selective_scan_fn, None))
    monkeypatch.setattr(scan_mod, "_resolve", lambda backend, tensor, kernel, fused=False: "cuda")
    x = _grouped_inputs(2, 8, 4, 3, 6, torch.float32, seed=4)
    out = selective_scan(x["u"], x["delta"], x["A"], x["B"], x["C"], x["D"], x["z"], x["delta_bias"], True,
                         backend="cuda")
    assert received["B"].data_ptr() == x["B"].data_ptr() and received["C"].shape == (2, 4, 3, 6)
    _close(out.double(), selective_scan_reference(x["u"].double(), x["delta"].double(), x["A"].double(),
                                                   x["B"].double(), x["C"].double(), x["D"].double(),
                                                   x["z"].double(), x["delta_bias"].double(), True), 1e-5)
    with pytest.raises(ValueError, match="not divisible"):
        selective_scan(x["u"][:, :6], x["delta"][:, :6], x["A"][:6], x["B"], x["C"], backend="cuda")
