"""The fused CPU scan's build: compile-once cache keyed on source + compiler + CPU + flags, the fallback to the
torch scan (with one log line) where no compiler works, and whole encoders agreeing across the two backends.
Its numerics against the reference are in tests/aum/ops/test_scan.py (every scan test runs both CPU backends)."""
import logging
import os
import shutil
import stat

import pytest
import torch

import aum.ops.scan as scan_mod
import aum.ops.scan_fused as fused_mod
from aum.models import create_model
from aum.ops import selective_scan


@pytest.fixture
def fresh_library(monkeypatch, tmp_path):
    """An empty kernel cache under ``tmp_path`` and no loaded library; the real one is reloaded afterwards."""
    monkeypatch.setenv("AUM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AUM_SCAN_BACKEND", raising=False)
    fused_mod.library.cache_clear()
    yield tmp_path / "cache" / "kernels"
    fused_mod.library.cache_clear()


def _need_compiler():
    if fused_mod.library() is None:
        pytest.skip("no working C compiler here: the fused scan cannot be built")


def _scan_inputs(seed=0, batch=2, channels=20, groups=2, state=16, length=37, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return dict(u=torch.randn(batch, channels, length, generator=g, dtype=dtype),
                delta=torch.randn(batch, channels, length, generator=g, dtype=dtype) * 0.5,
                A=-torch.rand(channels, state, generator=g, dtype=dtype) * 2 - 0.1,
                B=torch.randn(batch, groups, state, length, generator=g, dtype=dtype),
                C=torch.randn(batch, groups, state, length, generator=g, dtype=dtype),
                D=torch.randn(channels, generator=g, dtype=dtype),
                z=torch.randn(batch, channels, length, generator=g, dtype=dtype),
                delta_bias=torch.randn(channels, generator=g, dtype=dtype) * 0.3)


def _fallback_records(caplog):
    return [r for r in caplog.records if r.name == fused_mod.__name__ and "unavailable" in r.getMessage()]


def test_missing_compiler_falls_back_to_torch_with_one_log_line(fresh_library, monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("AUM_CC", str(tmp_path / "no-such-cc"))
    x = _scan_inputs()
    with caplog.at_level(logging.WARNING, logger=fused_mod.__name__):
        first = selective_scan(**x, delta_softplus=True)             # auto on the CPU
        second = selective_scan(**x, delta_softplus=True)
    records = _fallback_records(caplog)
    assert len(records) == 1, [r.getMessage() for r in caplog.records]
    message = records[0].getMessage()
    assert "no-such-cc" in message and "not found" in message and "AUM_CC" in message and "'torch'" in message
    torch.testing.assert_close(first, selective_scan(**x, delta_softplus=True, backend="torch"), rtol=0, atol=0)
    torch.testing.assert_close(second, first, rtol=0, atol=0)
    assert scan_mod._resolve(None, x["u"], None, fused=True) == "torch"
    with pytest.raises(RuntimeError, match="'fused' requested but its C kernel could not be built"):
        selective_scan(**x, backend="fused")
    assert not fresh_library.exists()                              # nothing was written to the cache


def test_failing_compiler_falls_back_and_records_each_failed_attempt(fresh_library, monkeypatch, tmp_path, caplog):
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'broken-cc: error: cannot compile anything' >&2\nexit 1\n")
    broken.chmod(broken.stat().st_mode | stat.S_IXUSR)
    monkeypatch.setenv("AUM_CC", str(broken))
    with caplog.at_level(logging.WARNING, logger=fused_mod.__name__):
        assert fused_mod.library() is None
    records = _fallback_records(caplog)
    assert len(records) == 1 and "cannot compile anything" in records[0].getMessage()
    failed = sorted(fresh_library.glob("*/failed.txt"))
    assert len(failed) == len(fused_mod.FLAG_ATTEMPTS)             # one key per flag set, none with a .so
    assert not list(fresh_library.glob("*/*.so"))


def test_builds_once_into_the_keyed_cache_and_reuses_it(fresh_library):
    _need_compiler()
    lib = fused_mod.library()
    assert lib.path.parent.parent == fresh_library and lib.path.name == "scan_fused.so"
    assert lib.flags == fused_mod.FLAG_ATTEMPTS[0]
    assert not [p for p in lib.path.parent.iterdir() if p.name.startswith(".build-")]   # temp file renamed
    mtime = lib.path.stat().st_mtime_ns
    fused_mod.library.cache_clear()
    again = fused_mod.library()                                    # a new process would do the same
    assert again.path == lib.path and again.path.stat().st_mtime_ns == mtime
    x = _scan_inputs(dtype=torch.float64)
    torch.testing.assert_close(selective_scan(**x, backend="fused"), selective_scan(**x, backend="torch"),
                               rtol=1e-12, atol=1e-12)


def test_cache_key_changes_with_source_compiler_cpu_and_flags(monkeypatch):
    base = ("/usr/bin/cc", "cc 12.2", ["-O3"], b"int x;")
    key = fused_mod.build_key(*base)
    assert len(key) == 20 and key == fused_mod.build_key(*base)
    assert fused_mod.build_key("/usr/bin/clang", *base[1:]) != key
    assert fused_mod.build_key(base[0], "cc 13.1", *base[2:]) != key
    assert fused_mod.build_key(*base[:2], ["-O3", "-march=native"], base[3]) != key
    assert fused_mod.build_key(*base[:3], b"int y;") != key
    monkeypatch.setattr(fused_mod, "_cpu_identity", lambda: "model name: another CPU\nflags: sse2")
    assert fused_mod.build_key(*base) != key


def test_cpu_identity_names_model_and_flags():
    ident = fused_mod._cpu_identity()
    assert os.uname().machine in ident
    if os.path.exists("/proc/cpuinfo") and "flags" in open("/proc/cpuinfo").read():
        assert "model name" in ident and "flags" in ident


def test_fused_results_do_not_depend_on_the_thread_count():
    _need_compiler()
    x = _scan_inputs(batch=3, channels=40, groups=1, length=45)
    leaves = {k: v.clone().requires_grad_() for k, v in x.items()}
    before = torch.get_num_threads()
    results = []
    try:
        for threads in (1, 2):
            torch.set_num_threads(threads)
            out = selective_scan(**leaves, delta_softplus=True, backend="fused")
            results.append((out, torch.autograd.grad(out.square().sum(), list(leaves.values()))))
    finally:
        torch.set_num_threads(before)
    (out1, g1), (out2, g2) = results
    assert torch.equal(out1, out2) and all(torch.equal(a, b) for a, b in zip(g1, g2))


@pytest.mark.parametrize("state", [16, 20, 1])
def test_portable_and_vector_builds_both_match_the_reference(fresh_library, monkeypatch, state):
    """The AVX-512 loops (default where the CPU has them) and the plain C loops (``-DAUM_SCAN_PORTABLE``) give the
    reference's outputs and gradients; N = 20 runs one full block of 16 states and a partial one of 4."""
    from aum.ops.scan import selective_scan_reference
    x = _scan_inputs(batch=2, channels=36, groups=2, state=state, length=41)
    leaves = {k: v.double().clone().requires_grad_() for k, v in x.items()}
    ref = selective_scan_reference(**leaves, delta_softplus=True)
    ref_grads = torch.autograd.grad(ref.square().sum(), list(leaves.values()))
    built = []
    for extra in ("", "-DAUM_SCAN_PORTABLE"):
        monkeypatch.setenv("AUM_SCAN_CFLAGS", extra)
        fused_mod.library.cache_clear()
        _need_compiler()
        built.append(fused_mod.library().path)
        leaves32 = {k: v.clone().requires_grad_() for k, v in x.items()}
        out = selective_scan(**leaves32, delta_softplus=True, backend="fused")
        grads = torch.autograd.grad(out.square().sum(), list(leaves32.values()))
        torch.testing.assert_close(out.double(), ref, rtol=1e-5, atol=1e-5 * ref.abs().max().item())
        for name, g, r in zip(leaves, grads, ref_grads):
            torch.testing.assert_close(g.double(), r, rtol=1e-5, atol=1e-5 * r.abs().max().item(), msg=name)
    assert built[0] != built[1]                      # two builds, two cache keys


def test_backward_parts_depend_on_shapes_only():
    assert fused_mod.backward_parts(batch=4, groups=1, blocks=24) == 4        # 16 work items
    assert fused_mod.backward_parts(batch=1, groups=1, blocks=3) == 3         # never more parts than blocks
    assert fused_mod.backward_parts(batch=32, groups=4, blocks=48) == 1       # no partial sums needed


def test_fused_saves_only_chunk_checkpoints_and_nothing_under_no_grad():
    _need_compiler()
    x = _scan_inputs(batch=2, channels=20, groups=2, state=4, length=70)
    u = x["u"].clone().requires_grad_()
    B, C = x["B"].contiguous(), x["C"].contiguous()
    out = fused_mod.FusedScan.apply(u, x["delta"], x["A"], B, C, None, None, None, False, False, True)
    ckpt = out.grad_fn.saved_tensors[-1]
    lanes = fused_mod.library().lanes
    units = 2 * 2 * -(-10 // lanes)                                  # batch x groups x blocks of 10 channels
    assert ckpt.numel() == units * -(-70 // fused_mod.CHUNK) * 4 * lanes
    with torch.no_grad():
        assert fused_mod.FusedScan.apply(u, x["delta"], x["A"], B, C, None, None, None, False, False,
                                        False).grad_fn is None


def _encoder_grads(model, feats, backend):
    for layer in model.layers:
        layer.mixer.scan_backend = backend
    model.zero_grad(set_to_none=True)
    logits = model(feats)
    logits.square().sum().backward()
    return logits.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("mixer", ["v1", "v2"])
@pytest.mark.parametrize("dtype,rel", [(torch.float64, 1e-10), (torch.float32, 2e-4)])
def test_encoder_logits_and_gradients_match_across_backends(mixer, dtype, rel):
    _need_compiler()
    torch.manual_seed(0)
    model = create_model("tiny", mixer=mixer, depth=2, num_classes=5).to(dtype)
    feats = torch.randn(2, 96, 128, dtype=dtype)
    logits_t, grads_t = _encoder_grads(model, feats, "torch")
    logits_f, grads_f = _encoder_grads(model, feats, "fused")
    scale = float(logits_t.abs().max())
    torch.testing.assert_close(logits_f, logits_t, rtol=rel, atol=rel * scale)
    assert grads_t.keys() == grads_f.keys() and len(grads_t) > 10
    for name, g in grads_t.items():
        torch.testing.assert_close(grads_f[name], g, rtol=rel, atol=rel * float(g.abs().max().clamp_min(1e-30)),
                                   msg=name)


def test_c_source_ships_as_package_data():
    tomllib = pytest.importorskip("tomllib")
    config = tomllib.loads((fused_mod.SOURCE.parents[2] / "pyproject.toml").read_text())
    patterns = config["tool"]["setuptools"]["package-data"]["aum"]
    relative = fused_mod.SOURCE.relative_to(fused_mod.SOURCE.parents[1])     # ops/scan_fused.c
    assert any(relative.match(p) for p in patterns)


def test_unwritable_cache_falls_back_with_a_message_naming_it(fresh_library, monkeypatch, tmp_path, caplog):
    if shutil.which(fused_mod.compiler()) is None:
        pytest.skip("no C compiler: the missing-compiler message comes first")
    blocker = tmp_path / "not-a-folder"
    blocker.write_text("a file where the cache folder should be\n")
    monkeypatch.setenv("AUM_CACHE", str(blocker))
    with caplog.at_level(logging.WARNING, logger=fused_mod.__name__):
        assert fused_mod.library() is None
    records = _fallback_records(caplog)
    assert len(records) == 1 and "cannot write the kernel cache" in records[0].getMessage()
    assert "AUM_CACHE" in records[0].getMessage()
