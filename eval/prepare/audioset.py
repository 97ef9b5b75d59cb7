"""AudioSet (AS-2M and AS-20K) from the official segment lists plus a folder of downloaded clips.

Layout read::

    ROOT/class_labels_indices.csv       index,mid,display_name
    ROOT/balanced_train_segments.csv    3 comment lines, then: YTID, start_seconds, end_seconds, "mid,mid"
    ROOT/unbalanced_train_segments.csv  (AS-2M only)
    ROOT/eval_segments.csv
    clips anywhere under ROOT (or --audio DIR), named by YouTube id:
        <YTID>.<ext>   Y<YTID>.<ext>   <YTID>_<anything>.<ext>   Y<YTID>_<anything>.<ext>

``ext`` is any audio extension soundfile reads (wav, flac, ogg). A YouTube id has 11 characters, so the name
rules are unambiguous. Clips are taken to be the 10 s segments already; ``full_videos=True`` (``--full-videos``)
adds the segment's start/stop seconds for files that hold whole videos.

Clips that could not be downloaded are the rule for AudioSet: they are counted per split and reported (also in
``prepare_report.json``), not an error unless a split ends up empty. A mid missing from
``class_labels_indices.csv`` is an error. The manifest's ``train`` is balanced (+ unbalanced for AS-2M), ``test`` is
the eval segments; labels are display names in ``class_labels_indices.csv`` order.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from eval.prepare.common import (PrepareError, Prepared, check_labels, check_splits, require_columns, require_file,
                                 scan_audio_files)

log = logging.getLogger(__name__)
YTID_LEN = 11


def ytid_candidates(stem: str) -> list[str]:
    """The YouTube ids a clip file name may stand for under the naming rules of the module docstring (most
    specific first; a name like ``Y<YTID>_x`` has two readings, both kept: only real ids are ever looked up)."""
    out = []
    if len(stem) == YTID_LEN:
        out.append(stem)
    if stem.startswith("Y") and (len(stem) == YTID_LEN + 1 or stem[YTID_LEN + 1:YTID_LEN + 2] == "_"):
        out.append(stem[1:YTID_LEN + 1])
    if len(stem) > YTID_LEN and stem[YTID_LEN] == "_":
        out.append(stem[:YTID_LEN])
    return out


def index_clips(folder: Path) -> dict[str, Path]:
    """YouTube id -> clip file for every audio file under ``folder``; an exact ``<YTID>.<ext>`` name wins."""
    index: dict[str, Path] = {}
    for f in scan_audio_files(folder):
        for yt in ytid_candidates(f.stem):
            if yt not in index or f.stem == yt:
                index[yt] = f
    return index


def read_segments(path: Path) -> list[tuple[str, float, float, list[str]]]:
    """``(ytid, start, end, [mid, ...])`` rows of an official segment CSV (``#`` comment lines skipped)."""
    rows = []
    with open(path, newline="", encoding="utf-8") as fh:
        for n, rec in enumerate(csv.reader((ln for ln in fh if not ln.startswith("#")), skipinitialspace=True)):
            if not rec:
                continue
            if len(rec) != 4:
                raise PrepareError(f"audioset: {path.name} data row {n + 1} has {len(rec)} fields, expected "
                                   f"YTID, start_seconds, end_seconds, \"labels\": {rec[:4]}")
            mids = [m.strip() for m in rec[3].split(",") if m.strip()]
            if not mids:
                raise PrepareError(f"audioset: {path.name} row for {rec[0]} has no labels")
            rows.append((rec[0].strip(), float(rec[1]), float(rec[2]), mids))
    return rows


def read_class_labels(path: Path) -> tuple[list[str], dict[str, str]]:
    """``(display names in index order, mid -> display name)`` of ``class_labels_indices.csv``."""
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        require_columns(reader.fieldnames, ("index", "mid", "display_name"), path.name, "audioset")
        rows = sorted(reader, key=lambda r: int(r["index"]))
    if [int(r["index"]) for r in rows] != list(range(len(rows))):
        raise PrepareError(f"audioset: {path.name} indices are not 0..{len(rows) - 1}")
    return [r["display_name"] for r in rows], {r["mid"]: r["display_name"] for r in rows}


def prepare(root, audio=None, subset: str = "2m", full_videos: bool = False) -> Prepared:
    """Manifest entries of AS-2M (``subset="2m"``) or AS-20K (``"20k"``) under ``root``."""
    if subset not in ("2m", "20k"):
        raise ValueError(f"subset must be '2m' or '20k', got {subset!r}")
    root, name = Path(root), "audioset" if subset == "2m" else "audioset20k"
    classes, mid2name = read_class_labels(require_file(root / "class_labels_indices.csv",
                                                       "class_labels_indices.csv", name))
    lists = {"balanced_train_segments.csv": "train", "eval_segments.csv": "test"}
    if subset == "2m":
        lists["unbalanced_train_segments.csv"] = "train"
    clips = index_clips(Path(audio) if audio else root)
    entries, report, seen = [], {"listed": {}, "found": {}, "missing": {}}, {}
    for fname, split in lists.items():
        rows = read_segments(require_file(root / fname, fname, name))
        check_labels(name, [m for r in rows for m in r[3]], mid2name, fname)
        found = 0
        for yt, start, end, mids in rows:
            path = clips.get(yt)
            if path is None:
                continue
            if seen.setdefault(yt, split) != split:
                raise PrepareError(f"{name}: clip {yt} is listed in both a training list and eval_segments.csv")
            found += 1
            e = {"path": str(path.resolve()), "labels": [mid2name[m] for m in mids], "split": split, "group": yt}
            if full_videos:
                e.update(start=start, stop=end)
            entries.append(e)
        stem = fname.replace("_segments.csv", "")
        report["listed"][stem], report["found"][stem] = len(rows), found
        report["missing"][stem] = len(rows) - found
        log.info("%s: %s lists %d clips, %d found, %d missing (not downloadable)", name, fname, len(rows), found,
                 len(rows) - found)
    report["splits"] = check_splits(name, entries, ["train", "test"])
    report["message"] = "; ".join(f"{k}: {report['missing'][k]} of {report['listed'][k]} clips missing"
                                  for k in report["listed"])
    return Prepared(entries, classes, report)
