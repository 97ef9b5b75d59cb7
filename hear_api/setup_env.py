"""Build the separate HEAR evaluation environment (hear-eval-kit next to torch 2.11).

``python -m hear_api.setup_env [--venv PATH] [--force]`` creates a virtual environment (default
``.venv-hear`` in the repository root, git-ignored) holding:

1. ``torch`` / ``torchaudio`` at the project's version (2.11.0);
2. the pinned runtime dependencies of hear-eval-kit (``hear_api/requirements-hear.txt``:
   pytorch-lightning 1.9.5, pynvml 11.4.1, scikit-learn, sed_eval, dcase_util, ...);
3. ``heareval`` and ``hearvalidator`` with ``--no-deps`` (their own pins, numpy 1.19.2 and numba 0.48,
   cannot build on Python 3.11);
4. this repository (``pip install -e .``), so ``hear_api`` and ``aum`` import there;
5. the fix for event tasks (hear-eval-kit issue 432) applied to the installed
   ``heareval/predictions/task_predictions.py`` (idempotent, see :func:`patch_heareval`).

TensorFlow is not installed: the commands run with ``hear_api/tf_stub`` on ``PYTHONPATH``
(:func:`hear_env`), a stand-in providing the few names heareval and hearvalidator touch. The predictions
runner additionally needs ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (torch >= 2.6 refuses to unpickle
Lightning checkpoints otherwise); :func:`hear_env` sets it only when asked (``predictions=True``).

Nothing here changes the project's own environment: the pins live in the HEAR environment only.
A finished environment carries a marker file; running the command again is a no-op unless the
requirements changed or ``--force`` is given.
"""
from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent
TF_STUB = PACKAGE_DIR / "tf_stub"
REQUIREMENTS = PACKAGE_DIR / "requirements-hear.txt"
DEFAULT_VENV = REPO_ROOT / ".venv-hear"
TORCH_VERSION = "2.11.0"
HEAREVAL = "heareval==2021.1.3"
HEARVALIDATOR = "hearvalidator==2021.0.2"
MARKER = ".aum-hear-ready"

# hear-eval-kit issue 432: with pytorch-lightning >= 1.6 the test of an event task fails with KeyError: <epoch>.
PATCH_OLD = "trainer.fit_loop.current_epoch = grid_point.epoch"
PATCH_NEW = "trainer.fit_loop.epoch_progress.current.completed = grid_point.epoch"


def default_venv() -> Path:
    """The HEAR environment to use: ``$AUM_HEAR_VENV`` if set, else ``<repo>/.venv-hear``."""
    return Path(os.environ.get("AUM_HEAR_VENV") or DEFAULT_VENV).expanduser()


