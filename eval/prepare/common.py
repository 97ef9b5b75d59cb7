"""What every dataset preparer shares: the manifest format, the checks, and the writer.

Manifest (``manifest.jsonl``, one JSON object per line)::

    {"path": "/abs/clip.wav", "labels": ["Dog"], "split": "train", "fold": 2, "group": "srcid",
     "start": 1.5, "stop": 3.0}

``path`` (absolute), ``labels`` (class names from ``classes.txt``) and ``split`` are always there; ``fold`` for
k-fold benchmarks (``split`` is then ``fold<k>``); ``group`` names clips that must stay on the same side when a
validation set is carved out of the training data (source recording, video, speaker); ``start``/``stop`` are
seconds within the file. EPIC-Sounds entries add ``hdf5_key`` (the video id inside the HDF5 file named by ``path``)
and ``start_sample``/``stop_sample`` at 24 kHz.

``classes.txt`` holds one class name per line in class-index order; ``prepare_report.json`` the counts.
Problems are :class:`PrepareError` s that say what is wrong, how many and give examples.
"""
from __future__ import annotations

import collections
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from aum.atomic import atomic_write_text
from aum.data.datasets import AUDIO_EXTENSIONS

log = logging.getLogger(__name__)

MANIFEST = "manifest.jsonl"
CLASSES = "classes.txt"
REPORT = "prepare_report.json"


class PrepareError(ValueError):
    """The download is incomplete or inconsistent: the message says which files/labels/splits and how many."""


@dataclass
class Prepared:
    """A preparer's result: manifest ``entries``, the ``classes`` in index order and a ``report`` of counts."""

    entries: list[dict]
    classes: list[str]
    report: dict = field(default_factory=dict)


def examples(items, n: int = 3) -> str:
    """``'a', 'b', 'c' ...`` for an error message."""
    items = list(items)
    return ", ".join(repr(str(x)) for x in items[:n]) + (" ..." if len(items) > n else "")


def require_file(path: Path, what: str, dataset: str) -> Path:
    """``path`` if it is a file, else a :class:`PrepareError` naming what was expected there."""
    if not Path(path).is_file():
        raise PrepareError(f"{dataset}: {what} not found at {path}")
    return Path(path)


def require_columns(fieldnames, needed, source: str, dataset: str) -> None:
    """Raise naming the columns of a CSV header that lack some of ``needed``."""
    missing = [c for c in needed if c not in (fieldnames or [])]
    if missing:
        raise PrepareError(f"{dataset}: {source} lacks column(s) {missing} (has {list(fieldnames or [])})")


def with_any_extension(path: Path) -> Path | None:
    """``path`` if it exists, else a file with the same stem and another audio extension (e.g. a FLAC copy of a
    listed WAV), else ``None``."""
    if path.is_file():
        return path
    for ext in AUDIO_EXTENSIONS:
        alt = path.with_suffix(ext)
        if alt.is_file():
            return alt
    return None


def scan_audio_files(folder: Path) -> list[Path]:
    """Every audio file under ``folder`` (recursively; hidden folders skipped), sorted."""
    out = []
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=True):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        out += [Path(dirpath) / f for f in filenames if Path(f).suffix.lower() in AUDIO_EXTENSIONS]
    return sorted(out)


def missing_error(dataset: str, missing: list[str], total: int, where: str) -> PrepareError:
    """The error for files a listing names but the download lacks."""
    return PrepareError(f"{dataset}: {len(missing)} of {total} audio files listed are missing under {where} "
                        f"(e.g. {examples(missing)})")


def check_labels(dataset: str, labels: list[str], vocab, source: str) -> None:
    """Raise when some of ``labels`` (one per row/occurrence) are not in ``vocab``, with counts per label."""
    vocab = set(vocab)
    unknown = collections.Counter(lab for lab in labels if lab not in vocab)
    if unknown:
        listing = ", ".join(f"{k!r} x{v}" for k, v in unknown.most_common(5))
        raise PrepareError(f"{dataset}: {sum(unknown.values())} label(s) in {source} are not in the class list "
                           f"({len(unknown)} distinct: {listing}{' ...' if len(unknown) > 5 else ''})")


def check_splits(dataset: str, entries: list[dict], expected) -> dict:
    """Clip counts per split; an expected split without clips is an error naming it."""
    counts = collections.Counter(e["split"] for e in entries)
    empty = [s for s in expected if counts.get(s, 0) == 0]
    if empty:
        raise PrepareError(f"{dataset}: split(s) {empty} would be empty (clips per split: {dict(counts)})")
    return {s: counts.get(s, 0) for s in list(expected) + sorted(set(counts) - set(expected))}


def write_prepared(prepared: Prepared, out: str | os.PathLike, dataset: str) -> Path:
    """Write ``manifest.jsonl``, ``classes.txt`` and ``prepare_report.json`` into ``out`` (created); returns the
    manifest path. Class names must be unique and free of line breaks; every label must be one of them."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    dupes = [c for c, n in collections.Counter(prepared.classes).items() if n > 1]
    if dupes or any("\n" in c or not c.strip() for c in prepared.classes):
        raise PrepareError(f"{dataset}: class names must be unique, non-empty single lines (duplicates: {dupes})")
    check_labels(dataset, [lab for e in prepared.entries for lab in e["labels"]], prepared.classes, "the manifest")
    atomic_write_text(out / CLASSES, "".join(c + "\n" for c in prepared.classes))
    atomic_write_text(out / MANIFEST, "".join(json.dumps(e, ensure_ascii=False) + "\n" for e in prepared.entries))
    report = {"dataset": dataset, "clips": len(prepared.entries), "classes": len(prepared.classes),
              **prepared.report}
    atomic_write_text(out / REPORT, json.dumps(report, indent=2) + "\n")
    return out / MANIFEST


def read_classes(path: str | os.PathLike) -> list[str]:
    """Class names of a ``classes.txt`` (one per line, blank lines ignored)."""
    names = [ln.rstrip("\r") for ln in Path(path).read_text(encoding="utf-8").split("\n")]
    return [n for n in names if n.strip()]
