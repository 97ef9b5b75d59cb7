"""Scaling with input length: AuM against an AST-style Transformer of the same width and depth (and, with
``--dass``, a DASS preset beside them).

Both models see the same inputs: 1, 2, 4, 8 and 16 times a 10 s input (1024 frames), batch 1. The
Transformer is a ViT/AST encoder built from ``torch.nn.TransformerEncoderLayer`` (pre-norm, GELU, MLP 4x,
heads = width / 64), whose attention runs through ``scaled_dot_product_attention``, with the same 16x16 patch
embedding, learned positions and a class token. DASS (``--dass dass_small``) scans a 4x4-patch grid
(32 x frames/4 positions in its first stage: 8,192 per 10 s) in four directions, halving it per stage.
Each (model, length, mode) runs in a fresh subprocess and
reports wall time (median of ``--repeats``) and peak memory (CPU: growth of peak RSS over the process's
footprint before the step; CUDA: ``max_memory_allocated``). Modes: ``forward`` (no gradients) and ``train``
(forward + backward).

    python benchmarks/scaling.py [--preset tiny] [--multiples 1 2 4 8 16] [--out runs/scaling]
    python benchmarks/scaling.py --preset small --dass dass_small       # DASS beside AuM small and its twin
    python benchmarks/scaling.py --device cuda --preset base        # on a GPU (mamba-ssm kernels if installed)

Writes ``scaling.json`` and ``scaling.png`` to ``--out`` and prints, for each model and mode,
time(16x)/time(1x) and memory(16x)/memory(1x), and the shortest length at which AuM (and DASS) is faster
than the Transformer.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap
from pathlib import Path

WORKER = textwrap.dedent("""
    import json, resource, statistics, sys, time
    import torch
    import torch.nn as nn
    from aum.models import create_model, model_config
    model_name, preset, frames, mode, device, repeats, backend = sys.argv[1:8]
    frames, repeats, backend = int(frames), int(repeats), None if backend == "auto" else backend
    torch.manual_seed(0)
    cfg = model_config(preset)

    class AST(nn.Module):
        def __init__(self, dim, depth, grid):
            super().__init__()
            self.proj = nn.Conv2d(1, dim, 16, 16)
            self.cls = nn.Parameter(torch.zeros(1, 1, dim))
            self.pos = nn.Parameter(torch.randn(1, 1 + grid, dim) * 0.02)
            layer = nn.TransformerEncoderLayer(dim, max(1, dim // 64), 4 * dim, dropout=0.0, activation="gelu",
                                               batch_first=True, norm_first=True)
            self.blocks = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
            self.norm = nn.LayerNorm(dim)
        def forward(self, x):
            x = self.proj(x.unsqueeze(1).transpose(2, 3)).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], 1) + self.pos
            return self.norm(self.blocks(x))[:, 0]

    grid = (128 // 16) * (frames // 16)
    model = (AST(cfg.embed_dim, cfg.depth, grid) if model_name == "ast"
             else create_model(preset, scan_backend=backend)).to(device)
    x = torch.randn(1, frames, 128, device=device)
    def step():
        if mode == "train":
            model.train(); model.zero_grad(set_to_none=True); model(x).square().mean().backward()
        else:
            model.eval()
            with torch.no_grad():
                model(x)
        if device == "cuda":
            torch.cuda.synchronize()
    # memory: the first step's peak over the footprint just before it (peak RSS only ever grows, so it
    # must be read on the first step); time: the median of the following steps
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats(); base = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/statm") as fh:
            base = int(fh.read().split()[1]) * resource.getpagesize()
    step()
    if device == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - base
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    print(json.dumps({"seconds": statistics.median(times), "peak_mib": max(peak, 0) / 2**20}))
""")


def run_one(model, preset, frames, mode, device, repeats, timeout, backend="auto"):
    """One measurement in a fresh interpreter (``model``: ``aum`` or ``dass``, built from ``preset``, or
    ``ast``, the Transformer twin of AuM preset ``preset``); ``{"error": ...}`` when it fails or runs out of
    memory / time."""
    try:
        out = subprocess.run([sys.executable, "-c", WORKER, model, preset, str(frames), mode, device, str(repeats),
                              backend], capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout after {timeout} s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def summarise(results, multiples):
    """Ratios 16x/1x (largest/smallest multiple) of time and memory per model in ``results``, and the
    crossover length of each state-space model (AuM, DASS) against the Transformer."""
    lo, hi = min(multiples), max(multiples)
    summary = {}
    for mode in ("forward", "train"):
        for model in results:
            r = {m: results[model][mode].get(str(m)) or results[model][mode].get(m) for m in multiples}
            ok = all(v and "seconds" in v for v in (r[lo], r[hi]))
            summary[f"{model}_{mode}"] = {
                "time_ratio": r[hi]["seconds"] / r[lo]["seconds"] if ok else None,
                "memory_ratio": r[hi]["peak_mib"] / max(r[lo]["peak_mib"], 1e-9) if ok else None}
        for model in (name for name in results if name != "ast"):
            faster = [m for m in multiples
                      if "seconds" in results[model][mode][m] and ("seconds" not in results["ast"][mode][m]
                                                                   or results[model][mode][m]["seconds"]
                                                                   < results["ast"][mode][m]["seconds"])]
            summary[f"{model}_faster_from_{mode}"] = min(faster) if faster else None
    return summary


def plot(results, multiples, frames, path):
    """Two panels (time, memory) against input length, one line per model and mode."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    seconds = [m * frames / 100 for m in multiples]
    colors = {"aum": "tab:blue", "ast": "tab:red", "dass": "tab:green"}
    for model in results:
        for mode, style in (("forward", "-"), ("train", "--")):
            rows = [results[model][mode][m] for m in multiples]
            for ax, key in zip(axes, ("seconds", "peak_mib")):
                xs = [s for s, r in zip(seconds, rows) if key in r]
                ys = [r[key] for r in rows if key in r]
                if ys:                                          # a mode not run (or failed throughout): no line
                    ax.plot(xs, ys, style, color=colors[model], marker="o", label=f"{model.upper()} {mode}")
    for ax, label in zip(axes, ("time per step (s)", "peak memory (MiB)")):
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("input length (s of audio)")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main(argv=None):
    """Measure, print the ratios, write JSON and PNG."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny", help="AuM preset (and the width/depth of its Transformer twin)")
    p.add_argument("--dass", default=None, metavar="PRESET", help="also measure this DASS preset, e.g. dass_small")
    p.add_argument("--backend", default="auto", choices=["auto", "fused", "torch", "cuda"],
                   help="selective-scan backend of AuM and DASS (auto: cuda on a GPU if installed, else fused "
                        "where a C compiler is found, else torch)")
    p.add_argument("--frames", type=int, default=1024, help="frames of the 1x input (10 s)")
    p.add_argument("--multiples", type=int, nargs="+", default=[1, 2, 4, 8, 16])
    p.add_argument("--modes", nargs="+", default=["forward", "train"])
    p.add_argument("--device", default="cpu")
    p.add_argument("--repeats", type=int, default=1)
    p.add_argument("--timeout", type=int, default=900, help="seconds per measurement")
    p.add_argument("--out", default="runs/scaling")
    args = p.parse_args(argv)
    from aum.config import UnknownPresetError
    from aum.models.dass import halve
    from aum.models.registry import preset_family
    for flag, name, family in (("--preset", args.preset, "aum"), ("--dass", args.dass, "dass")):
        try:
            if name is not None and preset_family(name) != family:
                p.error(f"{flag} {name!r} is not a {family.upper()} preset")
        except UnknownPresetError as err:
            p.error(err.args[0])
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    presets = {"aum": args.preset, "ast": args.preset, **({"dass": args.dass} if args.dass else {})}
    results = {model: {mode: {} for mode in ("forward", "train")} for model in presets}
    for mode in args.modes:
        for m in args.multiples:
            frames = m * args.frames
            for model, preset in presets.items():
                r = run_one(model, preset, frames, mode, args.device, args.repeats, args.timeout, args.backend)
                results[model][mode][m] = r
                shown = (f"{r['seconds']:8.2f} s {r['peak_mib']:8.0f} MiB" if "seconds" in r else r["error"])
                length = (f"{halve(128, 2) * halve(frames, 2):6d} positions" if model == "dass"
                          else f"{frames // 2:6d} patches")
                print(f"{model:4} {mode:7} {m:2}x ({frames:6d} frames, {length}): {shown}", flush=True)
    for mode in ("forward", "train"):                       # keep the structure complete for summarise()
        if mode not in args.modes:
            for model in results:
                results[model][mode] = {m: {"error": "not run"} for m in args.multiples}
    summary = summarise(results, args.multiples)
    lo, hi = min(args.multiples), max(args.multiples)
    for key, val in summary.items():
        if isinstance(val, dict) and val["time_ratio"] is not None:
            print(f"{key:12}: time({hi}x)/time({lo}x) = {val['time_ratio']:.1f}, "
                  f"memory({hi}x)/memory({lo}x) = {val['memory_ratio']:.1f}")
        elif not isinstance(val, dict):
            print(f"{key}: {val if val is None else str(val) + 'x'}")
    record = {"preset": args.preset, "dass_preset": args.dass, "scan_backend": args.backend, "device": args.device,
              "frames_1x": args.frames, "multiples": args.multiples,
              "results": results, "summary": summary}
    (out / "scaling.json").write_text(json.dumps(record, indent=2))
    plot(results, args.multiples, args.frames, out / "scaling.png")
    print(f"wrote {out / 'scaling.json'} and {out / 'scaling.png'}")


if __name__ == "__main__":
    main()
