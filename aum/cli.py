"""What every command-line entry point shares: one command-line convention, exit statuses, turning user errors
into one message, and the run folder's ``config.yaml``.

The command-line convention (every console script; parsed by :class:`CommandLine`, built by :func:`build_argv`):

- positional arguments and ``--flags`` are argparse's, so ``--help`` (``-h``) looks the same everywhere: usage,
  arguments, flags, and ``--debug`` (show the traceback of an input error);
- a command with a config (a dataclass schema: ``aum-pretrain``, ``aum-finetune``) takes ``key=value`` overrides
  (omegaconf dotlist: dotted keys, values parsed as YAML) as its trailing arguments, after the positionals and
  flags; ``--help`` lists every key with its default, and a key the schema lacks is an input error
  (:class:`aum.config.ConfigError`, exit 2) naming the closest key and the valid keys at its level. A word that does not start with ``-`` and holds ``=`` is an
  override (write a path with ``=`` in it as ``./a=b``);
- a command may also read a YAML config file first (``aum-pretrain CONFIG.yaml`` or ``--config CONFIG.yaml``):
  schema defaults < the file < the overrides.

For example ``python -m pretrain my_run.yaml engine.max_steps=20000``, ``python -m eval.finetune esc50
prep/esc50/manifest.jsonl --init ssl runs/pretrain/encoder.safetensors run.fold=all`` and ``python -m eval.probe
esc10 data/esc10 --random tiny --folds 5``. A command line that does not parse raises :class:`UsageError`.
Programs that build command lines (the sweep launcher) use :func:`build_argv`: a plain key becomes a ``--flag``,
a dotted key a trailing ``key=value``.

Exit statuses of the console scripts (``aum-pretrain``, ``aum-finetune``, ``aum-probe``, ...):

- ``0`` (:data:`EXIT_OK`): success, also for ``--help``;
- ``1``: an unexpected failure (a bug, a crashed stage); the traceback is shown;
- ``2`` (:data:`EXIT_USAGE`): a usage or input error (bad option, config key or value, missing or unreadable
  data, manifest or checkpoint); one line ``PROG: error: ...`` on stderr, the traceback only with ``--debug``;
- ``3`` (:data:`EXIT_STOPPED`): stopped by a signal (SIGTERM, SIGUSR1, SIGINT / Ctrl-C) after writing a
  checkpoint; the run is resumable: rerunning the same command continues it;
- ``130``: interrupted by Ctrl-C outside a training loop (nothing to resume).
"""
from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aum.checkpoint import CheckpointError
from aum.config import ConfigError, check_overrides, save_config

__all__ = ["EXIT_OK", "EXIT_USAGE", "EXIT_STOPPED", "EXIT_INTERRUPTED", "USER_ERRORS", "RunStopped", "UsageError",
           "CommandLine", "build_argv", "yaml_value", "overrides_help", "run_cli", "error_message",
           "stopped_message", "save_run_config", "models_main"]

EXIT_OK, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 2, 3, 130

#: Exceptions that mean "the input is wrong", not "the program is wrong": config, data-source, manifest,
#: audio and checkpoint problems (the project's own error classes derive from these).
USER_ERRORS = (ValueError, KeyError, OSError, OmegaConfBaseException, CheckpointError)


class RunStopped(Exception):
    """A training run stopped by a signal after writing its checkpoint; rerunning the same command resumes it."""


class UsageError(SystemExit):
    """A command line that does not parse: a ``SystemExit`` carrying its message (``str()``), as :func:`run_cli`
    expects, plus the parser's ``usage`` line, which :func:`run_cli` prints before ``PROG: error: MESSAGE``."""

    def __init__(self, message: str, usage: str = ""):
        super().__init__(message)
        self.usage = usage


