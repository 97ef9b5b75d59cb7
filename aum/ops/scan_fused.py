"""The ``fused`` CPU selective scan: ``scan_fused.c`` (C99 + OpenMP), compiled on first use, loaded with ctypes.

It computes the whole of ``selective_scan`` (``aum/ops/scan.py``): ``delta_bias`` and the softplus, the
recurrence, the read-out with ``C``, the skip ``D * u`` and the gate ``silu(z)``, forward and backward, in float32
or float64, in one pass over the sequence per block of 16 channels instead of one PyTorch call per time step.
Tensors are handed over with their own strides (a transposed ``[batch, L, E]`` layout is read as it lies; a
backward scan is a negative time stride), so no copies are made around the kernel; outputs and gradients take
the layout of ``delta`` / ``u`` / ``z`` (``torch.empty_like``). See the C file's header for the maths and the
memory layout.

Building: the system C compiler (``$AUM_CC``, else ``$CC``, else ``cc``) compiles the source into
``$AUM_CACHE/kernels/<key>/`` (default ``~/.cache/aum/kernels``), written under a temporary name and renamed
into place, so concurrent first uses cannot see half a library. ``key`` hashes the source, the compiler's path
and ``--version``, the CPU (model and feature flags) and the compiler flags, so a cache shared between machines
never serves a binary built for another CPU. Flags are tried in order: ``-march=native -fopenmp``, then
``-fopenmp``, then neither (one thread), each followed by ``$AUM_SCAN_CFLAGS`` when set (for example
``-DAUM_SCAN_PORTABLE``, which builds the plain C loops instead of the AVX-512 ones). Where no attempt works,
``library()`` returns ``None``, the ``auto`` backend uses the ``torch`` scan, and one warning says why and how to
get the fast path.

Autograd: forward stores its inputs (not its output) and the state at the start of every ``CHUNK`` steps
(``ceil(L / CHUNK) * batch * E * N`` values; nothing under ``torch.no_grad()``); backward recomputes each chunk
from its checkpoint and runs the adjoint recurrence in reverse. Threads: ``torch.get_num_threads()``.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import logging
import os
import platform
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

log = logging.getLogger(__name__)

SOURCE = Path(__file__).with_name("scan_fused.c")
# Steps per chunk: the backward's checkpoint interval and the forward's tile along time.
CHUNK = 32
# The backward's minimum number of parallel work items (see backward_parts).
WORK_ITEMS = 16
FLAG_ATTEMPTS = (
    ["-O3", "-march=native", "-fopenmp"],
    ["-O3", "-fopenmp"],
    ["-O3"],
)
COMMON_FLAGS = ["-std=c99", "-ffp-contract=fast", "-fPIC", "-shared"]
_DTYPES = {torch.float32: ("f32", ctypes.c_float), torch.float64: ("f64", ctypes.c_double)}


class View(ctypes.Structure):
    """The C side's ``aum_view``: a data pointer and one stride (in elements, any sign) per dimension."""

    _fields_ = [("data", ctypes.c_void_p), ("s", ctypes.c_int64 * 4)]


class FusedLibrary:
    """The loaded kernels: ``forward[dtype]``, ``backward[dtype]`` and ``lanes`` (channels per block)."""

    def __init__(self, path: Path, flags: list[str]):
        self.path, self.flags = path, flags
        self._lib = ctypes.CDLL(str(path))
        self.lanes = int(self._lib.aum_scan_lanes())
        i64, ptr, view, flag = ctypes.c_int64, ctypes.c_void_p, ctypes.POINTER(View), ctypes.c_int
        self.forward, self.backward = {}, {}
        for dtype, (suffix, _) in _DTYPES.items():
            fwd = getattr(self._lib, f"aum_scan_forward_{suffix}")
            fwd.argtypes = [view] * 6 + [ptr] * 4 + [i64] * 6 + [flag, flag]
            fwd.restype = ctypes.c_int
            bwd = getattr(self._lib, f"aum_scan_backward_{suffix}")
            bwd.argtypes = [view] * 6 + [ptr] * 4 + [view] * 3 + [ptr] * 5 + [i64] * 7 + [flag, flag]
            bwd.restype = ctypes.c_int
            self.forward[dtype], self.backward[dtype] = fwd, bwd


def compiler() -> str:
    """The C compiler command: ``$AUM_CC``, else ``$CC``, else ``cc``."""
    return os.environ.get("AUM_CC") or os.environ.get("CC") or "cc"


