"""Build the separate HEAR evaluation environment (hear-eval-kit next to torch 2.11).

``python -m hear_api.setup_env [--venv PATH] [--force]`` creates a virtual environment holding:

1. ``torch`` / ``torchaudio`` at the project's version (2.11.0);
2. the pinned runtime dependencies of hear-eval-kit (``hear_api/requirements-hear.txt``:
   pytorch-lightning 1.9.5, pynvml 11.4.1, scikit-learn, sed_eval, dcase_util, ...);
3. ``heareval`` and ``hearvalidator`` with ``--no-deps`` (their own pins, numpy 1.19.2 and numba 0.48,
   cannot build on Python 3.11);
4. this project (see below), so ``hear_api`` and ``aum`` import there;
5. the fix for event tasks (hear-eval-kit issue 432) applied to the installed
   ``heareval/predictions/task_predictions.py`` (idempotent, see :func:`patch_heareval`).

Where this module runs decides where the environment goes and how the project gets into it:

- **From a checkout** (the folder above ``hear_api`` holds a ``pyproject.toml`` naming ``audio-mamba``,
  :func:`checkout_root`): default venv ``<repo>/.venv-hear`` (git-ignored); step 4 is ``pip install -e <repo>``;
  :func:`hear_env` puts the repository root on ``PYTHONPATH`` (the current working tree's code wins over
  whatever checkout the environment was built from); the fingerprint covers ``pyproject.toml``.
- **From an installed distribution** (a wheel in site-packages): default venv ``<cache>/hear-venv``, with
  ``<cache>`` the project's cache root (``$AUM_CACHE``, else ``~/.cache/aum``;
  :func:`aum.checkpoint.hub.cache_root`); step 4 installs the distribution's runtime requirements
  (``importlib.metadata``'s ``Requires-Dist`` without the extras' ones, torch/torchaudio kept at 2.11.0), not
  the project itself; :func:`hear_env` puts on ``PYTHONPATH`` an overlay folder
  ``<cache>/hear-overlay/<key>`` holding only symlinks to the installed packages hear_api needs
  (:data:`OVERLAY_PACKAGES`: ``aum``, ``eval``, ``hear_api``), so nothing else of the main environment's
  site-packages (its torch, numpy, ...) shadows the HEAR venv's own; the fingerprint covers the installed
  version and its ``Requires-Dist``.

``$AUM_HEAR_VENV`` (or ``--venv``) overrides the default venv in both cases.

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
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import time
from importlib import metadata
from pathlib import Path

from aum.atomic import atomic_write_text
from aum.checkpoint.hub import cache_root

try:
    import tomllib
except ModuleNotFoundError:        # Python 3.10: a line `name = "..."` is looked for instead
    tomllib = None

PACKAGE_DIR = Path(__file__).resolve().parent
REPO_ROOT = PACKAGE_DIR.parent     # a checkout's root, or site-packages when installed (see checkout_root)
DISTRIBUTION = "audio-mamba"
# the first-party packages hear_api imports (hear_api -> aum, eval; eval -> aum): what the overlay links
OVERLAY_PACKAGES = ("aum", "eval", "hear_api")
TF_STUB = PACKAGE_DIR / "tf_stub"
REQUIREMENTS = PACKAGE_DIR / "requirements-hear.txt"
TORCH_VERSION = "2.11.0"
HEAREVAL = "heareval==2021.1.3"
HEARVALIDATOR = "hearvalidator==2021.0.2"
MARKER = ".aum-hear-ready"

# hear-eval-kit issue 432: with pytorch-lightning >= 1.6 the test of an event task fails with KeyError: <epoch>.
PATCH_OLD = "trainer.fit_loop.current_epoch = grid_point.epoch"
PATCH_NEW = "trainer.fit_loop.epoch_progress.current.completed = grid_point.epoch"


def _project_name(text: str) -> str | None:
    """``[project] name`` of a ``pyproject.toml`` text (``None`` when it has none or does not parse)."""
    if tomllib is None:
        match = re.search(r"""(?m)^name\s*=\s*["']([^"']+)["']""", text)
        return match.group(1) if match else None
    try:
        return tomllib.loads(text).get("project", {}).get("name")
    except tomllib.TOMLDecodeError:
        return None


def checkout_root() -> Path | None:
    """The repository root when this ``hear_api`` runs from a checkout (``REPO_ROOT/pyproject.toml`` names
    :data:`DISTRIBUTION`), else ``None`` (an installed distribution: ``REPO_ROOT`` is site-packages)."""
    try:
        text = (REPO_ROOT / "pyproject.toml").read_text()
    except OSError:
        return None
    return REPO_ROOT if _project_name(text) == DISTRIBUTION else None


def _distribution_metadata() -> tuple[str, list[str]]:
    """``(version, Requires-Dist lines)`` of the installed :data:`DISTRIBUTION`."""
    try:
        dist = metadata.distribution(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        raise RuntimeError(f"{PACKAGE_DIR}: neither a checkout ({REPO_ROOT / 'pyproject.toml'} does not name "
                           f"{DISTRIBUTION}) nor an installed distribution ({DISTRIBUTION} not found by "
                           f"importlib.metadata); install it (pip install {DISTRIBUTION})") from None
    return dist.version, list(dist.requires or [])


def _requirement_name(req: str) -> str:
    """Normalised project name of a requirement string (``Torch_Audio>=2`` -> ``torch-audio``)."""
    match = re.match(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)", req)
    if not match:
        raise ValueError(f"{DISTRIBUTION} metadata: cannot read the requirement {req!r}")
    return re.sub(r"[-_.]+", "-", match.group(1)).lower()


def runtime_requirements() -> list[str]:
    """What the installed distribution needs at run time, for the HEAR venv: its ``Requires-Dist`` without the
    requirements of extras (a marker naming ``extra``), torch and torchaudio pinned to :data:`TORCH_VERSION`."""
    _, requires = _distribution_metadata()
    out = []
    for req in requires:
        marker = req.partition(";")[2]
        if re.search(r"\bextra\b", marker) or _requirement_name(req) in ("torch", "torchaudio"):
            continue
        out.append(req.strip())
    return [f"torch=={TORCH_VERSION}", f"torchaudio=={TORCH_VERSION}", *out]


def default_venv() -> Path:
    """The HEAR environment to use: ``$AUM_HEAR_VENV`` if set, else ``<repo>/.venv-hear`` in a checkout and
    ``<cache root>/hear-venv`` (``$AUM_CACHE`` or ``~/.cache/aum``) for an installed distribution."""
    if os.environ.get("AUM_HEAR_VENV"):
        return Path(os.environ["AUM_HEAR_VENV"]).expanduser()
    root = checkout_root()
    return root / ".venv-hear" if root else cache_root() / "hear-venv"


def venv_python(venv: str | os.PathLike) -> Path:
    """Path of the Python interpreter inside ``venv``."""
    return Path(venv) / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def _package_dir(name: str) -> Path:
    """The folder of the importable package ``name`` in this environment (its spec is found, not imported)."""
    spec = importlib.util.find_spec(name)
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(f"the package {name!r} that hear_api needs is not importable here "
                           f"(is {DISTRIBUTION} installed completely?)")
    return Path(list(spec.submodule_search_locations)[0]).resolve()


def _link(link: Path, target: Path) -> None:
    """Make ``link`` a symlink to ``target`` (replaced atomically when it points elsewhere)."""
    if link.is_symlink() and Path(os.readlink(link)) == target:
        return
    tmp = link.with_name(f".{link.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    tmp.symlink_to(target, target_is_directory=True)
    os.replace(tmp, link)


def overlay() -> Path:
    """Create (or reuse) the overlay folder for an installed distribution and return it:
    ``<cache root>/hear-overlay/<key>`` holding one symlink per :data:`OVERLAY_PACKAGES` entry to that
    package's installed folder (``key``: a hash of those folders, so two environments never share one)."""
    targets = {name: _package_dir(name) for name in OVERLAY_PACKAGES}
    key = hashlib.sha256("\0".join(str(t) for t in targets.values()).encode()).hexdigest()[:12]
    folder = cache_root() / "hear-overlay" / key
    folder.mkdir(parents=True, exist_ok=True)
    for name, target in targets.items():
        _link(folder / name, target)
    return folder


