"""The job kinds a sweep runs, each an entry point of the project called in-process with an argv.

=========  =========================  ====  ===============================================================
kind       entry point                DDP   done when
=========  =========================  ====  ===============================================================
pretrain   ``pretrain.run:run``       yes   ``encoder.safetensors`` and ``done.json`` exist
finetune   ``eval.finetune:main``     yes   ``done.json`` exists and every record it lists exists
probe      ``eval.probe:main``        no    ``done.json`` exists and every record it lists exists
tables     ``eval.results:main``      no    ``done.json`` exists (rebuilt whenever another job ran)
=========  =========================  ====  ===============================================================

Every job's argv is built one way, :func:`aum.cli.build_argv` (the project's one command-line convention:
positionals, ``--flags`` from plain keys, trailing ``key=value`` overrides from dotted keys), and
:func:`check_argv` parses it with the entry point's own parser (:class:`aum.cli.CommandLine`) and checks its
values, so a typo fails before anything is submitted.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from pathlib import Path

from aum.cli import USER_ERRORS, build_argv, error_message

__all__ = ["Kind", "KINDS", "pretrain_argv", "eval_argv", "tables_argv", "check_argv", "entry_point",
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


def pretrain_argv(config: str | None, args: dict, out_dir: str) -> list[str]:
    """``python -m pretrain`` words: the optional YAML, then the stage's keys, ``engine.out_dir`` last."""
    options = {k: v for k, v in args.items() if k != "engine.out_dir"}
    return build_argv([config] if config else [], {**options, "engine.out_dir": out_dir})


FINETUNE_INITS = {"scratch": "scratch", "imagenet": "imagenet", "ssl": "ssl", "official": "aum"}


def eval_argv(kind: str, benchmark: str, manifest: str, encoder: dict, seed: int, args: dict,
              records_dir: str, out_dir: str, cache_dir: str) -> list[str]:
    """Words for ``python -m eval.probe`` (records straight into ``records_dir``) or ``python -m eval.finetune``
    (it works in ``out_dir`` and writes its records into ``out_dir/records``), built by :func:`aum.cli.build_argv`.

    ``benchmark`` is the probe's benchmark name or the fine-tuning benchmark file / registered name;
    ``encoder`` is ``{"init", "model", "checkpoint"}`` (a file) or ``{"init": "scratch", "model", "preset",
    "depth"}`` (random weights); ``args`` are the stage's own options (plain keys: flags, dotted keys: config
    overrides), which win over the ones set here.
    """
    checkpoint, depth = encoder.get("checkpoint"), encoder.get("depth") or None
    if kind == "finetune":
        words = [benchmark, manifest, "--init", FINETUNE_INITS[encoder["init"]], *([checkpoint] if checkpoint else [])]
        model = {} if checkpoint else {"model.preset": encoder["preset"], **({"model.depth": depth} if depth else {})}
        return build_argv(words, {**model, "run.out": out_dir, "run.seed": seed, "run.model_name": encoder["model"],
                                  **args})
    source = ({"checkpoint": str(checkpoint), "init": encoder["init"]} if checkpoint
              else {"random": encoder["preset"], "depth": depth})
    return build_argv([benchmark, manifest], {**source, "seed": seed, "model_name": encoder["model"],
                                              "out": records_dir, "cache": cache_dir, **args})


def tables_argv(records_dir: str, tables_dir: str) -> list[str]:
    """Words for ``python -m eval.results``: the records folder and where the tables go."""
    return build_argv([records_dir], {"out": tables_dir})


def check_argv(kind: str, argv: list[str], what: str) -> None:
    """Parse ``argv`` with the parser of ``kind``'s entry point (its module's ``build_parser()``, an
    :class:`aum.cli.CommandLine`) and check the values it would use with the module's ``check_args(args)`` when
    it has one (pretraining: the config and :func:`pretrain.config.check_config`; fine-tuning:
    :func:`eval.finetune.load_finetune_config`; probe: :func:`eval.probe.probe_benchmark`), without running it,
    building a model or reading audio; raise ``ValueError`` naming ``what`` and the problem when it is rejected.
    Kinds whose module is not installed are not checked."""
    module_name = KINDS[kind].entry.partition(":")[0]
    try:
        module = importlib.import_module(module_name)
    except ImportError:
        return
    check = getattr(module, "check_args", None)
    quiet = logging.getLogger(module_name)              # e.g. the probe's "unknown benchmark: defaults", per job
    level = quiet.level
    quiet.setLevel(logging.ERROR)
    try:
        args = module.build_parser().parse(argv)
        if check is not None:
            check(args)
    except SystemExit as e:                             # aum.cli.UsageError (and --help)
        raise ValueError(f"{what}: {module_name} rejects its arguments: {e}") from None
    except USER_ERRORS as e:
        raise ValueError(f"{what}: {error_message(e)}") from None
    finally:
        quiet.setLevel(level)


def records_in(folder: str | Path) -> list[str]:
    """The result records (``*.json``) under ``folder``, sorted; empty when it does not exist."""
    folder = Path(folder)
    return sorted(str(p) for p in folder.rglob("*.json")) if folder.is_dir() else []
