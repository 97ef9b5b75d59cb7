"""Shared test fixtures, and the guard that keeps the fast tier fast (``make test-fast``)."""
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")
# marks (pyproject.toml) of the tiers whose tests may start Python processes; `make test-fast` leaves them out
PROCESS_MARKS = {"subprocess", "hear_env", "slurm", "ddp"}
_VENV_BIN = Path(sys.executable).parent


def _starts_python(args) -> bool:
    """Whether Popen ``args`` run a Python interpreter or one of this environment's console scripts."""
    first = args if isinstance(args, (str, bytes, os.PathLike)) else (list(args) or [""])[0]
    first = os.fsdecode(first).split()[0] if os.fsdecode(first).strip() else ""
    path = Path(first)
    return path.name.startswith("python") or str(path) == sys.executable or (
        path.parent == _VENV_BIN and path.name.startswith("aum-"))


@pytest.fixture(autouse=True)
def python_processes_need_a_mark(request, monkeypatch):
    """A test that starts a Python process (``python -m ...``, a console script, a helper script) must carry one
    of :data:`PROCESS_MARKS`, so that the fast tier never pays for interpreter start-ups: unmarked, the start
    fails with a message naming the mark. Other programs (the C compiler of the fused scan, ``sinfo``) may run."""
    if PROCESS_MARKS & {m.name for m in request.node.iter_markers()}:
        return
    real_init = subprocess.Popen.__init__

    def guarded_init(self, args, *rest, **kwargs):
        if _starts_python(args):
            raise AssertionError(f"{request.node.nodeid} starts a Python process ({args!r:.120}): mark it "
                                 f"@pytest.mark.subprocess (see the markers in pyproject.toml)")
        real_init(self, args, *rest, **kwargs)

    monkeypatch.setattr(subprocess.Popen, "__init__", guarded_init)


@pytest.fixture
def single_process_env(monkeypatch):
    """Hide torchrun / SLURM launch variables so the engine runs as one process."""
    for k in list(os.environ):
        if k in LAUNCH_VARS or k.startswith("SLURM_"):
            monkeypatch.delenv(k)


@pytest.fixture
def one_thread():
    """Run the test with one torch thread (restored after): the machine's 2 cores are shared, and small models
    run faster on one thread there. Modules use it with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture
def vim_state_dict():
    """A small Vision Mamba ImageNet-format state dict (width 32, 2 Bi-Bi layers, RGB 16x16 patches, 197 positions,
    a 1000-class head), seeded: what a released ``vim_s_midclstok`` file holds under ``"model"``, at toy size."""
    from aum.models import create_model
    torch.manual_seed(1)
    layers = create_model("tiny", embed_dim=32, depth=2, mixer="v2").state_dict()
    sd = {k: torch.randn_like(v) for k, v in layers.items() if k.startswith("layers.")}
    sd.update({"patch_embed.proj.weight": torch.randn(32, 3, 16, 16), "patch_embed.proj.bias": torch.randn(32),
               "pos_embed": torch.randn(1, 197, 32), "cls_token": torch.randn(1, 1, 32),
               "norm_f.weight": torch.randn(32), "head.weight": torch.randn(1000, 32), "head.bias": torch.randn(1000)})
    return sd
