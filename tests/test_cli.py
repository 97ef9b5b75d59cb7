"""Command-line entry points: the shared error / exit-status helper (:mod:`aum.cli`), the run folder's
``config.yaml`` guard, and every installed console script exiting 0 on ``--help`` and on a tiny successful run,
2 on a usage or input error."""
import os
import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from omegaconf import OmegaConf

from aum.cli import EXIT_STOPPED, CommandLine, RunStopped, UsageError, build_argv, run_cli, save_run_config
from aum.config import ConfigError
from aum.audio.synth import write_clips
from eval.prepare import prepare

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


# ------------------------------------------------------------------------------------------------ run_cli

def _raise(exc):
    def body(argv):
        raise exc
    return body


def test_run_cli_statuses_and_messages(capsys):
    seen = []
    assert run_cli("prog", lambda argv: seen.append(argv), ["a=1", "--debug", "b=2"]) == 0
    assert seen == [["a=1", "b=2"]]                                   # --debug is taken out
    assert run_cli("prog", lambda argv: 5, []) == 5
    assert run_cli("prog", _raise(ConfigError("unknown config key 'x.y'")), []) == 2
    err = capsys.readouterr().err
    assert err.startswith("prog: error: unknown config key 'x.y'") and "Traceback" not in err
    assert run_cli("prog", _raise(KeyError("no preset 'foo'; known: a, b")), []) == 2
    assert "prog: error: no preset 'foo'; known: a, b (" in capsys.readouterr().err      # not the repr's quotes
    assert run_cli("prog", _raise(FileNotFoundError("data.source /x does not exist")), ["--debug"]) == 2
    err = capsys.readouterr().err
    assert "Traceback" in err and "prog: error: data.source /x does not exist" in err
    assert run_cli("prog", _raise(SystemExit("--init needs a checkpoint path")), []) == 2
    assert "prog: error: --init needs a checkpoint path" in capsys.readouterr().err
    assert run_cli("prog", _raise(SystemExit(0)), []) == 0
    assert run_cli("prog", _raise(RunStopped("stopped; run the same command again")), []) == EXIT_STOPPED == 3
    assert "prog: stopped; run the same command again" in capsys.readouterr().err
    with pytest.raises(RuntimeError):                                 # a bug is not an input error: traceback
        run_cli("prog", _raise(RuntimeError("internal")), [])


# ------------------------------------------------------------------------------------------------ CommandLine

@dataclass
class _Section:
    c: int = 0
    rate: float = 0.5


@dataclass
class _Config:
    x: Any = None
    name: str = "run"
    b: _Section = field(default_factory=_Section)


def _parser(**kwargs) -> CommandLine:
    p = CommandLine("prog", "A test command.", config=_Config, **kwargs)
    p.add_argument("source")
    p.add_argument("--size", type=int, default=1)
    p.add_argument("--fast", action="store_true")
    return p


def test_positionals_flags_and_trailing_overrides():
    args = _parser().parse(["data", "--size", "3", "--fast", "x=[1,2]", "b.c=2", "name=a=b"])
    assert (args.source, args.size, args.fast) == ("data", 3, True)
    assert args.overrides == ["x=[1,2]", "b.c=2", "name=a=b"]
    args = _parser().parse(["--size=4", "data"])
    assert (args.source, args.size, args.overrides) == ("data", 4, [])
    words = build_argv(["data"], {"b.rate": 0.25, "size": 7, "fast": True, "name": None, "x": False,
                                  "b.c": [1, 2], "long_flag": ["a", "b"]})
    assert words == ["data", "--size", "7", "--fast", "--long-flag", "a,b", "b.rate=0.25", "b.c=[1,2]"]
    assert build_argv([], {"a.b": True, "a.c": None, "a.d": ""}) == ["a.b=true", "a.c=null", "a.d=''"]
    with pytest.raises(UsageError, match="unexpected argument '--fast' after the key=value overrides"):
        _parser().parse(["data", "b.c=2", "--fast"])
    with pytest.raises(UsageError, match="unrecognized arguments: --lr"):
        _parser().parse(["data", "--lr", "3"])
    with pytest.raises(UsageError, match=r"unexpected argument\(s\) more"):
        _parser().parse(["data", "more"])
    with pytest.raises(ConfigError, match="malformed override '=3'"):
        _parser().parse(["data", "=3"])


