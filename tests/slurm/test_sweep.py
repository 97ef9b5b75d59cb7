"""aum-sweep against a REAL SLURM cluster (slurm/local_cluster.sh) and against submitit's local executor.

The end-to-end test submits a tiny sweep (tiny encoder, generated data, two benchmarks, two seeds: pretrain with
DDP over two tasks -> probe + fine-tune -> tables), interrupts the running pretraining job once it has a
checkpoint (SLURM: ``scontrol requeue``; local: submitit's pre-emption signal USR2 to rank 0) and checks that it
resumed from that checkpoint, that every record and the tables exist, and that re-submitting the finished sweep
runs nothing. The SLURM variants skip when
sbatch/sinfo are missing or slurmctld does not answer; the local ones always run.
"""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from eval.records import read_records
from slurm.cli import main as sweep_main
from slurm.data import make_synth_benchmark
from slurm.launch import submit_sweep
from slurm.state import read_state
from slurm.resources import parse_slurm_time, slurm_available
from slurm.spec import SweepError, load_sweep
from slurm.status import job_states, squeue_states, wait_sweep

HAVE_SLURM = slurm_available()
NO_SLURM = "no SLURM here (sbatch/sinfo missing or slurmctld not answering): run `sudo slurm/local_cluster.sh start`"
EXECUTORS = [pytest.param("local", id="local"),
             pytest.param("slurm", id="slurm",
                          marks=[pytest.mark.slurm, pytest.mark.skipif(not HAVE_SLURM, reason=NO_SLURM)])]
PRETRAIN_STEPS = 24
TASKS = 2 if (os.cpu_count() or 1) >= 2 else 1          # DDP ranks of the pretraining job (CPU processes)

TINY = f"""
name: tiny
executor: auto
local_parallel: 2
resources:
  default: {{time_min: 20, gpus_per_node: 0, cpus_per_task: 1, mem_gb: 1}}
benchmarks:
  synth_a: {{generate: {{clips: 28, duration: 1.0, seed: 0, frames: 128}}}}
  synth_b: {{generate: {{clips: 28, duration: 1.25, seed: 7000, frames: 128}}}}
inits:
  scratch: {{preset: tiny, depth: 2}}
stages:
  pretrain:
    kind: pretrain
    args: {{model.depth: 2, model.embed_dim: 64, data.crop_frames: 128, data.synth_clips: 64,
            engine.max_steps: {PRETRAIN_STEPS}, engine.batch_size: 2, engine.warmup_steps: 1, engine.ckpt_every: 2,
            engine.keep_last: 0, engine.log_every: 1, engine.image_every: 0}}
    grid: {{objective.name: [ssast]}}
    resources: {{tasks_per_node: {TASKS}}}      # DDP over CPU processes (one per GPU on a GPU node)
  probe:
    kind: probe
    encoders: [pretrain, scratch]
    benchmarks: [synth_a, synth_b]
    seeds: [0, 1]
    args: {{batch-size: 16, c-grid: [1.0]}}
  finetune:
    kind: finetune
    encoders: [pretrain]
    benchmarks: [synth_a, synth_b]
    seeds: [0]
    args: {{run.max_steps: 2, run.log_every: 1, run.check_files: false, recipe.batch_size: 4}}
"""


def sweep_file(tmp_path: Path, text: str = TINY, **replace) -> Path:
    """Write a sweep file (``TINY`` with ``old=new`` text replacements) and return its path."""
    for old, new in replace.items():
        assert old in text, old
        text = text.replace(old, new)
    path = tmp_path / "sweep.yaml"
    path.write_text(text)
    return path


def load(tmp_path: Path, text: str = TINY, overrides=(), **replace):
    return load_sweep(sweep_file(tmp_path, text, **replace), overrides, out_dir=str(tmp_path / "out"))


# ------------------------------------------------------------------------------------- expansion and errors

def test_expansion_names_dependencies_and_argv(tmp_path):
    sweep = load(tmp_path)
    names = [j.name for j in sweep.jobs]
    assert names[0] == "pretrain/ssast" and names[-1] == "tables"
    assert len(names) == 1 + 8 + 2 + 1
    probe = sweep.job("probe/ssast/synth_b-seed1")
    assert probe.depends_on == ["pretrain/ssast"]
    assert "--checkpoint" in probe.argv and probe.argv[probe.argv.index("--init") + 1] == "ssl"
    assert probe.argv[probe.argv.index("--seed") + 1] == "1" and "--folds" in probe.argv
    scratch = sweep.job("probe/scratch/synth_a-seed0")
    assert scratch.depends_on == [] and scratch.argv[scratch.argv.index("--random") + 1] == "tiny"
    ft = sweep.job("finetune/ssast/synth_a-seed0")
    assert ft.argv[2:4] == ["--init", "ssl"] and f"run.out={ft.out_dir}" in ft.argv
    assert set(sweep.job("tables").depends_on) == set(names[:-1])
    assert sweep.job("pretrain/ssast").resources.cpus_per_task == 1


