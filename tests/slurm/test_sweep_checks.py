"""aum-sweep's checks of every stage's config before anything is submitted (``--dry-run`` included), and the
reason a job that fails anyway records: its exception's message. Uses the tiny sweep of ``tests/slurm/test_sweep.py``;
the failing-job test runs on the local executor and, when one answers, on the SLURM cluster."""
from __future__ import annotations

import re
import subprocess
import sys

import pytest

from slurm.cli import main as sweep_main
from slurm.launch import submit_sweep
from slurm.state import read_state
from slurm.spec import SweepError
from slurm.status import job_states, squeue_states, wait_sweep
from test_sweep import EXECUTORS, TINY, _assert_nothing_submitted, load, sweep_file


@pytest.mark.parametrize("replace,message", [
    ({"grid: {objective.name: [ssast]}": "grid: {objective.name: [ssat]}"},
     "stages.pretrain: objective.name must be one of mae, ssast; got 'ssat' (job pretrain/ssat)"),
    ({"args: {model.depth: 2,": "args: {model.depth: 2, model.preset: huge,"},
     "stages.pretrain: model.preset must be one of base, small, tiny; got 'huge'"),
    ({"args: {model.depth: 2,": "args: {model.depth: 2, model.mixer: v3,"},
     "stages.pretrain: model.mixer must be one of none, v1, v2; got 'v3'"),
    ({"args: {model.depth: 2,": "args: {model.depth: 2, data.preset: audiosett,"},
     "stages.pretrain: data.preset: unknown feature preset 'audiosett'; valid presets: audioset,"),
    ({"run.max_steps: 2,": "run.max_steps: 2, model.mixer: bi,"},
     "stages.finetune: model.mixer must be one of none, v1, v2; got 'bi' (job finetune/ssast/synth_a-seed0 and 1 more)"),
    ({"batch-size: 16": "batch-size: 16, metric: map"},
     "stages.probe: --metric must be one of accuracy, mAP; got 'map' (job probe/ssast/synth_a-seed0 and 7 more)"),
    ({"scratch: {preset: tiny, depth: 2}": "scratch: {preset: tiniest, depth: 2}"},
     "inits.scratch.preset must be one of base, small, tiny; got 'tiniest'"),
    ({"args: {model.depth: 2,": "args: {model.depth: 2, model.preset: dass_tiny,"},
     "stages.pretrain: model.preset 'dass_tiny' is a DASS preset, but pretraining"),
    ({"scratch: {preset: tiny, depth: 2}": "scratch: {preset: dass_tiny, depth: 2}"},
     "inits.scratch.depth is an AuM option; inits.scratch.preset 'dass_tiny' is a DASS encoder"),
    ({"scratch: {preset: tiny, depth: 2}": "scratch: {init: scrach, preset: tiny}"},
     "inits.scratch: init must be one of ('scratch', 'imagenet', 'ssl', 'official'), got 'scrach'"),
    ({"clips: 28, duration: 1.25": "clips: 10, duration: 1.25"},
     "benchmarks.synth_b.generate: a generated benchmark needs folds >= 2 and clips >= 7 * max(2, folds)"),
])
def test_dry_run_rejects_unknown_values_in_any_stage(tmp_path, capsys, replace, message):
    """Values only the job would have rejected (at run time, after submission) fail the dry run: exit 2, the
    stage, the key and the valid values on stderr, nothing written."""
    path = sweep_file(tmp_path, **replace)
    assert sweep_main([str(path), "--dry-run", "--executor", "local", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert message in err and "would run" not in err
    assert not (tmp_path / "out").exists()


def test_unknown_benchmark_names_fail_before_submission(tmp_path):
    manifest = tmp_path / "manifest.csv"
    manifest.write_text("path,label\n")
    bench = "  synth_a: {generate: {clips: 28, duration: 1.0, seed: 0, frames: 128}}\n"
    with pytest.raises(SweepError, match=re.escape("benchmarks.esc.recipe: unknown benchmark 'esc5O' (registered: "
                                                   "audioset, audioset20k, epic_sounds, esc10, esc50,")):
        load(tmp_path, **{bench: f"{bench}  esc: {{manifest: {manifest}, recipe: esc5O}}\n"})
    sweep = load(tmp_path, **{bench: f"{bench}  mybench: {{manifest: {manifest}}}\n",       # recipe: the name
                              "benchmarks: [synth_a, synth_b]\n    seeds: [0]": "benchmarks: [mybench]\n    seeds: [0]"})
    with pytest.raises(SweepError, match=re.escape("stages.finetune: unknown benchmark 'mybench'; registered: ")):
        submit_sweep(sweep, "local", dry_run=True)
    assert not (tmp_path / "out").exists()


def test_every_bad_stage_is_reported_before_anything_is_submitted(tmp_path):
    before = set(squeue_states())
    sweep = load(tmp_path, **{"grid: {objective.name: [ssast]}": "grid: {objective.name: [ssast, byol]}",
                              "batch-size: 16": "batch-size: 16, preset: voxcelebb"})
    with pytest.raises(SweepError) as info:
        submit_sweep(sweep, "local")
    text = str(info.value)
    assert text.startswith("2 problems, nothing submitted")
    assert "stages.pretrain: objective.name must be one of mae, ssast; got 'byol' (job pretrain/byol)" in text
    assert "stages.probe: --preset: unknown feature preset 'voxcelebb'" in text
    _assert_nothing_submitted(tmp_path, before)


def test_valid_values_pass_the_checks(tmp_path):
    """No false alarms: every objective, mixer and preset the code accepts passes the dry run."""
    sweep = load(tmp_path, **{"grid: {objective.name: [ssast]}":
                              "grid: {objective.name: [ssast, mae], model.mixer: [none, v1, v2]}",
                              "args: {model.depth: 2,": "args: {model.depth: 2, data.preset: voxceleb,",
                              "batch-size: 16": "batch-size: 16, metric: mAP, preset: speechcommands",
                              "run.max_steps: 2,": "run.max_steps: 2, model.preset: small, model.mixer: v2,"})
    state = submit_sweep(sweep, "local", dry_run=True, say=lambda *a: None)
    pretrain, probes, finetunes = 2 * 3, (2 * 3 + 1) * 2 * 2, 2 * 3 * 2      # encoders x benchmarks x seeds
    assert len(state["jobs"]) == pretrain + probes + finetunes + 1
    assert not (tmp_path / "out").exists()


def test_a_dass_init_runs_through_probe_and_finetune_stages(tmp_path):
    """A DASS preset is an encoder like any other in the eval stages: the same job words, checked alike."""
    sweep = load(tmp_path, **{"scratch: {preset: tiny, depth: 2}": "scratch: {preset: tiny, depth: 2}\n"
                                                                   "  dass: {init: scratch, preset: dass_tiny}",
                              "encoders: [pretrain, scratch]": "encoders: [pretrain, scratch, dass]",
                              "encoders: [pretrain]": "encoders: [pretrain, dass]"})
    state = submit_sweep(sweep, "local", dry_run=True, say=lambda *a: None)
    assert len(state["jobs"]) == 1 + 3 * 2 * 2 + 2 * 2 + 1 and not (tmp_path / "out").exists()
    ft = sweep.job("finetune/dass/synth_a-seed0")
    assert "--init" in ft.argv and "model.preset=dass_tiny" in ft.argv and "run.model_name=dass_tiny" in ft.argv
    probe = sweep.job("probe/dass/synth_b-seed1")
    assert probe.argv[probe.argv.index("--random") + 1] == "dass_tiny" and "--depth" not in probe.argv


def test_pretraining_itself_rejects_what_the_dry_run_rejects(tmp_path, capsys):
    """The job checks the same values with the same message, before building anything or writing config.yaml."""
    from pretrain.run import main as pretrain_main
    run = tmp_path / "run"
    assert pretrain_main(["model.mixer=v3", "model.depth=2", "data.crop_frames=128", f"engine.out_dir={run}"]) == 2
    assert "model.mixer must be one of none, v1, v2; got 'v3'" in capsys.readouterr().err
    assert not (run / "config.yaml").exists()


def test_trace_exception_is_the_final_exception_of_a_traceback():
    from slurm.status import trace_exception
    trace = ('Traceback (most recent call last):\n  File "a.py", line 3, in f\n    g()\n    ^^^\n'
             'KeyError: \'x\'\n\nDuring handling of the above exception, another exception occurred:\n\n'
             'Traceback (most recent call last):\n  File "a.py", line 5, in f\n    raise ValueError("two\\nlines")\n'
             'ValueError: first line\n  second line\n')
    assert trace_exception(trace) == "ValueError: first line second line"
    assert trace_exception("") == ""


@pytest.mark.subprocess
@pytest.mark.parametrize("executor", EXECUTORS)
def test_a_failed_job_records_its_error_message(tmp_path, executor):
    """A job that fails at run time (a checkpoint that is not one) has the exception's message as its reason in
    ``aum-sweep status`` and (local executor, whose launcher sees it end) in sweep.json and the launcher's
    output -- not only a log path."""
    bad = tmp_path / "broken.safetensors"
    bad.write_text("not a checkpoint")
    text = TINY.replace("encoders: [pretrain, scratch]", f"encoders: [{bad}]").replace(
        "encoders: [pretrain]", f"encoders: [{bad}]")
    text = text[:text.index("  pretrain:\n")] + text[text.index("  probe:\n"):]          # no pretraining stage
    text = text.replace("benchmarks: [synth_a, synth_b]\n    seeds: [0, 1]", "benchmarks: [synth_a]\n    seeds: [0]")
    text = text[:text.index("  finetune:\n")] + "tables: false\n"
    said: list[str] = []
    state = submit_sweep(load(tmp_path, text), executor, say=said.append)
    job, want = "probe/broken/synth_a-seed0", f"{bad}: not a checkpoint we can read"
    assert list(state["jobs"]) == [job]
    if executor == "local":
        recorded = read_state(tmp_path / "out")["jobs"][job]
        assert recorded["status"] == "failed" and want in recorded["error"]
        assert any(want in line for line in said)
        states = job_states(read_state(tmp_path / "out"))
    else:
        states = wait_sweep(tmp_path / "out", timeout_s=240, poll_s=1)
    assert states[job]["state"] == "FAILED" and want in states[job]["reason"]
    status = subprocess.run([sys.executable, "-m", "slurm", "status", str(tmp_path / "out")], capture_output=True,
                            text=True)
    assert status.returncode == 0 and want in status.stdout
