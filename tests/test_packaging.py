"""The distribution: ``python -m build`` makes a wheel and an sdist of ``audio-mamba`` that carry the package data
(the fused scan's C source, the recipes, the demo sweep, the HEAR requirements), and the wheel, installed into a
fresh venv with no source tree in sight, runs ``aum-encode`` (the built-in default job) and the other entry points.

The fresh venv borrows this environment's installed dependencies (torch, ...) through a ``.pth`` path line, which
adds the folder without running the ``.pth`` files inside it, so an editable install of this checkout stays
invisible there: the test checks that ``import aum`` fails before the wheel is installed.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import tarfile
import zipfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DIST = "audio_mamba-0.1.0"
DATA = ("aum/ops/scan_fused.c", "eval/recipes/audioset.yaml", "eval/recipes/esc50.yaml", "slurm/examples/demo.yaml",
        "hear_api/requirements-hear.txt")


def _run(args, **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in args], capture_output=True, text=True, timeout=300, **kw)


def _source_tree(dest: Path) -> Path:
    """A copy of the checkout as git sees it (tracked and untracked-but-not-ignored files): what a clone builds."""
    listed = _run(["git", "-C", REPO, "ls-files", "-co", "--exclude-standard", "-z"])
    if listed.returncode != 0:
        pytest.skip(f"not a git checkout: {listed.stderr.strip()}")
    for rel in filter(None, listed.stdout.split("\0")):
        if (REPO / rel).is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(REPO / rel, dest / rel)
    return dest


@pytest.mark.slow
@pytest.mark.subprocess
def test_wheel_and_sdist_install_and_run_without_the_source_tree(tmp_path):
    pytest.importorskip("build")
    src, dist, cwd = _source_tree(tmp_path / "src"), tmp_path / "dist", tmp_path / "elsewhere"
    cwd.mkdir()
    res = _run([sys.executable, "-m", "build", "--no-isolation", "--outdir", dist, src])
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    wheel, sdist = dist / f"{DIST}-py3-none-any.whl", dist / f"{DIST}.tar.gz"
    assert wheel.is_file() and sdist.is_file(), sorted(p.name for p in dist.iterdir())
    with tarfile.open(sdist) as tar:
        names = set(tar.getnames())
    assert {f"{DIST}/{p}" for p in DATA + ("pyproject.toml", "README.md")} <= names
    with zipfile.ZipFile(wheel) as whl:
        names = set(whl.namelist())
        entry_points = whl.read(f"{DIST}.dist-info/entry_points.txt").decode()
    assert set(DATA) <= names and not any(n.startswith(("tests/", "configs/")) for n in names)
    assert "aum-models = aum.cli:models_main" in entry_points and "aum-encode = aum.demo:main" in entry_points

    venv = tmp_path / "venv"
    assert _run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    python = venv / "bin" / "python"
    site = Path(_run([python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]).stdout.strip())
    ours = dict.fromkeys([sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]])
    (site / "deps.pth").write_text("".join(f"{p}\n" for p in ours))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    env["OMP_NUM_THREADS"] = "1"
    before = _run([python, "-c", "import torch, huggingface_hub; import aum"], cwd=cwd, env=env)
    assert before.returncode == 1 and "No module named 'aum'" in before.stderr, before.stderr[-2000:]

    res = _run([sys.executable, "-m", "pip", "--python", python, "install", "--no-deps", "--no-index", wheel],
               cwd=cwd, env=env)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    where = _run([python, "-c", "import aum, slurm.demo; print(aum.__file__); print(slurm.demo.DEMO)"], cwd=cwd,
                 env=env)
    assert where.returncode == 0, where.stderr[-2000:]
    assert all(line.startswith(str(site)) for line in where.stdout.split()), where.stdout
    encode = _run([venv / "bin" / "aum-encode"], cwd=cwd, env=env)
    assert encode.returncode == 0, encode.stderr[-3000:]
    assert "built-in generated clip" in encode.stdout and "tokens" in encode.stdout
    models = _run([venv / "bin" / "aum-models", "--family", "dass"], cwd=cwd, env=env)
    assert models.returncode == 0 and "dass_small_sslam" in models.stdout, models.stderr[-2000:]
    demo = _run([python, "-c", "from slurm.demo import DEMO; from slurm.spec import load_sweep; "
                               "print(len(load_sweep(DEMO, out_dir='o').jobs))"], cwd=cwd, env=env)
    assert demo.returncode == 0 and int(demo.stdout) > 0, demo.stderr[-2000:]