def test_grid_is_a_product_and_labels_are_unique(tmp_path):
    sweep = load(tmp_path, **{"grid: {objective.name: [ssast]}":
                              "grid: {objective.name: [ssast, mae], engine.lr: [1.0e-4, 2.0e-4]}"})
    pre = [j for j in sweep.jobs if j.kind == "pretrain"]
    assert sorted(j.name for j in pre) == ["pretrain/mae-lr0.0001", "pretrain/mae-lr0.0002",
                                           "pretrain/ssast-lr0.0001", "pretrain/ssast-lr0.0002"]
    assert len({j.out_dir for j in sweep.jobs}) == len(sweep.jobs)
    assert len([j for j in sweep.jobs if j.kind == "probe"]) == (4 + 1) * 2 * 2


@pytest.mark.parametrize("replace,message", [
    ({"encoders: [pretrain, scratch]": "encoders: [pretrian, scratch]"}, "did you mean 'pretrain'"),
    ({"    seeds: [0]\n": "    seeds: [0]\n    after: [probe]\n",
      "    seeds: [0, 1]\n": "    seeds: [0, 1]\n    after: [finetune]\n"}, "cycle: probe -> finetune -> probe"),
    ({"scratch: {preset: tiny, depth: 2}": "scratch: {preset: tiny, depth: 2}\n  imagenet: {checkpoint: /nope/vim.pth}",
      "encoders: [pretrain, scratch]": "encoders: [pretrain, imagenet]"}, "missing checkpoint path"),
    ({"encoders: [pretrain]": "encoders: [probe]"}, "produces no encoder"),
    ({"benchmarks: [synth_a, synth_b]\n    seeds: [0]": "benchmarks: [synth_c]\n    seeds: [0]"}, "unknown benchmark"),
    ({"local_parallel: 2": "local_paralel: 2"}, "did you mean 'local_parallel'"),
    ({"cpus_per_task: 1, mem_gb: 1": "cpu_per_task: 1, mem_gb: 1"}, "unknown resource 'cpu_per_task'"),
])
def test_bad_sweep_files_are_errors(tmp_path, replace, message):
    with pytest.raises(SweepError, match=re.escape(message)):
        load(tmp_path, **replace)


def _assert_nothing_submitted(tmp_path, before: set):
    assert not (tmp_path / "out").exists()
    assert set(squeue_states()) - before == set()


@pytest.mark.parametrize("replace,message", [
    ({"engine.warmup_steps: 1": "engine.warmup_step: 1"}, "unknown config key 'engine.warmup_step'"),
    ({"batch-size: 16": "batchsize: 16"}, "eval.probe rejects its arguments"),
    ({"run.max_steps: 2": "run.max_step: 2"}, "run.max_step"),
])
def test_argument_typos_fail_before_submission(tmp_path, replace, message):
    before = set(squeue_states())
    with pytest.raises(SweepError, match=re.escape(message)):
        submit_sweep(load(tmp_path, **replace), "local")
    _assert_nothing_submitted(tmp_path, before)


def test_local_executor_refuses_what_one_machine_cannot_do(tmp_path):
    sweep = load(tmp_path, **{f"resources: {{tasks_per_node: {TASKS}}}": "resources: {nodes: 2}"})
    with pytest.raises(SweepError, match="local executor runs on one node"):
        submit_sweep(sweep, "local")
    assert not (tmp_path / "out").exists()


@pytest.mark.slurm
@pytest.mark.skipif(not HAVE_SLURM, reason=NO_SLURM)
@pytest.mark.parametrize("resources,message", [
    ("cpus_per_task: 4096", "cannot satisfy"),
    ("mem_gb: 100000", "cannot satisfy"),
    ("gpus_per_node: 8", "cannot satisfy"),
    ("constraint: a100", "cannot satisfy"),
    ("partition: no_such_partition", "does not exist"),
])
def test_resources_the_partition_cannot_satisfy_fail_before_submission(tmp_path, resources, message):
    before = set(squeue_states())
    sweep = load(tmp_path, **{f"resources: {{tasks_per_node: {TASKS}}}": f"resources: {{{resources}}}"})
    with pytest.raises(SweepError, match=message):
        submit_sweep(sweep, "slurm")
    _assert_nothing_submitted(tmp_path, before)