def hear_env(predictions: bool = False, base: dict | None = None) -> dict:
    """Environment variables for running hear-eval-kit commands in the HEAR environment.

    ``PYTHONPATH`` starts with the TensorFlow stand-in and then, in a checkout, this repository's root (so the
    current working tree's ``hear_api``/``aum`` win over whatever checkout the environment was built from), for
    an installed distribution the :func:`overlay` folder (never site-packages itself). With
    ``predictions=True`` also ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` (for heareval's predictions runner only).
    """
    env = dict(os.environ if base is None else base)
    code = checkout_root() or overlay()
    parts = [str(TF_STUB), str(code)] + [p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    env["PYTHONPATH"] = os.pathsep.join(parts)
    env.pop("TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD", None)
    if predictions:
        env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] = "1"
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def requirements_fingerprint() -> str:
    """Hash of everything that decides the environment's contents (pins, versions, patch, and the project's
    own requirements: a checkout's ``pyproject.toml``, whose dependencies ``pip install -e .`` brings in, or
    the installed distribution's version and ``Requires-Dist``)."""
    h = hashlib.sha256()
    root = checkout_root()
    if root:
        project = (root / "pyproject.toml").read_text()
    else:
        version, requires = _distribution_metadata()
        project = "\n".join([f"{DISTRIBUTION}=={version}", *requires])
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
    # the working folder is on sys.path under -c: the checkout's root, or the venv (never site-packages)
    cwd = checkout_root() or Path(venv)
    subprocess.run([str(venv_python(venv)), "-c", code], check=True, env=hear_env(), cwd=str(cwd))


def setup(venv: str | os.PathLike | None = None, force: bool = False, python: str | None = None,
          editable: bool = True) -> Path:
    """Create (or reuse) the HEAR environment at ``venv`` and return its path; see the module docstring.

    ``python`` is the interpreter that creates the venv (default: the one running this). ``force`` rebuilds
    from scratch. ``editable`` (checkout only) installs the repository with ``-e``; an installed distribution
    gets its :func:`runtime_requirements` instead (its code comes from :func:`overlay`). Raises ``subprocess.CalledProcessError`` when an install step fails (e.g. no network).
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
    root = checkout_root()
    if root:
        _pip(venv, *(["-e", str(root)] if editable else [str(root)]))
    else:
        _pip(venv, *runtime_requirements())
    print(f"heareval event-task fix: {patch_heareval(venv)}")
    smoke_check(venv)
    atomic_write_text(venv / MARKER, requirements_fingerprint() + "\n")
    print(f"HEAR environment ready at {venv} in {time.time() - t0:.0f} s")
    return venv


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m hear_api.setup_env [--venv PATH] [--force] [--check]``."""
    ap = argparse.ArgumentParser(prog="python -m hear_api.setup_env", description=__doc__.split("\n\n")[0])
    ap.add_argument("--venv", default=None, help=f"where to build it (default $AUM_HEAR_VENV or {default_venv()})")
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