def venv_python(venv: str | os.PathLike) -> Path:
    """Path of the Python interpreter inside ``venv``."""
    return Path(venv) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def hear_env(predictions: bool = False, base: dict | None = None) -> dict:
    """Environment variables for running hear-eval-kit commands in the HEAR environment.

    ``PYTHONPATH`` starts with the TensorFlow stand-in and this repository's root (so the current working
    tree's ``hear_api``/``aum`` win over whatever checkout the environment was built from). With
    ``predictions=True`` also ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (for heareval's predictions runner only).
    """
    env = dict(os.environ if base is None else base)
    parts = [str(TF_STUB), str(REPO_ROOT)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    if predictions:
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def requirements_fingerprint() -> str:
    """Hash of everything that decides the environment's contents (pins, versions, patch, and the project's
    own ``pyproject.toml``, whose dependencies ``pip install -e .`` brings in)."""
    h = hashlib.sha256()
    pyproject = REPO_ROOT / "pyproject.toml"
    project = pyproject.read_text() if pyproject.is_file() else ""
    for part in (REQUIREMENTS.read_text(), TORCH_VERSION, HEAREVAL, HEARVALIDATOR, PATCH_NEW, project):
        h.update(part.encode() + b"\0")
    return h.hexdigest()[:16]


def is_ready(venv: str | os.PathLike | None = None) -> bool:
    """Whether ``venv`` is a finished HEAR environment built from the current requirements."""
    venv = Path(venv) if venv else default_venv()
    marker = venv / MARKER
    return (venv_python(venv).exists() and marker.is_file()
            and marker.read_text().strip() == requirements_fingerprint())


def patch_heareval(venv: str | os.PathLike) -> str:
    """Apply the event-task fix to the installed heareval of ``venv``; returns ``'patched'`` or
    ``'already patched'``. Raises ``RuntimeError`` when the file holds neither the old nor the new line
    (an unknown heareval version)."""
    out = subprocess.run([str(venv_python(venv)), "-c",
                          "import importlib.util as u; print(u.find_spec('heareval').submodule_search_locations[0])"],
                         check=True, capture_output=True, text=True).stdout.strip()
    path = Path(out) / "predictions" / "task_predictions.py"
    text = path.read_text()
    if PATCH_NEW in text and PATCH_OLD not in text:
        return "already patched"
    if PATCH_OLD not in text:
        raise RuntimeError(f"{path}: neither {PATCH_OLD!r} nor {PATCH_NEW!r} found; unknown heareval version")
    path.write_text(text.replace(PATCH_OLD, PATCH_NEW))
    for cached in path.parent.glob("__pycache__/task_predictions*.pyc"):
        cached.unlink()
    return "patched"


def _pip(venv: Path, *args: str, quiet: bool = True) -> None:
    cmd = [str(venv_python(venv)), "-m", "pip", "install", *(["-q"] if quiet else []), *args]
    print("+", " ".join(cmd), flush=True)
    subprocess.run(cmd, check=True)


def smoke_check(venv: str | os.PathLike) -> None:
    """Import the hear-eval-kit entry points and our module inside ``venv`` (raises on failure)."""
    code = ("import heareval.embeddings.runner, heareval.predictions.runner, hearvalidator.validate, "
            "pytorch_lightning as pl, tensorflow as tf, hear_api; "
            "assert pl.__version__.startswith('1.'), pl.__version__; assert getattr(tf, 'AUM_STUB', False); "
            "print('hear env ok: pytorch-lightning', pl.__version__)")
    subprocess.run([str(venv_python(venv)), "-c", code], check=True, env=hear_env(), cwd=str(REPO_ROOT))


def setup(venv: str | os.PathLike | None = None, force: bool = False, python: str | None = None,
          editable: bool = True) -> Path:
    """Create (or reuse) the HEAR environment at ``venv`` and return its path; see the module docstring.

    ``python`` is the interpreter that creates the venv (default: the one running this). ``force`` rebuilds
    from scratch. Raises ``subprocess.CalledProcessError`` when an install step fails (e.g. no network).
    """
    venv = Path(venv) if venv else default_venv()
    if is_ready(venv) and not force:
        print(f"HEAR environment {venv} is ready (requirements {requirements_fingerprint()})")
        return venv
    t0 = time.time()
    if force and venv.exists():
        shutil.rmtree(venv)
    if not venv_python(venv).exists():
        venv.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run([python or sys.executable, "-m", "venv", str(venv)], check=True)
    (venv / MARKER).unlink(missing_ok=True)
    _pip(venv, f"torch=={TORCH_VERSION}", f"torchaudio=={TORCH_VERSION}")
    _pip(venv, "-r", str(REQUIREMENTS))
    _pip(venv, "--no-deps", HEAREVAL, HEARVALIDATOR)
    _pip(venv, *(["-e", str(REPO_ROOT)] if editable else [str(REPO_ROOT)]))
    print(f"heareval event-task fix: {patch_heareval(venv)}")
    smoke_check(venv)
    (venv / MARKER).write_text(requirements_fingerprint() + "\n")
    print(f"HEAR environment ready at {venv} in {time.time() - t0:.0f} s")
    return venv


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m hear_api.setup_env [--venv PATH] [--force] [--check]``."""
    ap = argparse.ArgumentParser(prog="python -m hear_api.setup_env", description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=None, help=f"where to build it (default $AUM_HEAR_VENV or {DEFAULT_VENV})")
    ap.add_argument("--force", action="store_true", help="rebuild from scratch")
    ap.add_argument("--python", default=None, help="interpreter that creates the venv (default: this one)")
    ap.add_argument("--check", action="store_true", help="only report whether the environment is ready")
    args = ap.parse_args(argv)
    venv = Path(args.venv) if args.venv else default_venv()
    if args.check:
        ready = is_ready(venv)
        print(f"{venv}: {'ready' if ready else 'not ready'}")
        return 0 if ready else 1
    setup(venv, force=args.force, python=args.python)
    return 0


if __name__ == "__main__":
    sys.exit(main())