def test_slurm_time_strings():
    assert [parse_slurm_time(t) for t in ("30", "30:00", "1:00:00", "2-00:00:00", "1-2", "0:30")] == \
        [30, 30, 60, 2880, 1560, 1]
    assert parse_slurm_time("infinite") is None


def test_generated_benchmark_is_balanced_and_loads_for_finetuning(tmp_path):
    from eval.ft_data import load_manifest
    from eval.registry import load_benchmark
    manifest = make_synth_benchmark(tmp_path / "b", "synth_x", clips=28, duration=0.5, seed=3, folds=4)
    entries, classes = load_manifest(manifest)
    assert len(entries) == 28 and len(classes) == 7
    test = [e for e in entries if e["split"] == "test"]
    assert sorted(e["label"] for e in test) == sorted(classes)
    assert load_benchmark(str(tmp_path / "b" / "benchmark.yaml")).benchmark.num_classes == 7
    stamp = (tmp_path / "b" / "manifest.csv").stat().st_mtime_ns
    make_synth_benchmark(tmp_path / "b", "synth_x", clips=28, duration=0.5, seed=3, folds=4)
    assert (tmp_path / "b" / "manifest.csv").stat().st_mtime_ns == stamp      # same settings: kept


def test_without_slurm_the_local_executor_is_chosen(monkeypatch, tmp_path):
    from slurm.launch import choose_executor
    monkeypatch.setenv("PATH", str(tmp_path))            # no sbatch, sinfo or srun
    assert choose_executor("auto") == "local"
    with pytest.raises(SweepError, match="SLURM is not available"):
        choose_executor("slurm")


def test_preemption_signal_reaches_the_running_engine():
    from slurm.jobs import PREEMPT_SIGNAL, _SignalBridge
    got = []

    class Engine:
        def stop(self, signum, frame):
            got.append(signum)

    old_usr1 = signal.signal(signal.SIGUSR1, Engine().stop)
    bridge = _SignalBridge()
    bridge.install()
    try:
        os.kill(os.getpid(), PREEMPT_SIGNAL)
        time.sleep(0.05)
    finally:
        bridge.uninstall()
        signal.signal(signal.SIGUSR1, old_usr1)
    assert got == [signal.SIGUSR1] and bridge.received == PREEMPT_SIGNAL


def test_job_callable_writes_its_done_marker_and_skips_when_done(tmp_path):
    import dataclasses
    from slurm.jobs import SweepJob, is_done
    sweep = load(tmp_path, **{f"engine.max_steps: {PRETRAIN_STEPS}": "engine.max_steps: 2"})
    spec = dataclasses.asdict(sweep.job("pretrain/ssast"))
    assert not is_done(spec)
    result = SweepJob(spec)()              # in-process, outside submitit: a world of one
    assert result["summary"]["stopped_by"] == "done" and is_done(spec)
    assert json.loads((Path(spec["out_dir"]) / "done.json").read_text())["kind"] == "pretrain"
    assert SweepJob(spec)() == {"name": "pretrain/ssast", "skipped": True}
    Path(spec["encoder"]).unlink()
    assert not is_done(spec)               # its product is gone: it runs again


def test_job_whose_entry_point_exits_3_was_stopped_and_resumes(tmp_path, monkeypatch):
    import dataclasses
    import slurm.jobs
    from slurm.jobs import JobInterrupted, SweepJob, is_done
    spec = dataclasses.asdict(load(tmp_path).job("pretrain/ssast"))
    monkeypatch.setattr(slurm.jobs, "entry_point", lambda kind: lambda argv: 3)     # aum.cli.EXIT_STOPPED
    with pytest.raises(JobInterrupted, match="stopped by a signal"):
        SweepJob(spec)()
    assert not is_done(spec)


# ------------------------------------------------------------------------------------------- end to end

def _wait_for(predicate, timeout: float, what: str, poll: float = 0.1):
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        value = predicate()
        if value:
            return value
        time.sleep(poll)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def _slurm_requeue(job_id: str, out_dir: Path) -> None:
    """``scontrol requeue`` a running job and release it at once (a requeued job is held ~2 min by default);
    returns when the job has started again."""
    subprocess.run(["scontrol", "requeue", job_id], check=True)

    def restarted():
        st = squeue_states().get(job_id)
        if st and st[0] == "PENDING" and st[1] == "BeginTime":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
        return len(_starts(out_dir)) >= 2

    _wait_for(restarted, 180, f"job {job_id} to run again after the requeue", poll=0.5)


