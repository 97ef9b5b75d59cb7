"""ESC-50 and ESC-10 from the ESC-50 download (github.com/karolpiczak/ESC-50).

Layout read::

    ROOT/meta/esc50.csv     filename,fold,target,category,esc10,src_file,take
    ROOT/audio/1-100032-A-0.wav ...

``esc10`` keeps the rows whose ``esc10`` column is true (400 clips, 10 classes). A listed ``.wav`` may also be
present as a converted copy with the same stem (``.flac``/``.ogg``). Classes are in ESC-50 ``target`` order; the
manifest has ``split = fold<k>``, ``fold = k`` and ``group = src_file`` (the Freesound recording).
"""
from __future__ import annotations

import csv
from pathlib import Path

from eval.prepare.common import (PrepareError, Prepared, check_splits, missing_error, require_columns, require_file,
                                 with_any_extension)

COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")


def prepare(root, audio=None, subset: str = "esc50") -> Prepared:
    """Manifest entries of ESC-50 (``subset="esc50"``) or ESC-10 (``"esc10"``) under ``root``; ``audio`` overrides
    the clip folder (default ``ROOT/audio``)."""
    if subset not in ("esc50", "esc10"):
        raise ValueError(f"subset must be 'esc50' or 'esc10', got {subset!r}")
    root = Path(root)
    meta = require_file(root / "meta" / "esc50.csv", "the metadata table meta/esc50.csv", subset)
    audio_dir = Path(audio) if audio else root / "audio"
    with open(meta, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        require_columns(reader.fieldnames, COLUMNS, "meta/esc50.csv", subset)
        rows = list(reader)
    if subset == "esc10":
        rows = [r for r in rows if r["esc10"].strip().lower() in ("true", "1")]
    if not rows:
        raise PrepareError(f"{subset}: meta/esc50.csv lists no clips for this subset")
    names: dict[int, str] = {}
    for r in rows:
        target, cat = int(r["target"]), r["category"].strip()
        if names.setdefault(target, cat) != cat:
            raise PrepareError(f"{subset}: target {target} is both {names[target]!r} and {cat!r} in meta/esc50.csv")
    bad_folds = sorted({r["fold"] for r in rows if r["fold"].strip() not in ("1", "2", "3", "4", "5")})
    if bad_folds:
        raise PrepareError(f"{subset}: fold values {bad_folds} in meta/esc50.csv are not 1-5")
    entries, missing = [], []
    for r in rows:
        path = with_any_extension(audio_dir / r["filename"])
        if path is None:
            missing.append(r["filename"])
            continue
        fold = int(r["fold"])
        entries.append({"path": str(path.resolve()), "labels": [r["category"].strip()], "split": f"fold{fold}",
                        "fold": fold, "group": r["src_file"].strip()})
    if missing:
        raise missing_error(subset, missing, len(rows), audio_dir)
    counts = check_splits(subset, entries, [f"fold{k}" for k in range(1, 6)])
    return Prepared(entries, [names[t] for t in sorted(names)], {"splits": counts})
