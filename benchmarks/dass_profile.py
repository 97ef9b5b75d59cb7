"""Where a DASS forward spends its time, per stage and per part (a benchmark script, not a test).

Wall-clock timers around the modules (forward pre-/post-hooks) and around the three SS2D steps that are
functions rather than modules (the scan inputs - cross-scan and the per-direction x / delta projections -,
the selective scan itself, and the cross-merge). Per stage: its grid and scan length ``L = H * W`` (8,192 in
stage 0 for 1024 frames), and its time split into

    scan    the four-direction selective scan (4C channels over L positions)
    prep    cross-scan + x_proj / dt_proj einsums (the scan's inputs)
    merge   cross-merge of the four directions
    proj    SS2D in_proj and out_proj (1x1)
    dwconv  SS2D depthwise 3x3 conv
    norms   the block's two LayerNorms and SS2D's out_norm
    mlp     the block's MLP (1x1 C -> 4C -> C, GELU)
    other   the rest of the blocks (SiLU, residual adds, casts, exp(A_logs))
    down    the stride-2 downsampling conv + LayerNorm after the stage

plus the stem (two stride-2 convs) and the head (final LayerNorm, pooling). No gradients (``eval`` mode),
median over ``--repeats`` after one warm-up, for each CPU scan backend in turn.

    python benchmarks/dass_profile.py [--preset dass_small] [--frames 1024] [--batch 4]
                                      [--backends fused torch] [--repeats 3] [--threads 0] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from collections import defaultdict

PARTS = ("scan", "prep", "merge", "proj", "dwconv", "norms", "mlp", "other", "down")


class StageTimer:
    """Forward hooks and function wrappers that add wall time to ``seconds[(section, part)]`` for one
    :class:`aum.models.DASS`; :meth:`close` removes them all."""

    def __init__(self, model):
        from aum.models import dass
        self.dass, self.seconds, self.stage = dass, defaultdict(float), None
        self._starts, self._handles = {}, []
        self._originals = {"selective_scan": dass.selective_scan, "cross_merge": dass.cross_merge}
        dass.selective_scan = self._timed(dass.selective_scan, "scan")
        dass.cross_merge = self._timed(dass.cross_merge, "merge")
        self._time(model.patch_embed, "stem", "total")
        self._time(model.classifier["norm"], "head", "total")
        self._wrapped = []
        for i, stage in enumerate(model.layers):
            for block in stage.blocks:
                self._time(block, f"stage{i}", "blocks", enter=lambda i=i: setattr(self, "stage", f"stage{i}"))
                for module, part in ((block.norm, "norms"), (block.norm2, "norms"), (block.op.out_norm, "norms"),
                                     (block.op.in_proj, "proj"), (block.op.out_proj, "proj"),
                                     (block.op.conv2d, "dwconv"), (block.mlp, "mlp")):
                    self._time(module, None, part)
                block.op.scan_inputs = self._timed(block.op.scan_inputs, "prep")   # instance attr over the method
                self._wrapped.append(block.op)
            self._time(stage.downsample, f"stage{i}", "down")

    def _time(self, module, section, part, enter=None):
        def pre(mod, args):
            if enter is not None:
                enter()
            self._starts[mod] = time.perf_counter()

        def post(mod, args, out):
            self.seconds[(section or self.stage, part)] += time.perf_counter() - self._starts.pop(mod)

        self._handles += [module.register_forward_pre_hook(pre), module.register_forward_hook(post)]

    def _timed(self, fn, part):
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                self.seconds[(self.stage, part)] += time.perf_counter() - t0
        return wrapper

    def close(self):
        """Remove every hook and wrapper (the model and ``aum.models.dass`` are as before)."""
        for handle in self._handles:
            handle.remove()
        for op in self._wrapped:
            del op.scan_inputs
        for name, fn in self._originals.items():
            setattr(self.dass, name, fn)


def split(seconds: dict, total: float, n_stages: int) -> dict:
    """One forward's timer readings -> ``{section: {part: seconds}}`` with ``other`` (block time not in a
    named part), a ``total`` per section, and the head's remainder (``total`` minus all sections)."""
    table = {"stem": {"total": seconds[("stem", "total")]}}
    for i in range(n_stages):
        key = f"stage{i}"
        row = {part: seconds[(key, part)] for part in PARTS if part != "other"}
        blocks = seconds[(key, "blocks")]
        row["other"] = max(blocks - sum(v for p, v in row.items() if p != "down"), 0.0)
        row["total"] = blocks + row["down"]
        table[key] = row
    table["head"] = {"total": max(total - sum(row["total"] for row in table.values()), 0.0)}
    return table