def _starts(out_dir: Path) -> list:
    try:
        return json.loads((out_dir / "job.json").read_text())["starts"]
    except (OSError, ValueError, KeyError):
        return []


@pytest.mark.ddp
@pytest.mark.subprocess
@pytest.mark.slow
@pytest.mark.parametrize("executor", EXECUTORS)
def test_sweep_end_to_end_with_requeue_and_resubmission(tmp_path, executor):
    sweep = load(tmp_path)
    out = Path(sweep.out_dir)
    pre = out / "pretrain" / "ssast"
    first_ckpt = pre / "checkpoints" / "step_00000002.pt"
    t0 = time.monotonic()
    if executor == "slurm":
        state = submit_sweep(sweep, "slurm")
        job_id = state["jobs"]["pretrain/ssast"]["job_id"]
        _wait_for(first_ckpt.exists, 240, "the first pretraining checkpoint")
        _slurm_requeue(job_id, pre)
        states = wait_sweep(out, timeout_s=600, poll_s=2)
    else:
        result: dict = {}
        launcher = threading.Thread(target=lambda: result.update(state=submit_sweep(sweep, "local")), daemon=True)
        launcher.start()
        _wait_for(first_ckpt.exists, 240, "the first pretraining checkpoint")
        os.kill(_starts(pre)[-1]["pid"], signal.SIGUSR2)     # what SLURM sends before the time limit
        launcher.join(600)
        assert not launcher.is_alive() and "state" in result
        states = job_states(read_state(out))
    elapsed = time.monotonic() - t0
    assert {n: s["state"] for n, s in states.items() if s["state"] != "DONE"} == {}, states

    # the interrupted pretraining resumed from its checkpoint instead of restarting
    starts = _starts(pre)
    assert len(starts) == 2, starts
    log_text = (pre / "log.txt").read_text()
    resumed = [int(m) for m in re.findall(r"resumed from \S+ at step (\d+)", log_text)]
    assert len(resumed) == 1 and 2 <= resumed[0] < PRETRAIN_STEPS, log_text[-2000:]
    steps = [json.loads(line)["step"] for line in (pre / "metrics.jsonl").read_text().splitlines()]
    assert steps == list(range(1, PRETRAIN_STEPS + 1))
    assert (pre / "encoder.safetensors").is_file()
    assert len(re.findall(rf"training \S+ parameters on {TASKS} x cpu", log_text)) == 2     # both runs, DDP

    # every record, and the tables built from them
    records = read_records(out / "records")
    probes = [r for r in records if r.mode == "probe"]
    finetunes = [r for r in records if r.mode == "finetune"]
    assert len(probes) == 8 and len(finetunes) == 2
    assert {(r.init, r.model) for r in probes} == {("ssl", "ssast"), ("scratch", "tiny-d2")}
    assert {(r.benchmark, r.seed) for r in probes} == {(b, s) for b in ("synth_a", "synth_b") for s in (0, 1)}
    assert {(r.benchmark, r.init) for r in finetunes} == {("synth_a", "ssl"), ("synth_b", "ssl")}
    assert {r.model for r in finetunes} <= {"ssast", "tiny-d2"}     # "ssast" where eval.finetune takes run.model_name
    assert all(0.0 <= r.value <= 1.0 for r in records)
    summary = (out / "tables" / "summary.csv").read_text()
    assert "probe" in summary and "finetune" in summary and "synth_b" in summary
    assert (out / "tables" / "probe.md").is_file() and (out / "tables" / "finetune.md").is_file()

    # status names each job's state and log
    status = subprocess.run([sys.executable, "-m", "slurm", "status", str(out)], capture_output=True, text=True)
    assert status.returncode == 0 and "total: 12 DONE" in status.stdout
    assert str(out / "logs") in status.stdout

    # re-submitting the finished sweep runs nothing
    logs_before = sorted(p.name for p in (out / "logs").iterdir())
    queued_before = set(squeue_states())
    again = submit_sweep(load(tmp_path), executor)
    assert {e["status"] for e in again["jobs"].values()} == {"done"}
    assert sorted(p.name for p in (out / "logs").iterdir()) == logs_before
    assert set(squeue_states()) - queued_before == set()
    assert sweep_main(["status", str(out)]) == 0
    print(f"{executor}: sweep of {len(states)} jobs with one requeue finished in {elapsed:.0f} s")
