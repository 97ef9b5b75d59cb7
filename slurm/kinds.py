"""The job kinds a sweep runs, each an entry point of the project called in-process with an argv.

=========  =========================  ====  ===============================================================
kind       entry point                DDP   done when
=========  =========================  ====  ===============================================================
pretrain   ``pretrain.run:run``       yes   ``encoder.safetensors`` and ``done.json`` exist
finetune   ``eval.finetune:main``     yes   ``done.json`` exists and every record it lists exists
probe      ``eval.probe:main``        no    ``done.json`` exists and every record it lists exists
tables     ``eval.results:main``      no    ``done.json`` exists (rebuilt whenever another job ran)
=========  =========================  ====  ===============================================================

The argv builders here are the only place that knows each entry point's command line; :func:`check_argv`
parses a built argv with the entry point's own parser so a typo fails before anything is submitted.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import logging
from dataclasses import dataclass
from pathlib import Path

__all__ = ["Kind", "KINDS", "flags", "pretrain_argv", "eval_argv", "tables_argv", "check_argv", "entry_point",
           "records_in"]


@dataclass(frozen=True)
class Kind:
    """A job kind: its entry point (``module:function``), whether it trains with DDP (one task per GPU),
    whether it produces an encoder other stages can use, and whether it writes result records."""

    name: str
    entry: str
    ddp: bool
    produces_encoder: bool = False
    records: bool = False
    records_subdir: str | None = None    # records written under out_dir/<this>, then copied to records_dir


KINDS = {k.name: k for k in (
    Kind("pretrain", "pretrain.run:run", ddp=True, produces_encoder=True),     # run: the summary dict
    Kind("finetune", "eval.finetune:main", ddp=True, records=True, records_subdir="records"),
    Kind("probe", "eval.probe:main", ddp=False, records=True),
    Kind("tables", "eval.results:main", ddp=False),
)}
EVAL_KINDS = ("probe", "finetune")


def entry_point(kind: str):
    """The callable ``main(argv)`` of ``kind`` (imported on demand: the eval modules are optional)."""
    module, _, func = KINDS[kind].entry.partition(":")
    return getattr(importlib.import_module(module), func)


def flags(args: dict) -> list[str]:
    """``{"batch_size": 8, "refresh": True, "c_grid": [0.1, 1]}`` -> ``--batch-size 8 --refresh --c-grid 0.1,1``
    (``False``/``None`` values are left out; lists are comma-joined)."""
    out = []
    for key, value in args.items():
        if value is None or value is False:
            continue
        flag = "--" + str(key).lstrip("-").replace("_", "-")
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, ",".join(str(v) for v in value)]
        else:
            out += [flag, str(value)]
    return out


def pretrain_argv(config: str | None, args: dict, out_dir: str) -> list[str]:
    """``python -m pretrain`` words: the optional YAML, ``key=value`` for each arg, then ``engine.out_dir``."""
    words = [config] if config else []
    words += [f"{k}={_yaml_value(v)}" for k, v in args.items() if k != "engine.out_dir"]
    return words + [f"engine.out_dir={out_dir}"]


def _yaml_value(value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(_yaml_value(v) for v in value) + "]"
    return str(value)


FINETUNE_INITS = {"scratch": "scratch", "imagenet": "imagenet", "ssl": "ssl", "official": "aum"}


def eval_argv(kind: str, benchmark: str, manifest: str, encoder: dict, seed: int, args: dict,
              records_dir: str, out_dir: str, cache_dir: str) -> list[str]:
    """Words for ``python -m eval.probe`` (flags, records straight into ``records_dir``) or ``python -m
    eval.finetune`` (``key=value``; it works in ``out_dir`` and writes its records into ``out_dir/records``).

    ``benchmark`` is the probe's benchmark name or the fine-tuning benchmark file / registered name;
    ``encoder`` is ``{"init", "model", "checkpoint"}`` (a file) or ``{"init": "scratch", "model", "preset",
    "depth"}`` (random weights); ``args`` are the stage's extra flags (probe) or config keys (finetune).
    """
    words = [benchmark, manifest]
    if kind == "finetune":
        words += ["--init", FINETUNE_INITS[encoder["init"]]]
        if encoder.get("checkpoint"):
            words.append(str(encoder["checkpoint"]))
        else:
            words.append(f"model.preset={encoder['preset']}")
            if encoder.get("depth"):
                words.append(f"model.depth={encoder['depth']}")
        extra = {"run.out": out_dir, "run.seed": seed, **args}
        if _finetune_takes("model_name"):
            extra.setdefault("run.model_name", encoder["model"])
        return words + [f"{k}={_yaml_value(v)}" for k, v in extra.items()]
    if encoder.get("checkpoint"):
        words += ["--checkpoint", str(encoder["checkpoint"]), "--init", encoder["init"]]
    else:
        words += ["--random", encoder["preset"]]
        if encoder.get("depth"):
            words += ["--depth", str(encoder["depth"])]
    words += ["--seed", str(seed), "--model-name", encoder["model"], "--out", records_dir]
    return words + flags({"cache": cache_dir, **args})


def _finetune_takes(key: str) -> bool:
    """Whether ``eval.finetune``'s ``run`` section has ``key`` (newer versions name the model in records)."""
    try:
        import dataclasses
        from eval.finetune import RunSpec
        return key in {f.name for f in dataclasses.fields(RunSpec)}
    except ImportError:
        return False


