"""Pretraining throughput, ``ssast`` against ``mae`` (a benchmark script, not a test).

Clips per second of full training steps (forward, backward, AdamW) for an encoder preset at ``--frames``
frames, measured in one process on the same random inputs, and the ratio mae / ssast:

    python benchmarks/pretrain_throughput.py [--preset tiny] [--frames 1024] [--batch 4] [--steps 3]
"""
from __future__ import annotations

import argparse
import json
import time

import torch

from aum.models import create_model
from pretrain.objectives import OBJECTIVES


def clips_per_second(name: str, preset: str, frames: int, batch: int, steps: int, device: str) -> float:
    """Median clips/s over ``steps`` training steps (after one warm-up step) of objective ``name``."""
    torch.manual_seed(0)
    encoder = create_model(preset, target_frames=frames)
    objective = OBJECTIVES[name](encoder).to(device).train()
    opt = torch.optim.AdamW(objective.parameters(), lr=1e-4)
    fbank = torch.randn(batch, frames, 128, device=device)
    times = []
    for i in range(steps + 1):
        t0 = time.perf_counter()
        loss, _, _ = objective({"fbank": fbank})
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        if i:
            times.append(time.perf_counter() - t0)
    return batch / sorted(times)[len(times) // 2]


def main(argv=None):
    """Print clips/s for both objectives and their ratio; optionally save JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="tiny")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--json")
    args = p.parse_args(argv)
    rates = {name: clips_per_second(name, args.preset, args.frames, args.batch, args.steps, args.device)
             for name in ("ssast", "mae")}
    ratio = rates["mae"] / rates["ssast"]
    print(f"{args.preset} at {args.frames} frames, batch {args.batch}, {args.device}: "
          f"ssast {rates['ssast']:.2f} clips/s, mae {rates['mae']:.2f} clips/s, mae/ssast = {ratio:.2f}x")
    if args.json:
        with open(args.json, "w") as fh:
            json.dump({**vars(args), "clips_per_s": rates, "mae_over_ssast": ratio}, fh, indent=2)


if __name__ == "__main__":
    main()