def cache_root() -> Path:
    """``$AUM_CACHE/kernels`` when set, else ``~/.cache/aum/kernels``."""
    root = os.environ.get("AUM_CACHE")
    return (Path(root) if root else Path.home() / ".cache" / "aum") / "kernels"


def _cpu_identity() -> str:
    """CPU model and feature flags (``/proc/cpuinfo`` on Linux), plus the platform's own description."""
    parts = [platform.machine(), platform.processor(), platform.system()]
    try:
        with open("/proc/cpuinfo") as fh:
            seen = set()
            for line in fh:
                key = line.split(":", 1)[0].strip()
                if key in ("model name", "flags", "Features", "CPU implementer", "CPU part") and key not in seen:
                    seen.add(key)
                    parts.append(line.strip())
    except OSError:
        pass
    return "\n".join(parts)


def build_key(cc_path: str, cc_version: str, flags: list[str], source: bytes) -> str:
    """First 20 hex digits of a sha256 over the source, the compiler, the CPU and the flags."""
    h = hashlib.sha256()
    for part in (source, cc_path.encode(), cc_version.encode(), _cpu_identity().encode(), " ".join(flags).encode()):
        h.update(part)
        h.update(b"\0")
    return h.hexdigest()[:20]


def _compile(cc_path: str, flags: list[str], out: Path) -> str | None:
    """Compile SOURCE into ``out`` (atomically); returns ``None`` on success, else the compiler's first error."""
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".build-", suffix=".so", dir=out.parent)
        os.close(fd)
    except OSError as exc:
        return f"cannot write the kernel cache {out.parent}: {exc} (set AUM_CACHE to a writable folder)"
    try:
        res = subprocess.run([cc_path, *flags, *COMMON_FLAGS, str(SOURCE), "-o", tmp], capture_output=True,
                             text=True, timeout=300)
        if res.returncode != 0:
            lines = [ln for ln in (res.stderr or res.stdout).splitlines() if ln.strip()]
            errors = [ln for ln in lines if "error" in ln.lower()]
            return (errors or lines or [f"exit status {res.returncode}"])[0].strip()
        os.replace(tmp, out)
        return None
    except (OSError, subprocess.SubprocessError) as exc:
        return str(exc)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _unavailable(reason: str) -> None:
    log.warning("aum.ops: fused CPU selective scan unavailable (%s); using the slower pure-PyTorch 'torch' scan. "
                "For the fast path install a C compiler (gcc or clang, with OpenMP) or point AUM_CC at one.", reason)


@functools.lru_cache(maxsize=None)
def library() -> FusedLibrary | None:
    """The compiled kernels, building them on first use; ``None`` (with one warning) where that is impossible."""
    cc = compiler()
    cc_path = shutil.which(cc)
    if cc_path is None:
        _unavailable(f"C compiler {cc!r} not found; set by AUM_CC / CC, default 'cc'")
        return None
    try:
        version = subprocess.run([cc_path, "--version"], capture_output=True, text=True, timeout=60).stdout
        source = SOURCE.read_bytes()
    except (OSError, subprocess.SubprocessError) as exc:
        _unavailable(f"could not run {cc_path} --version or read {SOURCE}: {exc}")
        return None
    first_error = None
    extra = shlex.split(os.environ.get("AUM_SCAN_CFLAGS", ""))
    for flags in (attempt + extra for attempt in FLAG_ATTEMPTS):
        target = cache_root() / build_key(cc_path, version, flags + COMMON_FLAGS, source) / "scan_fused.so"
        failed = target.with_name("failed.txt")
        if not target.exists():
            if failed.exists():                       # this exact compiler + CPU + flags failed before
                first_error = first_error or failed.read_text().strip()
                continue
            error = _compile(cc_path, flags, target)
            if error is not None:
                first_error = first_error or error
                try:
                    failed.write_text(error + "\n")
                except OSError:
                    pass
                continue
        try:
            lib = FusedLibrary(target, flags)
        except (OSError, AttributeError) as exc:
            first_error = first_error or f"loading {target}: {exc}"
            continue
        if "-fopenmp" not in flags:
            log.warning("aum.ops: fused CPU selective scan built without OpenMP (%s); it runs on one thread",
                        first_error)
        return lib
    _unavailable(f"compiling {SOURCE.name} with {cc_path} failed: {first_error}")
    return None


