"""Encoder speed and memory on this machine (a benchmark script, not a test).

For each preset (AuM ``tiny`` / ``small`` / ``base`` or DASS ``dass_*``, side by side) and each CPU scan
backend (``fused``: the C kernel, ``torch``: pure PyTorch): forward time and peak memory at ``--frames``
frames and ``--batch`` clips, without gradients, and the training step (forward + backward) with its peak
memory; and the same two with the selective scan replaced by an identity
(``y = u``; for DASS the four-direction scan of every SS2D, see ``benchmarks/dass_profile.py`` for its
per-stage split). Ratios are to the identity-scan forward (``fwd/id``; targets with the fused scan: <= 1.6 for
``tiny``, <= 1.25 for ``small``) and to the identity-scan training step (``train/id``; target <= 1.5 for
``small``). Each measurement runs in a fresh subprocess so that peak RSS is its own; all in one run.

    python benchmarks/encoder_speed.py [--presets tiny small] [--backends fused torch] [--frames 1024]
                                       [--batch 4] [--json out.json]
    python benchmarks/encoder_speed.py --presets dass_small small      # DASS beside AuM small
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
    import aum.models.dass as dass
    import aum.modules.mixer as mixer
    from aum.models.registry import create_model, preset_family
    preset, mixer_dir, frames, batch, mode, repeats, threads, backend = sys.argv[1:9]
    frames, batch, repeats = int(frames), int(batch), int(repeats)
    if int(threads) > 0:
        torch.set_num_threads(int(threads))
    torch.manual_seed(0)
    family = preset_family(preset)
    model = create_model(preset, scan_backend=backend, **({} if family == "dass" else {"mixer": mixer_dir}))
    x = torch.randn(batch, frames, 128)
    if mode.startswith("identity"):
        mixer.selective_scan = dass.selective_scan = lambda u, *args, **kwargs: u
    def step():
        if mode.endswith("train"):
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


def measure(preset, mixer_dir, frames, batch, mode, repeats, threads, backend="torch"):
    """Run one configuration in a fresh interpreter and return its JSON record (``mode``: ``full``,
    ``train``, ``identity`` or ``identity-train``)."""
    out = subprocess.run([sys.executable, "-c", WORKER, preset, mixer_dir, str(frames), str(batch), mode,
                          str(repeats), str(threads), backend], capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{preset}/{backend}/{mode} failed:\n{out.stderr}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv=None):
    """Print the forward / training figures per preset and backend, with the identity-scan ratios."""
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", nargs="+", default=["tiny", "small"],
                   help="AuM and/or DASS presets (aum.models.list_models('all'))")
    p.add_argument("--mixer", default=None, help="mixer for every AuM preset (default: v1 tiny, v2 small; "
                                                 "DASS has its own SS2D mixer)")
    p.add_argument("--backends", nargs="+", default=["fused", "torch"], choices=["fused", "torch"])
    p.add_argument("--frames", type=int, default=1024)
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--no-train", action="store_true", help="skip the forward+backward measurements")
    p.add_argument("--json", help="write all records to this file")
    args = p.parse_args(argv)
    from aum.config import UnknownPresetError
    from aum.models.registry import preset_family
    try:
        families = {preset: preset_family(preset) for preset in args.presets}
    except UnknownPresetError as err:
        p.error(err.args[0])
    if "fused" in args.backends:
        from aum.ops import scan_fused
        if scan_fused.library() is None:           # its warning says why
            args.backends = [b for b in args.backends if b != "fused"] or ["torch"]
    default_mixer = {"tiny": "v1", "small": "v2", "base": "v1"}
    nan = float("nan")
    records = []
    print(f"batch {args.batch} x {args.frames} frames; median of {args.repeats}; times in s, memory = peak RSS; "
          "ratios to the identity-scan forward (fwd/id) and training step (train/id)")
    print(f"{'preset':10} {'mixer':5} {'scan':8} {'forward':>8} {'fwd/id':>6} {'fwd MiB':>8} "
          f"{'train':>8} {'train/id':>8} {'train MiB':>9}")
    for preset in args.presets:
        mixer_dir = "ss2d" if families[preset] == "dass" else args.mixer or default_mixer.get(preset, "v1")
        modes = ["full"] + ([] if args.no_train else ["train"])

        def run(backend):
            return {mode: measure(preset, mixer_dir, args.frames, args.batch, mode, args.repeats, args.threads,
                                  backend) for mode in modes}

        identity = {"full": measure(preset, mixer_dir, args.frames, args.batch, "identity", args.repeats,
                                    args.threads)}
        if not args.no_train:
            identity["train"] = measure(preset, mixer_dir, args.frames, args.batch, "identity-train",
                                        args.repeats, args.threads)
        for backend, result in [("identity", identity)] + [(b, run(b)) for b in args.backends]:
            fwd, train = result["full"], result.get("train", {})
            fwd_ratio = fwd["seconds"] / identity["full"]["seconds"]
            train_ratio = train["seconds"] / identity["train"]["seconds"] if train else nan
            print(f"{preset:10} {mixer_dir:5} {backend:8} {fwd['seconds']:8.3f} {fwd_ratio:6.2f} "
                  f"{fwd['peak_rss_mib']:8.0f} {train.get('seconds', nan):8.3f} {train_ratio:8.2f} "
                  f"{train.get('peak_rss_mib', nan):9.0f}")
            records.append({"preset": preset, "family": families[preset], "mixer": mixer_dir, "scan": backend,
                            "frames": args.frames, "batch": args.batch, "forward_over_identity": fwd_ratio,
                            "train_over_identity_train": train_ratio, **result})
    if args.json:
        with open(args.json, "w") as fh:
            json.dump(records, fh, indent=2)
        print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
