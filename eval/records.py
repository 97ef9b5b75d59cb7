"""One JSON record per run: what every fine-tuning, probing and HEAR run writes, and the tables read."""
from __future__ import annotations

import json
import os
import subprocess
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from aum.atomic import atomic_write_text

MODES = ("finetune", "probe", "hear", "niah")
#: what a ``niah`` record (eval.niah) must say in ``extra``: the cell of the needle-in-a-haystack grid
NIAH_KEYS = ("haystack", "length_frames", "position", "run_mode")
INITS = ("scratch", "imagenet", "ssl", "official")


@dataclass
class ResultRecord:
    """A single score: ``benchmark`` x ``mode`` x ``init`` x ``model`` x ``seed`` x ``fold``.

    ``init`` is how the encoder started: ``scratch`` (random), ``imagenet`` (Vision Mamba weights),
    ``ssl`` (our self-supervised pretraining) or ``official`` (released AuM weights). ``fold`` is the
    cross-validation fold, or ``None`` for a fixed test split. ``metric`` names the score (``accuracy``,
    ``mAP``, or a HEAR metric such as ``top1_acc``) and ``value`` holds it in [0, 1]. A ``niah`` record (one
    cell of :mod:`eval.niah`) also names its cell in ``extra`` (:data:`NIAH_KEYS`, and ``snr_db`` for a noise
    haystack), and its file name does too.
    """

    benchmark: str
    mode: str
    init: str
    model: str
    metric: str
    value: float
    seed: int = 0
    fold: int | str | None = None
    checkpoint: str | None = None
    config: dict = field(default_factory=dict)
    extra: dict = field(default_factory=dict)
    code_version: str = ""
    wall_time_s: float = 0.0
    created: str = ""

    def __post_init__(self):
        if self.mode not in MODES:
            raise ValueError(f"unknown mode {self.mode!r}; choose one of {MODES}")
        if self.init not in INITS:
            raise ValueError(f"unknown init {self.init!r}; choose one of {INITS}")
        if self.mode == "niah" and not all(k in self.extra for k in NIAH_KEYS):
            raise ValueError(f"a niah record needs {', '.join(NIAH_KEYS)} in extra, got {sorted(self.extra)}")
        self.code_version = self.code_version or code_version()
        self.created = self.created or time.strftime("%Y-%m-%dT%H:%M:%S")

    def filename(self) -> str:
        """A file name unique to this record's coordinates."""
        fold = "" if self.fold is None else f"_fold{self.fold}"
        cell = ""
        if self.mode == "niah":
            e = self.extra
            snr = "" if e.get("snr_db") is None else f"_snr{float(e['snr_db']):g}"
            cell = (f"_{e['haystack']}{snr}_{int(e['length_frames'])}f_pos{float(e['position']):g}"
                    f"_{e['run_mode']}")
        return f"{self.benchmark}_{self.mode}_{self.init}_{self.model}_seed{self.seed}{fold}{cell}.json"


def code_version() -> str:
    """The git commit of the code that produced a result (``+dirty`` with local changes), or ``unknown``."""
    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "-C", str(root), "rev-parse", "--short", "HEAD"], capture_output=True,
                             text=True, timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return rev + ("+dirty" if dirty else "")
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def write_record(record: ResultRecord, folder: str | os.PathLike) -> Path:
    """Write ``record`` atomically as ``folder/<coordinates>.json``; returns the path."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / record.filename()
    atomic_write_text(path, json.dumps(asdict(record), indent=2, default=str))
    return path


def read_records(folder: str | os.PathLike) -> list[ResultRecord]:
    """Every ``*.json`` record under ``folder`` (recursively); a malformed file is an error naming it."""
    records = []
    for path in sorted(Path(folder).rglob("*.json")):
        try:
            records.append(ResultRecord(**json.loads(path.read_text())))
        except (json.JSONDecodeError, TypeError, ValueError) as err:
            raise ValueError(f"{path}: not a result record ({err})") from err
    return records
