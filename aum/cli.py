"""What every command-line entry point shares: exit statuses, turning user errors into one message, and the run
folder's ``config.yaml``.

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

import shlex
import sys
import traceback
from pathlib import Path
from typing import Callable, Iterable

from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from aum.checkpoint import CheckpointError
from aum.config import ConfigError, save_config

__all__ = ["EXIT_OK", "EXIT_USAGE", "EXIT_STOPPED", "EXIT_INTERRUPTED", "USER_ERRORS", "RunStopped", "run_cli",
           "error_message", "stopped_message", "save_run_config"]

EXIT_OK, EXIT_USAGE, EXIT_STOPPED, EXIT_INTERRUPTED = 0, 2, 3, 130

#: Exceptions that mean "the input is wrong", not "the program is wrong": config, data-source, manifest,
#: audio and checkpoint problems (the project's own error classes derive from these).
USER_ERRORS = (ValueError, KeyError, OSError, OmegaConfBaseException, CheckpointError)


class RunStopped(Exception):
    """A training run stopped by a signal after writing its checkpoint; rerunning the same command resumes it."""


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
    except SystemExit as e:                        # argparse (0 / 2 itself) or SystemExit("message")
        if e.code is None or isinstance(e.code, int):
            return int(e.code or 0)
        print(f"{prog}: error: {e.code}", file=sys.stderr)
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
