"""ESC-50 and ESC-10: the one reader of their metadata, for the preparer, the probes and the HEAR task writer.

Two layouts are read, found by their metadata file:

- the ESC-50 download (github.com/karolpiczak/ESC-50)::

      ROOT/meta/esc50.csv     filename,fold,target,category,esc10,src_file,take
      ROOT/audio/1-100032-A-0.wav ...

- a converted pack (``../shared/data/esc10``, ``esc50_fold4``): ``ROOT/meta.csv`` with ``filename`` (relative to
  ROOT, e.g. ``audio/1-100032-A-0.flac``), ``fold``, ``label`` (or ``category``) and optionally a class index
  (``target``, ``target_esc50`` or ``target_esc10``), ``esc10`` and ``src_file``.

``esc10`` keeps the rows whose ``esc10`` column is true (400 clips, 10 classes) where the table has that column.
A listed ``.wav`` may also be present as a converted copy with the same stem (``.flac``/``.ogg``). Classes are in
class-index order (ESC-50 ``target``; sorted names for a table without an index). Entries have ``split = fold<k>``
and ``fold = k`` (the ESC folds 1-5: our one fold naming; HEAR's ``fold00`` names exist only in the task files
:mod:`hear_api.tasks` writes) and ``group = src_file`` (the Freesound recording) where the table has it.
"""
from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

from eval.prepare.common import (PrepareError, Prepared, check_splits, missing_error, require_columns,
                                 with_any_extension)

COLUMNS = ("filename", "fold", "target", "category", "esc10", "src_file", "take")
PACK_COLUMNS = ("filename", "fold")
TARGET_COLUMNS = ("target", "target_esc50", "target_esc10")
FOLDS = tuple(range(1, 6))
SUBSETS = ("esc50", "esc10")


@dataclass
class EscMeta:
    """The clips an ESC metadata table lists: manifest ``entries`` (every listed row of the subset; ``path`` is
    the file found, or the listed path when absent), ``classes`` in class-index order, the listed file names
    that are ``missing`` on disk, the ``table`` read and the ``audio_dir`` its file names are relative to."""

    entries: list[dict]
    classes: list[str]
    missing: list[str]
    table: Path
    audio_dir: Path


def read_meta(root, subset: str = "esc50", audio=None) -> EscMeta:
    """Read the ESC metadata under ``root`` (either layout, see the module docstring) for ``subset`` (``"esc50"``
    or ``"esc10"``); ``audio`` overrides the folder the file names are relative to. Raises :class:`PrepareError`
    naming the table for a missing table or column, fold values other than 1-5, a class index with two names,
    or a subset without clips. Files listed but absent are not an error here: they are in ``missing``."""
    if subset not in SUBSETS:
        raise ValueError(f"subset must be 'esc50' or 'esc10', got {subset!r}")
    root = Path(root)
    if (root / "meta" / "esc50.csv").is_file():
        table, needed, audio_dir = root / "meta" / "esc50.csv", COLUMNS, Path(audio) if audio else root / "audio"
    elif (root / "meta.csv").is_file():
        table, needed, audio_dir = root / "meta.csv", PACK_COLUMNS, Path(audio) if audio else root
    else:
        raise PrepareError(f"{subset}: neither meta/esc50.csv (the ESC-50 download) nor meta.csv (a converted pack) "
                           f"found under {root}")
    with open(table, newline="", encoding="utf-8-sig") as fh:
        reader = csv.DictReader(fh)
        fields = list(reader.fieldnames or [])
        require_columns(fields, needed, str(table), subset)
        label_col = "category" if "category" in fields else "label" if "label" in fields else None
        if label_col is None:
            raise PrepareError(f"{subset}: {table} lacks a label or category column (has {fields})")
        rows = list(reader)
    if subset == "esc10" and "esc10" in fields:
        rows = [r for r in rows if r["esc10"].strip().lower() in ("true", "1")]
    if not rows:
        raise PrepareError(f"{subset}: {table} lists no clips for this subset")
    bad_folds = sorted({r["fold"] for r in rows if r["fold"].strip() not in {str(k) for k in FOLDS}})
    if bad_folds:
        raise PrepareError(f"{subset}: fold values {bad_folds} in {table} are not 1-5")
    classes = _classes(rows, label_col, next((c for c in TARGET_COLUMNS if c in fields), None), table, subset)
    entries, missing = [], []
    for r in rows:
        listed = audio_dir / r["filename"]
        path = with_any_extension(listed)
        if path is None:
            missing.append(r["filename"])
        fold = int(r["fold"])
        entry = {"path": str((path or listed).resolve()), "labels": [r[label_col].strip()], "split": f"fold{fold}",
                 "fold": fold}
        if "src_file" in fields:
            entry["group"] = r["src_file"].strip()
        entries.append(entry)
    return EscMeta(entries, classes, missing, table, audio_dir)


def _classes(rows, label_col: str, target_col: str | None, table: Path, subset: str) -> list[str]:
    """Class names in class-index order (``target_col``), or sorted without one; an index with two names is an
    error."""
    if target_col is None:
        return sorted({r[label_col].strip() for r in rows})
    names: dict[int, str] = {}
    for r in rows:
        target, cat = int(r[target_col]), r[label_col].strip()
        if names.setdefault(target, cat) != cat:
            raise PrepareError(f"{subset}: {target_col} {target} is both {names[target]!r} and {cat!r} in {table}")
    return [names[t] for t in sorted(names)]


def prepare(root, audio=None, subset: str = "esc50") -> Prepared:
    """Manifest entries of ESC-50 (``subset="esc50"``) or ESC-10 (``"esc10"``) under ``root`` (:func:`read_meta`);
    ``audio`` overrides the clip folder. Every listed file must exist and every fold 1-5 must hold clips."""
    meta = read_meta(root, subset, audio)
    if meta.missing:
        raise missing_error(subset, meta.missing, len(meta.entries), meta.audio_dir)
    counts = check_splits(subset, meta.entries, [f"fold{k}" for k in FOLDS])
    return Prepared(meta.entries, meta.classes, {"splits": counts})
