"""Submitting a sweep: every job at once on SLURM (with ``afterok`` dependencies), or in dependency order with
submitit's local executor. Both run the same :class:`slurm.jobs.SweepJob` and write the same files.

The sweep folder holds ``sweep.yaml`` (the resolved sweep file), ``sweep.json`` (each job's spec, job id, log
and launcher status; what ``aum-sweep status`` reads), ``logs/`` (submitit: ``<id>_<task>_log.out|err``), one
folder per job, ``records/`` (result records) and ``tables/``.
"""
from __future__ import annotations

import dataclasses
import tempfile
import time
from pathlib import Path

import submitit
from omegaconf import OmegaConf

from slurm.data import make_synth_benchmark, synth_benchmark_file
from slurm.jobs import SweepJob, is_done, read_done
from slurm.kinds import check_argv
from slurm.resources import ResourceError, check_local, check_partition, partition_info, slurm_available, \
    submitit_parameters
from slurm.spec import Sweep, SweepError
from slurm.state import read_state, write_state
from slurm.status import failure_reason, squeue_states

__all__ = ["choose_executor", "check_sweep", "submit_sweep"]

def choose_executor(requested: str = "auto") -> str:
    """``slurm`` or ``local``: ``auto`` means SLURM when its commands exist and the controller answers."""
    if requested == "local":
        return "local"
    if slurm_available():
        return "slurm"
    if requested == "slurm":
        raise SweepError("--executor slurm, but SLURM is not available here (sbatch/sinfo missing or "
                         "slurmctld not answering); try slurm/local_cluster.sh start, or --executor local")
    return "local"


def check_sweep(sweep: Sweep, executor: str) -> None:
    """Everything that can be checked before submission: each job's command line is parsed and its config built
    and checked as its entry point would (:func:`slurm.kinds.check_argv`: objective, presets, mixer, benchmark,
    init, ...; no model built, no audio read), and its resources fit the partition (SLURM) or this machine
    (local). Raises one :class:`SweepError` listing every problem, each naming its stage (and the first job
    that has it)."""
    partitions: dict = {}
    problems: dict[str, list[str]] = {}     # message -> the jobs that have it
    with tempfile.TemporaryDirectory() as tmp:
        stand_in = {}       # generated benchmarks' files are written at submission: check against a copy
        for name, b in sweep.benchmarks.items():
            if "generate" in b and not Path(b["recipe"]).is_file():
                stand_in[b["recipe"]] = str(Path(tmp) / f"{name}.yaml")
                OmegaConf.save(OmegaConf.create(synth_benchmark_file(name, b["generate"].get("frames", 128))),
                               stand_in[b["recipe"]])
        for job in sweep.jobs:
            try:
                check_argv(job.kind, [stand_in.get(w, w) for w in job.argv], f"stages.{job.stage}")
            except ValueError as e:
                problems.setdefault(str(e), []).append(job.name)
    for job in sweep.jobs:
        try:
            if executor == "slurm":
                if job.resources.partition not in partitions:
                    partitions[job.resources.partition] = partition_info(job.resources.partition)
                check_partition(job.resources, partitions[job.resources.partition], job.ddp, job.name)
            else:
                check_local(job.resources, job.ddp, job.name)
        except ResourceError as e:
            problems.setdefault(str(e), []).append(job.name)
    if problems:
        lines = [msg if msg.startswith(names[0]) else
                 f"{msg} (job {names[0]}" + (f" and {len(names) - 1} more)" if len(names) > 1 else ")")
                 for msg, names in problems.items()]
        shown = lines[:20] + ([f"... and {len(lines) - 20} more"] if len(lines) > 20 else [])
        raise SweepError(lines[0] if len(lines) == 1 else
                         f"{len(lines)} problems, nothing submitted:\n  - " + "\n  - ".join(shown))


def _active_slurm_ids() -> set[str]:
    return set(squeue_states())


def _executor(folder: Path, cluster: str, job, sweep_name: str, dependency: str | None = None) \
        -> submitit.AutoExecutor:
    """A fresh executor (parameters do not leak between jobs) set up for ``job`` (a JobSpec)."""
    ex = submitit.AutoExecutor(folder=folder, cluster=cluster, slurm_max_num_timeout=job.resources.max_timeouts,
                               local_max_num_timeout=job.resources.max_timeouts)
    ex.update_parameters(**submitit_parameters(job.resources, job.ddp, f"{sweep_name}:{job.name}"[:120], dependency))
    return ex


