"""``aum-sweep``: run a whole sweep (pretraining, probes, fine-tuning, tables) with one command.

    aum-sweep SWEEP.yaml [key=value ...] [--executor auto|slurm|local] [--out DIR] [--dry-run] [--wait]
    aum-sweep status SWEEP_DIR [--wait] [--timeout S]
    aum-sweep tables SWEEP_DIR         # build the results tables now, from the records there are
    aum-sweep cancel SWEEP_DIR         # scancel every job of the sweep still in the queue

Submitting (and ``--dry-run``) checks everything first (unknown stages, cycles, missing checkpoints or manifests,
argument typos, every job's config built as the job will build it with its values checked -- objective, model
preset, mixer, class token, feature preset, metric, init, generated-benchmark settings -- and resources the
partition cannot satisfy), lists every problem with its stage, key and valid values, and exits 2 having submitted
nothing when anything is wrong. A job that fails anyway has its exception's message as its reason (``sweep.json``
with the local executor, ``aum-sweep status`` always). Submitting the same sweep again skips every finished job
(its done marker and result records exist) and resubmits only the rest.
See ``slurm/examples/tiny_sweep.yaml`` for a sweep file and :mod:`slurm.spec` for all its keys.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys

from slurm.launch import submit_sweep
from slurm.state import read_state
from slurm.spec import SweepError, load_sweep
from slurm.status import build_tables, format_status, job_states, squeue_states, wait_sweep

__all__ = ["main"]


def _submit(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aum-sweep", description=__doc__.split("\n\n")[0])
    p.add_argument("sweep", help="sweep file (YAML)")
    p.add_argument("overrides", nargs="*", help="key=value changes to the sweep file (e.g. out_dir=runs/x)")
    p.add_argument("--executor", choices=("auto", "slurm", "local"), default="auto",
                   help="default: the sweep file's executor (auto: SLURM when available)")
    p.add_argument("--out", help="sweep folder (overrides out_dir)")
    p.add_argument("--dry-run", action="store_true", help="check and list the jobs, submit nothing")
    p.add_argument("--wait", action="store_true", help="SLURM: wait until every job has finished")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    args = p.parse_intermixed_args(argv)
    bad = [o for o in args.overrides if "=" not in o]
    if bad:
        p.error(f"expected key=value overrides, got {bad}")
    sweep = load_sweep(args.sweep, args.overrides, out_dir=args.out)
    state = submit_sweep(sweep, args.executor, dry_run=args.dry_run)
    if args.dry_run:
        return 0
    if args.wait and state["executor"] == "slurm":
        wait_sweep(sweep.out_dir, args.timeout, say=print)
    states = job_states(read_state(sweep.out_dir))
    print(format_status(read_state(sweep.out_dir), states))
    bad_states = [n for n, s in states.items() if s["state"] in ("FAILED", "CANCELLED", "LOST", "TIMEOUT")]
    return 1 if bad_states else 0


def _status(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aum-sweep status", description="state and log of every job of a sweep")
    p.add_argument("sweep_dir")
    p.add_argument("--wait", action="store_true", help="wait until every job has finished")
    p.add_argument("--timeout", type=float, help="with --wait: give up after this many seconds")
    p.add_argument("--json", action="store_true", help="print the states as JSON")
    args = p.parse_args(argv)
    states = wait_sweep(args.sweep_dir, args.timeout) if args.wait else job_states(read_state(args.sweep_dir))
    if args.json:
        print(json.dumps(states, indent=2))
    else:
        print(format_status(read_state(args.sweep_dir), states))
    return 0


def _tables(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aum-sweep tables", description="build the results tables of a sweep now")
    p.add_argument("sweep_dir")
    args = p.parse_args(argv)
    print(f"tables in {build_tables(args.sweep_dir)}")
    return 0


def _cancel(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="aum-sweep cancel", description="scancel the sweep's queued jobs")
    p.add_argument("sweep_dir")
    args = p.parse_args(argv)
    state = read_state(args.sweep_dir)
    queued = squeue_states()
    ids = [str(e["job_id"]) for e in state["jobs"].values() if str(e.get("job_id")) in queued]
    if ids:
        subprocess.run(["scancel", *ids], check=True)
    print(f"cancelled {len(ids)} job(s): {' '.join(ids) or '-'}")
    return 0


COMMANDS = {"status": _status, "tables": _tables, "cancel": _cancel, "submit": _submit}


def main(argv=None) -> int:
    """Entry point of ``aum-sweep`` (``python -m slurm``); returns the exit status."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(__doc__)
        return 0
    command = COMMANDS.get(argv[0])
    try:
        return command(argv[1:]) if command else _submit(argv)
    except SweepError as e:
        print(f"aum-sweep: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