def backward_parts(batch: int, groups: int, blocks: int) -> int:
    """Runs of channel blocks per group that the backward splits its work into: at least ``WORK_ITEMS`` items
    of ``batch x groups x parts`` where there are blocks enough. Each run accumulates the B / C gradients of its
    blocks into its own ``[N, L]`` slice (summed afterwards), so fewer runs mean less memory traffic; the count
    depends on the shapes only, which keeps gradients independent of the thread count."""
    return max(1, min(blocks, -(-WORK_ITEMS // (batch * groups))))


def _ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def _view(t: torch.Tensor | None, reverse: bool) -> View:
    """``t`` (time last) as the kernel's view; ``reverse``: time runs from the last step to the first."""
    if t is None:
        return View()
    strides = list(t.stride())
    data = t.data_ptr()
    if reverse and t.shape[-1] > 0:
        data += (t.shape[-1] - 1) * strides[-1] * t.element_size()
        strides[-1] = -strides[-1]
    return View(data, (ctypes.c_int64 * 4)(*strides, *[0] * (4 - len(strides))))


def _maybe(fn, t):
    return None if t is None else fn(t)


class FusedScan(torch.autograd.Function):
    """``selective_scan`` by the C kernels: ``u, delta, z [b, E, L]``, ``A [E, N]``, ``B, C [b, G, N, L]``,
    ``D, delta_bias [E]`` (``D``, ``z``, ``delta_bias`` may be ``None``), all in one dtype (float32 or float64),
    any strides. ``reverse`` scans from the last step to the first (the result stays in the input's time order).
    ``save_states``: keep what the backward needs (the inputs and the chunk checkpoints)."""

    @staticmethod
    def forward(ctx, u, delta, A, B, C, D, z, delta_bias, softplus, reverse, save_states):
        lib = library()
        A, D, delta_bias = A.contiguous(), _maybe(torch.Tensor.contiguous, D), _maybe(torch.Tensor.contiguous,
                                                                                        delta_bias)
        batch, channels, length = u.shape
        groups, n = B.shape[1], A.shape[1]
        units = batch * groups * -(-(channels // groups) // lib.lanes)
        n_chunks = -(-length // CHUNK)
        y = torch.empty_like(delta)
        ckpt = u.new_empty(units * n_chunks * n * lib.lanes) if save_states else None
        views = [_view(t, reverse) for t in (u, delta, z, B, C, y)]
        rc = lib.forward[u.dtype](*views, _ptr(A), _ptr(D), _ptr(delta_bias), _ptr(ckpt), batch, channels, groups,
                                  n, length, CHUNK, int(softplus), torch.get_num_threads())
        if rc != 0:
            raise MemoryError("fused selective scan: out of memory for its work buffers")
        if save_states:
            ctx.save_for_backward(u, delta, A, B, C, D, z, delta_bias, ckpt)
            ctx.softplus, ctx.reverse = softplus, reverse
        return y

    @staticmethod
    def backward(ctx, gy):
        lib = library()
        u, delta, A, B, C, D, z, delta_bias, ckpt = ctx.saved_tensors
        reverse = ctx.reverse
        batch, channels, length = u.shape
        groups, n = B.shape[1], A.shape[1]
        parts = backward_parts(batch, groups, -(-(channels // groups) // lib.lanes))
        gu, gdelta, gz = torch.empty_like(u), torch.empty_like(delta), _maybe(torch.empty_like, z)
        gA_part = u.new_empty(batch, channels, n)
        gD_part = None if D is None else u.new_empty(batch, channels)
        gbias_part = None if delta_bias is None else u.new_empty(batch, channels)
        gB_part, gC_part = u.new_empty(batch, groups, parts, n, length), u.new_empty(batch, groups, parts, n, length)
        views = [_view(t, reverse) for t in (u, delta, z, B, C, gy)]
        grads = [_view(t, reverse) for t in (gu, gdelta, gz)]
        rc = lib.backward[u.dtype](*views, _ptr(A), _ptr(D), _ptr(delta_bias), _ptr(ckpt), *grads, _ptr(gA_part),
                                   _ptr(gD_part), _ptr(gbias_part), _ptr(gB_part), _ptr(gC_part), batch, channels,
                                   groups, n, length, CHUNK, parts, int(ctx.softplus), torch.get_num_threads())
        if rc != 0:
            raise MemoryError("fused selective scan: out of memory for its work buffers")
        gB, gC = (gB_part.squeeze(2), gC_part.squeeze(2)) if parts == 1 else (gB_part.sum(2), gC_part.sum(2))
        if reverse:
            gB, gC = gB.flip(-1), gC.flip(-1)
        return (gu, gdelta, gA_part.sum(0), gB, gC, _maybe(lambda t: t.sum(0), gD_part), gz,
                _maybe(lambda t: t.sum(0), gbias_part), None, None, None)


__all__ = ["FusedScan", "View", "library", "compiler", "cache_root", "build_key", "CHUNK"]