def submit_sweep(sweep: Sweep, executor: str = "auto", dry_run: bool = False, say=print) -> dict:
    """Check ``sweep``, then submit every job that is not done (see :func:`slurm.jobs.is_done`); returns the
    state written to ``sweep.json``. SLURM: returns once all are queued. Local: runs them all (up to
    ``local_parallel`` at a time) and returns when they have finished. Jobs already queued by an earlier
    submission and still in the queue are kept, not submitted again."""
    cluster = choose_executor(executor if executor != "auto" else sweep.executor)
    check_sweep(sweep, cluster)
    root = Path(sweep.out_dir)
    specs = {j.name: dataclasses.asdict(j) for j in sweep.jobs}
    done = {n for n, s in specs.items() if s["kind"] != "tables" and is_done(s)}
    todo = [j.name for j in sweep.jobs if j.name not in done]
    if todo == ["tables"] and read_done(specs["tables"]) is not None:
        todo = []
    say(f"sweep {sweep.name}: {len(sweep.jobs)} jobs, {len(sweep.jobs) - len(todo)} done, {len(todo)} to run "
        f"({cluster} executor) in {root}")
    if dry_run:
        for name in todo:
            say(f"  would run {name}: {specs[name]['kind']} {' '.join(specs[name]['argv'])}")
        return {"jobs": {n: {"status": "done" if n not in todo else "planned"} for n in specs}}
    root.mkdir(parents=True, exist_ok=True)
    for name, b in sweep.benchmarks.items():
        if "generate" in b:
            make_synth_benchmark(Path(b["manifest"]).parent, name, **b["generate"])
    OmegaConf.save(OmegaConf.create(sweep.config), root / "sweep.yaml")
    try:
        old = read_state(root)["jobs"]
    except (SweepError, ValueError, KeyError):
        old = {}
    state = {"name": sweep.name, "source": sweep.source, "executor": cluster, "submitted": time.strftime("%FT%T"),
             "jobs": {n: {"spec": s, "status": "done" if n not in todo else "pending", "job_id": None, "log": None}
                      for n, s in specs.items()}}
    for name in set(specs) - set(todo):
        if name in old:
            state["jobs"][name].update(job_id=old[name].get("job_id"), log=old[name].get("log"))
    if cluster == "slurm":
        _submit_slurm(sweep, state, todo, old, root, say)
    else:
        _run_local(sweep, state, todo, root, say)
    write_state(root, state)
    return state


def _submit_slurm(sweep: Sweep, state: dict, todo: list, old: dict, root: Path, say) -> None:
    active = _active_slurm_ids() if old else set()
    jobs = state["jobs"]
    for name in todo:
        spec, entry = jobs[name]["spec"], jobs[name]
        prev = old.get(name, {})
        if prev.get("job_id") in active and prev.get("executor", "slurm") == "slurm":
            entry.update(status="queued", job_id=prev["job_id"], log=prev.get("log"))
            say(f"  {name}: still in the queue as job {prev['job_id']}")
            continue
        deps = [jobs[d]["job_id"] for d in spec["depends_on"] if jobs[d]["status"] != "done"]
        if any(d is None for d in deps):
            raise SweepError(f"{name}: a dependency has no job id (internal error)")
        sjob = _executor(root / "logs", "slurm", sweep.job(name), sweep.name,
                         "afterok:" + ":".join(deps) if deps else None).submit(SweepJob(spec))
        entry.update(status="submitted", job_id=sjob.job_id, log=str(sjob.paths.stdout), executor="slurm")
        write_state(root, state)
        say(f"  {name}: job {sjob.job_id}" + (f" after {','.join(deps)}" if deps else ""))


def _run_local(sweep: Sweep, state: dict, todo: list, root: Path, say) -> None:
    jobs, running, waiting = state["jobs"], {}, list(todo)
    while waiting or running:
        for name, sjob in list(running.items()):
            if not sjob.done():
                continue
            del running[name]
            try:
                sjob.results()          # every task; raises the first error
                ok = is_done(jobs[name]["spec"]) or jobs[name]["spec"]["kind"] == "tables"
                jobs[name]["status"] = "done" if ok else "failed"
            except Exception as e:  # noqa: BLE001 - the job's own error, reported and kept going
                reason = failure_reason(jobs[name]["log"]) or (str(e).strip().splitlines() or [repr(e)])[0][:500]
                jobs[name].update(status="failed", error=reason)
            if jobs[name]["status"] == "failed" and not jobs[name].get("error"):
                jobs[name]["error"] = "ended without its done marker"
            error = f": {jobs[name]['error']}" if jobs[name]["status"] == "failed" else ""
            say(f"  {name}: {jobs[name]['status']}{error} (log {jobs[name]['log']})")
            write_state(root, state)
        for name in list(waiting):
            if len(running) >= sweep.local_parallel:
                break
            deps = [jobs[d]["status"] for d in jobs[name]["spec"]["depends_on"]]
            failed = [d for d in jobs[name]["spec"]["depends_on"] if jobs[d]["status"] in ("failed", "cancelled")]
            if failed:
                jobs[name].update(status="cancelled", error=f"dependency {failed[0]} {jobs[failed[0]]['status']}")
                waiting.remove(name)
                say(f"  {name}: cancelled ({jobs[name]['error']})")
            elif all(s == "done" for s in deps):
                spec = jobs[name]["spec"]
                sjob = _executor(root / "logs", "local", sweep.job(name), sweep.name).submit(SweepJob(spec))
                running[name] = sjob
                waiting.remove(name)
                jobs[name].update(status="running", job_id=sjob.job_id, log=str(sjob.paths.stdout), executor="local")
                say(f"  {name}: started (pid {sjob.job_id})")
                write_state(root, state)
        time.sleep(0.5)