def tables_argv(records_dir: str, tables_dir: str) -> list[str]:
    """Words for ``python -m eval.results``: the records folder and where the tables go."""
    return [records_dir, "--out", tables_dir]


def check_argv(kind: str, argv: list[str], what: str) -> None:
    """Parse ``argv`` as ``kind``'s entry point would and check the values it would use (pretraining:
    :func:`pretrain.config.check_config`; fine-tuning: :func:`eval.finetune.load_finetune_config`; probe: its
    parser and :func:`eval.probe.probe_benchmark`), without running it, building a model or reading audio; raise
    ``ValueError`` naming ``what`` and the problem when it is rejected. Kinds whose module is not installed are
    not checked."""
    if kind == "pretrain":
        from aum.config import load_config, parse_cli, to_dataclass
        from pretrain.config import PretrainConfig, check_config
        try:
            path, overrides = parse_cli(argv)
            check_config(to_dataclass(load_config(PretrainConfig, path, overrides), PretrainConfig))
        except (ValueError, FileNotFoundError) as e:
            raise ValueError(f"{what}: {e}") from None
        return
    if kind == "finetune":
        _check_finetune(argv, what)
        return
    module_name = KINDS[kind].entry.partition(":")[0]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return
    build = getattr(module, "build_parser", None)
    if build is None:
        return
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            args = build().parse_args(argv)
    except SystemExit:
        msg = err.getvalue().strip().splitlines()
        raise ValueError(f"{what}: {module_name} rejects its arguments: {msg[-1] if msg else argv}") from None
    if kind == "probe" and hasattr(module, "probe_benchmark"):
        quiet = logging.getLogger(module_name)          # its "unknown benchmark: defaults" warning, once per job
        level = quiet.level
        quiet.setLevel(logging.ERROR)
        try:
            module.probe_benchmark(args)
        except ValueError as e:
            raise ValueError(f"{what}: {e}") from None
        finally:
            quiet.setLevel(level)


def _check_finetune(argv: list[str], what: str) -> None:
    try:
        from eval.finetune import load_finetune_config, parse_args
    except ImportError:
        return
    try:
        benchmark, _, _, _, overrides = parse_args(argv)
        load_finetune_config(benchmark, overrides)
    except SystemExit as e:
        raise ValueError(f"{what}: eval.finetune rejects its arguments: {e}") from None
    except (ValueError, KeyError, FileNotFoundError) as e:
        text = e.args[0] if isinstance(e, KeyError) and e.args else e      # a KeyError's str() is its repr
        raise ValueError(f"{what}: {text}") from None


def records_in(folder: str | Path) -> list[str]:
    """The result records (``*.json``) under ``folder``, sorted; empty when it does not exist."""
    folder = Path(folder)
    return sorted(str(p) for p in folder.rglob("*.json")) if folder.is_dir() else []
