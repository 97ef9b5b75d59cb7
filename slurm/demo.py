"""``python -m slurm.demo`` (what ``make demo`` runs): the project's main job on its built-in default.

It submits ``slurm/examples/demo.yaml`` (package data: an installed wheel runs it too) through the sweep
launcher (SLURM when a cluster answers, submitit's local executor otherwise): a tiny AuM is pretrained on
generated audio, then it and a randomly initialised twin are linear-probed on two generated labelled tasks;
finally the results tables are built. It prints what happened, the probe table, and where every output lives.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from slurm.launch import submit_sweep
from slurm.state import read_state
from slurm.spec import load_sweep
from slurm.status import TERMINAL, build_tables, format_status, job_states, wait_sweep

DEMO = Path(__file__).resolve().parent / "examples" / "demo.yaml"      # shipped inside the package


def main(argv=None) -> int:
    """Run the demo sweep end to end and explain its outputs; returns the exit status."""
    p = argparse.ArgumentParser(prog="python -m slurm.demo", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sweep", default=str(DEMO), help="sweep file (default: the packaged slurm/examples/demo.yaml)")
    p.add_argument("--out", help="output folder (default: the sweep file's out_dir, runs/demo)")
    p.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto")
    p.add_argument("overrides", nargs="*", help="key=value changes to the sweep file")
    args = p.parse_args(argv)
    t0 = time.monotonic()
    sweep = load_sweep(args.sweep, args.overrides, out_dir=args.out)
    out = Path(sweep.out_dir)
    print(f"aum demo: sweep '{sweep.name}' from {args.sweep} into {out}\n"
          "  1. pretrain a tiny AuM (MAE) on built-in generated audio\n"
          "  2. linear-probe it and a randomly initialised twin on two generated 7-class tasks (5 folds)\n"
          "  3. build the results tables\n", flush=True)
    state = submit_sweep(sweep, args.executor)
    if state["executor"] == "slurm":
        print("submitted to SLURM; waiting for the jobs ...", flush=True)
        wait_sweep(out, say=print)
    states = job_states(read_state(out))
    print(format_status(read_state(out), states))
    failed = [name for name, s in states.items() if s["state"] in TERMINAL and s["state"] not in ("DONE", "COMPLETED")]
    tables = build_tables(out)
    probe_md = tables / "probe.md"
    print(f"\nlinear-probe accuracy (%), mean +- std over folds [n]:\n")
    print(probe_md.read_text() if probe_md.exists() else "(no probe results: see the job logs above)")
    pretrain_dirs = sorted(p.parent for p in (out / "pretrain").glob("*/encoder.safetensors"))
    print(f"\nfinished in {time.monotonic() - t0:.0f} s. Where to look:")
    for d in pretrain_dirs:
        print(f"  {d}/encoder.safetensors   pretrained encoder (aum.checkpoint.load_checkpoint)")
        print(f"  {d}/images/                input / masked / reconstruction figures")
        print(f"  {d}/metrics.jsonl, tb/     training curves (tensorboard --logdir {d}/tb)")
    print(f"  {out}/records/                 one JSON record per probe run")
    print(f"  {tables}/                      probe.md / .csv / .tex / .png (bar chart), summary.csv")
    print(f"  aum-sweep status {out}          state and log of every job")
    if failed:
        print(f"\n{len(failed)} job(s) did not finish: {', '.join(failed)}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
