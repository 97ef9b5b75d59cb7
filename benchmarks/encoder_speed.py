"""Encoder speed and memory on this machine (a benchmark script, not a test).

For each preset: forward time and peak memory at ``--frames`` frames and ``--batch`` clips, without
gradients; the same forward with the selective scan replaced by an identity (``y = u``), and their ratio
(the scan should not dominate: target <= 2.0 for ``small``); and the training step (forward + backward)
with the peak memory it takes. Each measurement runs in a fresh subprocess so that peak RSS is its own.

    python benchmarks/encoder_speed.py [--presets tiny small] [--frames 1024] [--batch 4] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import textwrap

WORKER = textwrap.dedent("""
    import json, resource, statistics, sys, time
    import torch
    import aum.modules.mixer as mixer
    from aum.models import create_model
    preset, mixer_dir, frames, batch, mode, repeats, threads = sys.argv[1:8]
    frames, batch, repeats = int(frames), int(batch), int(repeats)
    if int(threads) > 0:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    model = create_model(preset, mixer=mixer_dir)
    x = torch.randn(batch, frames, 128)
    if mode == "identity":
        mixer.selective_scan = lambda u, *args, **kwargs: u
    def step():
        if mode == "train":
            model.train()
            model.zero_grad(set_to_none=True)
            model(x).square().mean().backward()
        else:
            model.eval()
            with torch.no_grad():
                model(x)
    step()                                             # warm-up (allocator, thread pools)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter(); step(); times.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    print(json.dumps({"seconds": statistics.median(times), "all_seconds": times,
                      "peak_rss_mib": peak / 1024, "params_m": sum(p.numel() for p in model.parameters()) / 1e6}))
""")


def measure(preset, mixer_dir, frames, batch, mode, repeats, threads):
    """Run one configuration in a fresh interpreter and return its JSON record."""
    out = subprocess.run([sys.executable, "-c", WORKER, preset, mixer_dir, str(frames), str(batch), mode,
                          str(repeats), str(threads)], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{preset}/{mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    """Print the forward / identity-scan / training figures for each preset and optionally save JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small"])
    p.add_argument("--mixer", default=None, help="mixer for every preset (default: v1 tiny, v2 small)")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-train", action="store_true", help="skip the forward+backward measurement")
    p.add_argument("--json", help="write all records to this file")
    args = p.parse_args(argv)
    default_mixer = {"tiny": "v1", "small": "v2", "base": "v1"}
    records = []
    print(f"batch {args.batch} x {args.frames} frames; median of {args.repeats}; times in s, memory = peak RSS")
    print(f"{'preset':7} {'mixer':5} {'forward':>8} {'identity':>8} {'ratio':>6} {'fwd MiB':>8} "
          f"{'train':>8} {'train MiB':>9}")
    for preset in args.presets:
        mixer_dir = args.mixer or default_mixer.get(preset, "v1")
        run = {mode: measure(preset, mixer_dir, args.frames, args.batch, mode, args.repeats, args.threads)
               for mode in (["full", "identity"] + ([] if args.no_train else ["train"]))}
        ratio = run["full"]["seconds"] / run["identity"]["seconds"]
        train = run.get("train", {})
        print(f"{preset:7} {mixer_dir:5} {run['full']['seconds']:8.3f} {run['identity']['seconds']:8.3f} "
              f"{ratio:6.2f} {run['full']['peak_rss_mib']:8.0f} {train.get('seconds', float('nan')):8.3f} "
              f"{train.get('peak_rss_mib', float('nan')):9.0f}")
        records.append({"preset": preset, "mixer": mixer_dir, "frames": args.frames, "batch": args.batch,
                        "scan_over_identity": ratio, **{k: v for k, v in run.items()}})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