def yaml_value(value) -> str:
    """``value`` as the YAML text of a ``key=value`` override: ``true``/``false``, ``null``, ``''``, ``[a,b]``,
    ``{k: v}``; anything else as ``str()``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, str) and not value:
        return "''"
    if isinstance(value, (list, tuple)):
        return "[" + ",".join(yaml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {yaml_value(v)}" for k, v in value.items()) + "}"
    return str(value)


def overrides_help(schema, listed=None) -> str:
    """The ``--help`` text of the ``key=value`` overrides of dataclass ``schema``: every key with its default
    (``???``: required), for the top-level sections in ``listed`` (None: all); the other sections are named as
    set by the config file the command reads."""
    tree = OmegaConf.to_container(OmegaConf.structured(schema))
    shown = {k: v for k, v in tree.items() if listed is None or k in listed}
    lines = [f"  {key}={yaml_value(value)}" for key, value in _flat(shown).items()]
    rest = [f"{k}.*" for k in tree if k not in shown]
    if rest:
        lines.append(f"  {', '.join(rest)}: every key of the file the command reads, which sets their values")
    return ("key=value overrides (after the other arguments; dotted keys, values as YAML) and their defaults:\n"
            + "\n".join(lines))


def _is_override(word: str) -> bool:
    """Whether a command-line word is a ``key=value`` override rather than a positional or a flag."""
    return "=" in word and not word.startswith("-")


class CommandLine(argparse.ArgumentParser):
    """The parser of every console script (the convention of the module docstring): an ``ArgumentParser``
    (``--debug`` included) whose :meth:`parse` also takes the trailing ``key=value`` overrides of ``config``.

    ``config``: the dataclass schema the overrides set (None: the command takes none); its keys are checked by
    :meth:`parse` and listed by ``--help`` (only the sections in ``listed``, when given). ``config_file``: the
    command reads an optional YAML file, the positional ``CONFIG.yaml`` or ``--config FILE`` (``args.config``).
    Errors raise :class:`UsageError` (exit status 2 through :func:`run_cli`) instead of exiting."""

    def __init__(self, prog: str, description: str | None = None, *, config=None, config_file: bool = False,
                 listed=None, **kwargs):
        kwargs.setdefault("formatter_class", argparse.RawDescriptionHelpFormatter)
        if config is not None:
            kwargs.setdefault("epilog", overrides_help(config, listed))
        super().__init__(prog=prog, description=description, **kwargs)
        self.config, self.config_file, self._overrides_added = config, config_file, config is None
        self.add_argument("--debug", action="store_true", help="show the traceback of an input error")
        if config_file:
            self.add_argument("config", nargs="?", metavar="CONFIG.yaml", help="YAML file of config values")
            self.add_argument("--config", dest="config_option", metavar="FILE", help="the same as CONFIG.yaml")

    def _add_overrides(self) -> None:
        """Declare the overrides as the last positional (for usage and help; :meth:`parse` fills them)."""
        if not self._overrides_added:
            self._overrides_added = True
            self.add_argument("overrides", nargs="*", default=[], metavar="key=value",
                              help="config overrides, last on the command line (keys and defaults below)")

    def format_usage(self) -> str:
        """The usage line (with ``[key=value ...]`` for a command with a config)."""
        self._add_overrides()
        return super().format_usage()

    def format_help(self) -> str:
        """The ``--help`` text (with the overrides and their defaults for a command with a config)."""
        self._add_overrides()
        return super().format_help()

    def error(self, message: str):
        """Raise :class:`UsageError` with ``message`` and the usage line (argparse would print and exit)."""
        raise UsageError(message, self.format_usage())

    def parse(self, argv=None) -> argparse.Namespace:
        """Parse ``argv`` (``sys.argv[1:]`` when None): the namespace of the positionals and flags, plus
        ``overrides`` (the ``key=value`` words, checked against ``config``) and ``config`` (the YAML file or
        None) when the parser has them. ``--help`` prints the help and exits 0; a malformed override or an unknown
        key raises :class:`aum.config.ConfigError` (naming the valid keys), other errors :class:`UsageError`."""
        argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
        words, overrides = argv, []
        if self.config is not None:
            words = []
            for word in argv:
                if _is_override(word):
                    overrides.append(word)
                elif overrides and word not in ("-h", "--help"):
                    self.error(f"unexpected argument {word!r} after the key=value overrides (they come last)")
                else:
                    words.append(word)
        self._add_overrides()
        args = self.parse_args(words)
        if self.config is not None:
            if args.overrides:                                  # stray positionals argparse gave to the overrides
                self.error(f"unexpected argument(s) {' '.join(args.overrides)}")
            check_overrides(self.config, overrides)             # ConfigError, as for a key of a config file
            args.overrides = overrides
        if self.config_file:
            given = [p for p in (args.config, args.config_option) if p is not None]
            if len(given) > 1 or "" in given:
                self.error(f"give one config file (CONFIG.yaml or --config FILE), got {given}")
            args.config = given[0] if given else None
            del args.config_option
        return args


def build_argv(words, options: dict) -> list[str]:
    """A command line in the convention: ``words`` as they are (positionals, fixed flags), then ``options``: a
    plain key becomes ``--key value`` (``_`` written ``-``; ``True``: the bare flag; ``False``/``None``: left
    out; a list: comma-joined), a dotted key a trailing ``key=value`` override (:func:`yaml_value`)."""
    out, overrides = [str(w) for w in words], []
    for key, value in options.items():
        key = str(key)
        if "." in key:
            overrides.append(f"{key}={yaml_value(value)}")
        elif value is not None and value is not False:
            flag = "--" + key.lstrip("-").replace("_", "-")
            if value is True:
                out.append(flag)
            elif isinstance(value, (list, tuple)):
                out += [flag, ",".join(str(v) for v in value)]
            else:
                out += [flag, str(value)]
    return out + overrides


def error_message(exc: BaseException) -> str:
    """The text of ``exc`` for one line of output (a ``KeyError``'s message without the quotes of its repr)."""
    if isinstance(exc, KeyError) and len(exc.args) == 1 and isinstance(exc.args[0], str):
        return exc.args[0]
    return str(exc) or type(exc).__name__


def stopped_message(prog: str, argv: Iterable[str], what: str) -> str:
    """The line printed when a run stopped at a signal: ``what`` happened, and the command that resumes it."""
    command = shlex.join([prog, *argv])
    return f"{what}; the run is resumable: run the same command again to resume it ({command})"


def run_cli(prog: str, body: Callable[[list[str]], int | None], argv=None) -> int:
    """Run ``body(argv)`` (``sys.argv[1:]`` when ``argv`` is None) as the console script ``prog`` and return its
    exit status (see the module docstring): ``body``'s own int (None counts as 0); :data:`EXIT_USAGE` with
    ``PROG: error: MESSAGE`` on stderr for a :data:`USER_ERRORS` exception or a ``SystemExit`` carrying a message;
    :data:`EXIT_STOPPED` with its message for :class:`RunStopped`. A ``--debug`` word is taken out of ``argv``
    and makes user errors show their traceback too."""
    argv = sys.argv[1:] if argv is None else [str(a) for a in argv]
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    try:
        status = body(argv)
    except RunStopped as e:
        print(f"{prog}: {e}", file=sys.stderr)
        return EXIT_STOPPED
    except SystemExit as e:                        # --help (0), UsageError or SystemExit("message")
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(f"{getattr(e, 'usage', '')}{prog}: error: {e.code}", file=sys.stderr)
        return EXIT_USAGE
    except USER_ERRORS as e:
        if debug:
            traceback.print_exc()
        print(f"{prog}: error: {error_message(e)}" + ("" if debug else " (--debug shows the traceback)"),
              file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{prog}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    return EXIT_OK if status is None else int(status)


def _flat(data, prefix: str = "") -> dict:
    """``{"a": {"b": 1}}`` -> ``{"a.b": 1}`` (lists stay values)."""
    out = {}
    for key, value in data.items():
        if isinstance(value, dict) and value:
            out.update(_flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _has_checkpoints(folder: Path) -> bool:
    """Whether ``folder`` (or a fold folder directly inside it) holds training checkpoints."""
    return any(folder.glob("checkpoints/step_*.pt")) or any(folder.glob("*/checkpoints/step_*.pt"))


def save_run_config(cfg, out_dir: str | Path, resume: bool = True, may_differ: Iterable[str] = (),
                    resume_key: str = "resume") -> Path:
    """Write ``cfg`` (DictConfig or dataclass instance, already validated) as ``out_dir/config.yaml``.

    When ``resume`` is set and the folder already holds checkpoints with a ``config.yaml``, that file is only
    rewritten if it matches ``cfg`` on every key but those in ``may_differ`` (dotted keys that do not change
    what is trained: output folder, step cap, logging cadence, ...); otherwise :class:`aum.config.ConfigError`
    names the folder and each differing key with its two values (and that ``resume_key=false`` starts over),
    and nothing is written."""
    out_dir = Path(out_dir)
    path = out_dir / "config.yaml"
    node = cfg if isinstance(cfg, DictConfig) else OmegaConf.structured(cfg)
    if resume and path.is_file() and _has_checkpoints(out_dir):
        try:
            old = _flat(OmegaConf.to_container(OmegaConf.load(path)) or {})
        except Exception as e:  # noqa: BLE001 - YAML errors of several types
            raise ConfigError(f"{path}: cannot read the config of the run folder's checkpoints: {e}") from e
        new = _flat(OmegaConf.to_container(OmegaConf.create(OmegaConf.to_yaml(node, resolve=True))))
        skip, missing = set(may_differ), object()
        diff = [k for k in sorted(old.keys() | new.keys())
                if k not in skip and old.get(k, missing) != new.get(k, missing)]
        if diff:
            shown = "; ".join(f"{k}: {old.get(k, '(unset)')!r} in the run, {new.get(k, '(unset)')!r} now" for k in diff)
            raise ConfigError(f"run folder {out_dir} has checkpoints of a different config ({path}); differing "
                              f"keys: {shown}. Use another output folder, the run's own settings to resume it, "
                              f"or {resume_key}=false to start it over")
    return save_config(node, path)


def models_main(argv=None) -> int:
    """Entry point of ``aum-models`` (and ``python -m aum models``): the registry of released weights, one line
    per entry (name, family / preset / mixer, classes, feature preset, label set, whether it is cached, where it
    comes from), or one entry in full with ``aum-models NAME``. Exit status 0, 2 for an unknown name."""
    return run_cli("aum-models", _models, argv)


def _models(argv: list[str]) -> int:
    from aum.checkpoint import PRETRAINED, cached, get_pretrained
    from aum.checkpoint.hub import cache_root
    from aum.checkpoint.pretrained import LABEL_SETS
    p = CommandLine("aum-models", "The released weights aum loads by name: aum.create_model(NAME, pretrained=True), "
                    "load_checkpoint(NAME), --checkpoint NAME, --init imagenet [NAME]. Files are downloaded on first "
                    "use (Hugging Face cache: HF_HOME; other URLs: $AUM_CACHE, default ~/.cache/aum); with "
                    "HF_HUB_OFFLINE=1 only cached files are used.")
    p.add_argument("name", nargs="?", help="show this entry in full")
    p.add_argument("--family", choices=("aum", "dass"), help="only the entries of this encoder family")
    args = p.parse(argv)
    if args.name:
        e = get_pretrained(args.name)
        here = cached(e.name)
        arch = ", ".join(f"{k}={v}" for k, v in e.config_overrides.items())
        rows = [("name", e.name), ("what", e.description), ("model", f"{e.family} preset {e.preset} ({arch})"),
                ("features", e.features or "none (fine-tuning uses the benchmark's)"),
                ("labels", f"{e.labels}: {LABEL_SETS.get(e.labels, '')}" if e.labels else "-"),
                ("as init", e.init), ("source", e.source), ("sha256", e.sha256 or "not published (unchecked)"),
                ("cached", str(here) if here else f"no (downloaded on first use; URLs into {cache_root()})"),
                ("note", e.note or "-")]
        print("\n".join(f"{k:9} {v}" for k, v in rows))
        return EXIT_OK
    entries = [e for e in PRETRAINED.values() if args.family in (None, e.family)]
    table = [("name", "model", "classes", "features", "labels", "cached", "source")] + [
        (e.name, f"{e.family}:{e.preset}" + (f"/{dict(e.arch)['mixer']}" if "mixer" in dict(e.arch) else ""),
         str(e.num_classes), e.features or "-", e.labels or "-", "yes" if cached(e.name) else "-", e.source)
        for e in entries]
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]) - 1)]
    for row in table:
        print("  ".join(c.ljust(w) for c, w in zip(row, widths)) + "  " + row[-1])
    print(f"\n{len(entries)} entries; aum-models NAME shows one in full (description, checksum, note).")
    return EXIT_OK
