"""Turn official dataset downloads into one manifest format (see :mod:`eval.prepare.common`).

    python -m eval.prepare NAME ROOT OUT [--audio PATH] [--strict] [--full-videos]

``NAME`` is a benchmark: ``audioset``, ``audioset20k``, ``vggsound``, ``voxceleb``, ``speechcommands``,
``epic_sounds``, ``esc50``, ``esc10``, or ``custom`` (a folder with ``meta.csv``). ``ROOT`` is the download as its
maintainers ship it (each module's docstring shows the layout it reads); ``OUT`` receives ``manifest.jsonl``,
``classes.txt`` and ``prepare_report.json``. Problems (missing files, unknown labels, empty splits) stop here
with a message that says which and how many, before any training.
"""
from __future__ import annotations

import os
from functools import partial
from pathlib import Path

from eval.prepare import audioset, custom, epic_sounds, esc50, speechcommands, vggsound, voxceleb
from eval.prepare.common import CLASSES, MANIFEST, REPORT, PrepareError, Prepared, read_classes, write_prepared

__all__ = ["PREPARERS", "prepare", "PrepareError", "Prepared", "read_classes", "MANIFEST", "CLASSES", "REPORT"]

PREPARERS = {
    "audioset": partial(audioset.prepare, subset="2m"),
    "audioset20k": partial(audioset.prepare, subset="20k"),
    "vggsound": vggsound.prepare,
    "voxceleb": voxceleb.prepare,
    "speechcommands": speechcommands.prepare,
    "epic_sounds": epic_sounds.prepare,
    "esc50": partial(esc50.prepare, subset="esc50"),
    "esc10": partial(esc50.prepare, subset="esc10"),
    "custom": custom.prepare,
}


def prepare(name: str, root: str | os.PathLike, out: str | os.PathLike | None = None, **options) -> Prepared:
    """Run preparer ``name`` on the download at ``root``; with ``out`` also write the manifest files there.
    ``options`` are the preparer's keyword arguments (``audio``, and ``strict``/``full_videos`` where they apply)."""
    if name not in PREPARERS:
        raise KeyError(f"unknown dataset {name!r}; choose one of {sorted(PREPARERS)}")
    if not Path(root).is_dir():
        raise PrepareError(f"{name}: download folder {root} not found")
    prepared = PREPARERS[name](root, **options)
    if out is not None:
        write_prepared(prepared, out, name)
    return prepared
