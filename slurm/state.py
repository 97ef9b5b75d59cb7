"""The launcher's record of a sweep, ``SWEEP_DIR/sweep.json``: each job's spec, job id, log and state, read by
``aum-sweep status`` / ``tables`` / ``cancel`` and rewritten by the launcher as jobs are submitted and end.
"""
from __future__ import annotations

import json
from pathlib import Path

from aum.atomic import atomic_write_text
from slurm.spec import SweepError

__all__ = ["STATE_FILE", "read_state", "write_state"]


STATE_FILE = "sweep.json"


def read_state(sweep_dir) -> dict:
    """The launcher's record of a sweep (``sweep.json``); :class:`SweepError` when there is none."""
    path = Path(sweep_dir) / STATE_FILE
    if not path.is_file():
        raise SweepError(f"{sweep_dir} is not a sweep folder (no {STATE_FILE})")
    return json.loads(path.read_text())


def write_state(sweep_dir: Path, state: dict) -> None:
    """Replace the sweep's ``sweep.json`` atomically with ``state``."""
    atomic_write_text(Path(sweep_dir) / STATE_FILE, json.dumps(state, indent=2, default=str))
