"""Selective-scan micro-benchmark: the fused C kernel vs the ``torch`` scan vs the ``reference`` loop (a
benchmark script, not a test).

At the encoders' scan sizes (``tiny``: E = 384, ``small``: E = 768; N = 16; L = 513 tokens for 1024 frames;
batch 4), float32, it times the forward without gradients and the forward + backward, median of
``--repeats`` after one warm-up, all in this one process so the ratios share the machine's state. The
``reference`` loop (one autograd step per time step) runs only at ``--short`` steps, where the other two
also run, so all three compare on equal terms.

    python benchmarks/scan_speed.py [--sizes tiny small] [--length 513] [--short 64] [--threads 0] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from aum.ops import selective_scan
from aum.ops import scan_fused

SIZES = {"tiny": 384, "small": 768, "base": 1536}


def _inputs(batch, channels, state, length, requires_grad):
    g = torch.Generator().manual_seed(0)
    x = {"u": torch.randn(batch, channels, length, generator=g),
         "delta": torch.randn(batch, channels, length, generator=g) * 0.5 - 2.0,
         "A": -torch.exp(torch.randn(channels, state, generator=g) * 0.5),
         "B": torch.randn(batch, state, length, generator=g),
         "C": torch.randn(batch, state, length, generator=g),
         "D": torch.randn(channels, generator=g),
         "z": torch.randn(batch, channels, length, generator=g),
         "delta_bias": torch.randn(channels, generator=g) * 0.1}
    return {k: v.requires_grad_(requires_grad) for k, v in x.items()}


def time_scan(backend, batch, channels, state, length, mode, repeats):
    """Median seconds of one scan call (``mode`` ``forward``: no grad; ``train``: forward + backward)."""
    x = _inputs(batch, channels, state, length, requires_grad=mode == "train")

    def step():
        if mode == "train":
            y = selective_scan(**x, delta_softplus=True, backend=backend)
            y.backward(torch.ones_like(y))
        else:
            with torch.no_grad():
                selective_scan(**x, delta_softplus=True, backend=backend)

    step()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv=None):
    """Print the scan timings and speed-ups per size, length and mode; optionally save them as JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", nargs="+", default=["tiny", "small"], choices=sorted(SIZES))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--state", type=int, default=16)
    p.add_argument("--length", type=int, default=513, help="sequence length for fused vs torch")
    p.add_argument("--short", type=int, default=64, help="length at which the reference loop also runs")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="write all records to this file")
    args = p.parse_args(argv)
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    lib = scan_fused.library()
    backends = (["fused"] if lib is not None else []) + ["torch"]
    print(f"batch {args.batch}, N {args.state}, float32, {torch.get_num_threads()} threads; median of "
          f"{args.repeats}; ms per call" + ("" if lib else "  (fused kernel unavailable: see the warning)"))
    print(f"{'size':6} {'E':>5} {'L':>5} {'mode':8} " + " ".join(f"{b:>10}" for b in backends + ["reference"])
          + f" {'torch/fused':>12} {'ref/fused':>10}")
    records = []
    for size in args.sizes:
        channels = SIZES[size]
        for length in (args.length, args.short):
            for mode in ("forward", "train"):
                names = backends + (["reference"] if length == args.short else [])
                ms = {b: 1000 * time_scan(b, args.batch, channels, args.state, length, mode, args.repeats)
                      for b in names}
                fused = ms.get("fused")
                ratio = {k: (ms[k] / fused if fused and k in ms else float("nan")) for k in ("torch", "reference")}
                print(f"{size:6} {channels:5d} {length:5d} {mode:8} "
                      + " ".join(f"{ms.get(b, float('nan')):10.1f}" for b in backends + ["reference"])
                      + f" {ratio['torch']:12.2f} {ratio['reference']:10.2f}")
                records.append({"size": size, "channels": channels, "length": length, "mode": mode,
                                "batch": args.batch, "state": args.state, "ms": ms,
                                "torch_over_fused": ratio["torch"], "reference_over_fused": ratio["reference"]})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({"threads": torch.get_num_threads(), "records": records}, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
