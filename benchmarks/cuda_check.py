"""GPU check: the ``cuda`` scan backend (mamba-ssm / causal-conv1d kernels) against our ``torch`` backend.

Run on a CUDA machine with the ``cuda`` extra installed:

    python benchmarks/cuda_check.py [--preset base] [--frames 1024] [--batch 4] [--json out.json]

It compares, on the GPU, (1) the raw selective scan and causal conv1d of both backends on random inputs
(outputs and gradients, float32), and (2) a whole encoder's forward and backward with each backend, in
float32 and under bf16 autocast; then times forward and forward+backward of both. It exits non-zero when
a comparison is out of tolerance. Without causal-conv1d (a long build) the scan kernel is still checked and
the encoder runs with our conv (the ``auto`` backend picks each kernel that imports). ``--cpu-smoke`` runs the
same code on the CPU with ``reference`` in the place of ``cuda`` (to check the script itself where no GPU
exists).
"""
from __future__ import annotations

import argparse
import json
import sys
import time

import torch

from aum.models import create_model
from aum.ops import causal_conv1d, cuda_kernels, selective_scan


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b| in float64."""
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def compare_ops(device, other, batch=2, channels=64, state=16, length=515, seed=0):
    """Scan and conv of backend ``other`` against ``torch``: relative errors of outputs and gradients."""
    g = torch.Generator(device="cpu").manual_seed(seed)
    mk = lambda *s, scale=1.0: (torch.randn(*s, generator=g) * scale).to(device)  # noqa: E731
    inputs = dict(u=mk(batch, channels, length), delta=mk(batch, channels, length, scale=0.5),
                  A=-(torch.rand(channels, state, generator=g) * 3 + 0.05).to(device),
                  B=mk(batch, state, length), C=mk(batch, state, length), D=mk(channels),
                  z=mk(batch, channels, length), delta_bias=mk(channels, scale=0.5))
    results = {}
    outs, grads = {}, {}
    for backend in ("torch", other):
        leaves = {k: v.clone().requires_grad_() for k, v in inputs.items()}
        y = selective_scan(**leaves, delta_softplus=True, backend=backend)
        y.backward(torch.ones_like(y))
        outs[backend] = y
        grads[backend] = {k: v.grad for k, v in leaves.items()}
    results["scan_out"] = rel_err(outs[other], outs["torch"])
    results["scan_grad"] = max(rel_err(grads[other][k], grads["torch"][k]) for k in inputs)
    x, w, b = mk(batch, channels, length), mk(channels, 1, 4), mk(channels)
    if other != "cuda" or cuda_kernels()[1] is not None:
        results["conv_out"] = rel_err(causal_conv1d(x, w, b, backend=other), causal_conv1d(x, w, b, backend="torch"))
    return results


def run_model(model, x, backend, autocast_dtype=None):
    """Forward + backward of ``model`` with every mixer on ``backend``; returns output and gradients."""
    for layer in model.layers:
        layer.mixer.scan_backend = backend
    model.zero_grad(set_to_none=True)
    with torch.autocast(x.device.type, dtype=autocast_dtype or torch.float32, enabled=autocast_dtype is not None):
        out = model.forward_features(x).pooled
    out.float().square().mean().backward()
    return out.detach().float(), {n: p.grad.detach().clone() for n, p in model.named_parameters()}


def time_it(fn, device, repeats=5):
    """Median wall time of ``fn`` (synchronising CUDA)."""
    fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return sorted(times)[len(times) // 2]


def main(argv=None):
    """Run the comparisons and timings; print a table and exit 1 when out of tolerance."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="base")
    p.add_argument("--mixer", default="v1")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--depth", type=int, default=None, help="fewer layers for a quick run")
    p.add_argument("--cpu-smoke", action="store_true")
    p.add_argument("--json")
    args = p.parse_args(argv)
    if args.cpu_smoke:
        device, other = torch.device("cpu"), "reference"
    else:
        if not torch.cuda.is_available():
            sys.exit("no CUDA device: run this on a GPU machine (or --cpu-smoke to test the script)")
        if cuda_kernels()[0] is None:
            sys.exit("mamba-ssm does not import: install the `cuda` extra (see README)")
        device, other = torch.device("cuda"), "cuda"
    scan_kernel, conv_kernel = cuda_kernels()
    report = {"device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
              "kernels": {"selective_scan": scan_kernel is not None, "causal_conv1d": conv_kernel is not None}}
    # the encoder's kernel side: ``auto`` on the GPU takes each kernel that imports, our code for the rest
    model_backend = "auto" if device.type == "cuda" else other
    report["ops"] = compare_ops(device, other)
    overrides = {"mixer": args.mixer} | ({"depth": args.depth} if args.depth else {})
    torch.manual_seed(0)
    model = create_model(args.preset, **overrides).to(device)
    x = torch.randn(args.batch, args.frames, 128, device=device)
    tolerances = {"float32": 1e-3, "bf16": 5e-2}
    ok = all(v < 1e-4 for v in report["ops"].values())
    for label, dtype in (("float32", None), ("bf16", torch.bfloat16)):
        ref_out, ref_grads = run_model(model, x, "torch", dtype)
        out, grads = run_model(model, x, model_backend, dtype)
        err_out = rel_err(out, ref_out)
        err_grad = max(rel_err(grads[n], ref_grads[n]) for n in ref_grads)
        report[f"model_{label}"] = {"out": err_out, "grad": err_grad}
        ok &= err_out < tolerances[label] and err_grad < 10 * tolerances[label]
    for backend in ("torch", model_backend):
        for layer in model.layers:
            layer.mixer.scan_backend = backend

        def fwd():
            with torch.no_grad():
                model(x)

        def train():
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        report[f"time_{backend}"] = {"forward_s": time_it(fwd, device), "train_step_s": time_it(train, device)}
        if device.type == "cuda":
            torch.cuda.reset_peak_memory_stats()
            train()
            report[f"time_{backend}"]["train_peak_gib"] = torch.cuda.max_memory_allocated() / 2**30
    report["ok"] = bool(ok)
    print(json.dumps(report, indent=2))
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(report, fh, indent=2)
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