def test_a_misspelt_key_names_the_valid_keys(capsys):
    with pytest.raises(ConfigError) as err:
        _parser().parse(["data", "b.rat=1"])
    assert str(err.value) == ("unknown config key 'b.rat' in override 'b.rat=1'; did you mean 'b.rate'? "
                              "Valid keys under b: c, rate")
    with pytest.raises(ConfigError, match="unknown config key 'nme'.*Valid keys: x, name, b"):
        _parser().parse(["data", "nme=1"])
    assert run_cli("prog", lambda argv: _parser().parse(argv), ["data", "b.rat=1"]) == 2
    assert "prog: error: unknown config key 'b.rat'" in capsys.readouterr().err


def test_run_cli_prints_the_usage_and_the_error(capsys):
    with pytest.raises(UsageError) as err:
        _parser().parse(["data", "--size", "big"])
    assert str(err.value) == err.value.code == "argument --size: invalid int value: 'big'"
    assert err.value.usage.startswith("usage: prog ")
    assert run_cli("prog", lambda argv: _parser().parse(argv), ["data", "--size", "big"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: prog ") and "prog: error: argument --size: invalid int value: 'big'" in err
    assert "Traceback" not in err


def test_help_lists_the_overrides_with_their_defaults(capsys):
    assert run_cli("prog", lambda argv: _parser(listed=("b",)).parse(argv), ["--help"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("usage: prog [-h] [--debug] [--size SIZE] [--fast] source [key=value ...]")
    assert "A test command." in out and "--debug" in out
    assert "  b.c=0\n  b.rate=0.5\n" in out and "name=run" not in out      # only the listed sections
    assert "x.*, name.*: every key of the file the command reads" in out
    assert "  x=null\n  name=run\n  b.c=0\n" in _parser().format_help()
    from pretrain.run import build_parser
    text = build_parser().format_help()
    assert "engine.max_steps=" in text and "objective.name=ssast" in text and "[CONFIG.yaml]" in text


def test_config_file_and_overrides():
    """The config-file form (``aum-pretrain``): a positional YAML or ``--config FILE``, then overrides."""
    def split(argv):
        args = CommandLine("prog", config=_Config, config_file=True).parse(argv)
        return args.config, args.overrides
    assert split([]) == (None, [])
    assert split(["--config", "a.yaml", "x=1", "b.c=2"]) == ("a.yaml", ["x=1", "b.c=2"])
    assert split(["--config=a.yml", "x=1"]) == ("a.yml", ["x=1"])
    assert split(["configs/run.yaml", "x=[1,2]"]) == ("configs/run.yaml", ["x=[1,2]"])
    assert split(["x=1", "name=a=b"]) == (None, ["x=1", "name=a=b"])
    for bad in (["--lr", "3"], ["x=1", "run.yaml"], ["--config"], ["a.yaml", "--config", "b.yaml"], ["=3"],
                ["a.yaml", "b.yaml"], ["--config="], ["x=1", "nmae=a"]):
        with pytest.raises((UsageError, ConfigError)):
            split(bad)


def test_finetune_init_kind_and_path():
    from eval.finetune import build_parser
    args = build_parser().parse(["esc50", "m.jsonl", "--init", "ssl", "enc.safetensors", "run.fold=all"])
    assert (args.benchmark, args.manifest, args.init, args.overrides) == \
        ("esc50", "m.jsonl", ("ssl", "enc.safetensors"), ["run.fold=all"])
    assert build_parser().parse(["esc50", "m.jsonl", "model.preset=tiny"]).init == ("scratch", None)
    for argv, message in [(["--init", "aum"], "--init aum needs a checkpoint path"),
                          (["--init", "ssl", "a", "b"], "--init ssl takes one checkpoint path, got 2: a b"),
                          (["--init", "scratch", "a"], "--init scratch takes no checkpoint, got a"),
                          (["--init", "vim", "a"], "--init must be one of ['aum', 'imagenet', 'scratch', 'ssl']"),
                          (["run.fold=al1", "--init", "scratch"], "after the key=value overrides")]:
        with pytest.raises(UsageError, match=re.escape(message)):
            build_parser().parse(["esc50", "m.jsonl", *argv])
    with pytest.raises(ConfigError, match="did you mean 'run.fold'?"):
        build_parser().parse(["esc50", "m.jsonl", "run.flod=1"])


# ------------------------------------------------------------------------------------------------ config.yaml

def test_run_config_is_kept_for_a_run_with_checkpoints(tmp_path):
    cfg = OmegaConf.create({"engine": {"lr": 0.001, "max_steps": 10, "out_dir": str(tmp_path)}, "model": {"d": 2}})
    save_run_config(cfg, tmp_path, may_differ=["engine.max_steps"])
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "step_00000002.pt").write_bytes(b"x")
    longer = OmegaConf.merge(cfg, {"engine": {"max_steps": 20}})
    save_run_config(longer, tmp_path, may_differ=["engine.max_steps"])        # allowed: rewritten
    assert OmegaConf.load(tmp_path / "config.yaml").engine.max_steps == 20
    before = (tmp_path / "config.yaml").read_text()
    other = OmegaConf.merge(longer, {"engine": {"lr": 0.01}, "model": {"d": 3}})
    with pytest.raises(ConfigError, match=rf"run folder {tmp_path} has checkpoints of a different config .*"
                                          r"engine\.lr: 0\.001 in the run, 0\.01 now; model\.d: 2 in the run, 3 now"
                                          r".*engine\.resume=false"):
        save_run_config(other, tmp_path, may_differ=["engine.max_steps"], resume_key="engine.resume")
    assert (tmp_path / "config.yaml").read_text() == before
    save_run_config(other, tmp_path, resume=False)                    # starting over: the new config
    assert OmegaConf.load(tmp_path / "config.yaml").model.d == 3


# ------------------------------------------------------------------------------------------------ console scripts

def _script(name, *args, cwd=None, timeout=300):
    exe = BIN / name
    if not exe.exists():
        pytest.skip(f"{exe} is not installed (pip install -e .)")
    env = {**os.environ, "OMP_NUM_THREADS": "1", "AUM_CACHE": str(Path(cwd or REPO) / "cache")}
    return subprocess.run([str(exe), *map(str, args)], cwd=cwd or REPO, capture_output=True, text=True,
                          timeout=timeout, env=env)


SCRIPTS = ["aum-encode", "aum-models", "aum-pretrain", "aum-finetune", "aum-prepare", "aum-probe", "aum-results",
           "aum-sweep", "aum-hear-eval", "aum-hear-tasks", "aum-hear-env", "aum-niah"]


def test_every_console_script_is_tested_here():
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]")[1].split("\n[")[0]
    assert sorted(line.split("=")[0].strip() for line in section.splitlines() if "=" in line) == sorted(SCRIPTS)


@pytest.mark.subprocess
@pytest.mark.parametrize("name", SCRIPTS)
def test_help_exits_0(name):
    res = _script(name, "--help")
    assert res.returncode == 0, res.stderr[-2000:]
    out = res.stdout.lower()
    assert "usage" in out or "python -m" in out or f"{name} " in out, res.stdout[:500]    # help text, not an error


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """A generated labelled task: clips, the prepared manifest (train / valid / test) and a benchmark file."""
    root = tmp_path_factory.mktemp("cli_task")
    write_clips(root / "clips", 24, duration=0.6, labelled=True)
    prepare("custom", root / "clips", root / "prep")
    (root / "task.yaml").write_text(
        "benchmark: {name: synth7, num_classes: 7, target_frames: 64, preset: speechcommands,"
        " splits: [train, valid, test]}\n"
        "recipe: {official: false, epochs: 1, lr: 1.0e-3, batch_size: 4, loss: ce, warmup_steps: 1}\n")
    return root


@pytest.mark.subprocess
@pytest.mark.slow
def test_tiny_runs_of_the_console_scripts_exit_0(task, tmp_path):
    """One cheap successful invocation per script (aum-hear-eval needs the HEAR environment and minutes, and
    ``aum-hear-env --check`` answers 1 for "not ready" by design: --help only for those two)."""
    manifest = task / "prep" / "manifest.jsonl"
    runs = {
        "aum-encode": ["--seconds", "1"],
        "aum-models": ["vim_small_imagenet"],
        "aum-pretrain": ["model.depth=2", "data.crop_frames=64", "data.synth_clips=8", "engine.batch_size=2",
                         "engine.max_steps=1", "engine.device=cpu", f"engine.out_dir={tmp_path / 'pre'}"],
        "aum-prepare": ["custom", task / "clips", tmp_path / "prep"],
        "aum-probe": ["synth7", manifest, "--random", "tiny", "--depth", "2", "--frames", "64", "--folds", "0",
                      "--metric", "accuracy", "--no-multilabel", "--preset", "speechcommands", "--c-grid", "1",
                      "--out", tmp_path / "records", "--cache", tmp_path / "cache"],
        "aum-results": [tmp_path / "records", "--out", tmp_path / "tables"],
        "aum-finetune": [task / "task.yaml", manifest, "--init", "scratch", "model.preset=tiny", "model.depth=2",
                         "run.device=cpu", "run.max_steps=1", f"run.out={tmp_path / 'ft'}"],
        "aum-sweep": [REPO / "slurm" / "examples" / "tiny_sweep.yaml", "--dry-run", "--out", tmp_path / "sweep"],
        "aum-hear-tasks": ["synth-scene", tmp_path / "hear", "--per-class", "3", "--folds", "3", "--duration", "0.5"],
    }
    for name, args in runs.items():                    # in order: aum-results reads the probe's records
        res = _script(name, *args, cwd=tmp_path)
        assert res.returncode == 0, f"{name}: {res.stderr[-3000:]}"
    classifier = next((tmp_path / "ft").rglob("best.safetensors"))          # the fine-tuned encoder + head
    res = _script("aum-niah", classifier, manifest, "--lengths", "2s", "--positions", "0.5", "--haystack", "zeros",
                  "--modes", "whole", "--benchmark", task / "task.yaml", "--out", tmp_path / "niah", cwd=tmp_path)
    assert res.returncode == 0, f"aum-niah: {res.stderr[-3000:]}"
    assert list((tmp_path / "niah" / "records").glob("*.json"))
    assert (tmp_path / "pre" / "encoder.safetensors").is_file() and (tmp_path / "ft" / "records").is_dir()
    assert list((tmp_path / "tables").glob("*.md"))


@pytest.mark.subprocess
def test_input_errors_exit_2_with_one_message(tmp_path):
    res = _script("aum-pretrain", "engine.typo=1", f"engine.out_dir={tmp_path / 'r'}", cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr
    assert "unknown config key 'engine.typo'" in res.stderr and "Valid keys under engine" in res.stderr
    res = _script("aum-probe", "esc10", tmp_path / "nonexistent", "--random", "tiny", "--out", tmp_path / "o",
                  cwd=tmp_path)
    assert res.returncode == 2 and "Traceback" not in res.stderr and "nonexistent" in res.stderr
    res = _script("aum-finetune", "esc10", tmp_path / "nonexistent.jsonl", "--init", "aum", cwd=tmp_path)
    assert res.returncode == 2 and "needs a checkpoint path" in res.stderr
    res = _script("aum-hear-tasks", "synth-scene", tmp_path / "h", "--folds", "2", cwd=tmp_path)
    assert res.returncode == 2 and "need folds >= 3" in res.stderr and "Traceback" not in res.stderr
    res = _script("aum-encode", "--file", tmp_path / "missing.wav", cwd=tmp_path)
    assert res.returncode == 2 and "missing.wav" in res.stderr and "Traceback" not in res.stderr