def profile(preset: str, frames: int, batch: int, backend: str, repeats: int) -> dict:
    """Median per-stage / per-part seconds of ``repeats`` no-grad forwards of a freshly built ``preset``."""
    import torch

    from aum.models import create_model
    from aum.models.dass import halve
    torch.manual_seed(0)
    model = create_model(preset, scan_backend=backend).eval()
    x = torch.randn(batch, frames, 128)
    timer = StageTimer(model)
    runs, totals = [], []
    try:
        with torch.no_grad():
            for k in range(repeats + 1):                        # the first is the warm-up
                timer.seconds.clear()
                t0 = time.perf_counter()
                model(x)
                if k:
                    totals.append(time.perf_counter() - t0)
                    runs.append(split(timer.seconds, totals[-1], len(model.layers)))
    finally:
        timer.close()
    table = {section: {part: statistics.median(run[section][part] for run in runs) for part in runs[0][section]}
             for section in runs[0]}
    shapes = {}
    for i, (dim, depth) in enumerate(zip(model.config.dims, model.config.depths)):
        gh, gw = halve(model.config.num_mel_bins, 2 + i), halve(frames, 2 + i)    # stem: 2 halvings, +1 a stage
        shapes[f"stage{i}"] = {"height": gh, "width": gw, "positions": gh * gw, "scan_channels": 4 * dim,
                               "blocks": depth}
    return {"preset": preset, "scan": backend, "frames": frames, "batch": batch, "repeats": repeats,
            "forward_seconds": statistics.median(totals), "all_forward_seconds": totals, "sections": table,
            "shapes": shapes}


def show(record: dict) -> None:
    """Print one profile as a table: seconds per part, the stage's share of the forward, the scan's share."""
    total = record["forward_seconds"]
    print(f"\n{record['preset']}, batch {record['batch']} x {record['frames']} frames, scan {record['scan']}: "
          f"forward {total:.3f} s (median of {record['repeats']}); milliseconds per part")
    print(f"{'section':8} {'grid':>7} {'L':>6} {'4C':>5} " + " ".join(f"{p:>7}" for p in PARTS)
          + f" {'total':>7} {'share':>6} {'scan%':>6}")
    scan = 0.0
    for section, row in record["sections"].items():
        shape = record["shapes"].get(section)
        dims = (f"{shape['height']:>3}x{shape['width']:<3} {shape['positions']:6d} {shape['scan_channels']:5d}"
                if shape else f"{'':7} {'':6} {'':5}")
        parts = " ".join(f"{1000 * row[p]:7.1f}" if p in row else f"{'':7}" for p in PARTS)
        scan_share = f"{100 * row['scan'] / row['total']:5.0f}%" if "scan" in row and row["total"] > 0 else ""
        scan += row.get("scan", 0.0)
        print(f"{section:8} {dims} {parts} {1000 * row['total']:7.1f} {100 * row['total'] / total:5.0f}% "
              f"{scan_share:>6}")
    print(f"selective scan, all stages: {scan:.3f} s = {100 * scan / total:.0f}% of the forward")


def main(argv=None):
    """Profile each backend, print the tables, optionally write them as JSON."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--preset", default="dass_small")
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--backends", nargs="+", default=["fused", "torch"], choices=["fused", "torch"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--json", help="write the profiles to this file")
    args = p.parse_args(argv)
    if args.frames < 1 or args.batch < 1 or args.repeats < 1:
        p.error("--frames, --batch and --repeats must be >= 1")
    from aum.config import UnknownPresetError
    from aum.models.registry import preset_family
    try:
        if preset_family(args.preset) != "dass":
            p.error(f"--preset {args.preset!r} is not a DASS preset (aum.models.list_models('dass'))")
    except UnknownPresetError as err:
        p.error(err.args[0])
    import torch
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    if "fused" in args.backends:
        from aum.ops import scan_fused
        if scan_fused.library() is None:           # its warning says why
            args.backends = [b for b in args.backends if b != "fused"] or ["torch"]
    records = [profile(args.preset, args.frames, args.batch, backend, args.repeats) for backend in args.backends]
    for record in records:
        show(record)
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
