"""EPIC-Sounds (44 classes) from its annotation CSVs and the EPIC-KITCHENS-100 audio HDF5 file.

Layout read::

    ROOT/EPIC_Sounds_train.csv        annotation_id,participant_id,video_id,start_timestamp,stop_timestamp,
    ROOT/EPIC_Sounds_validation.csv   start_sample,stop_sample,description,class,class_id
    ROOT/EPIC-KITCHENS-100_audio.hdf5 one dataset per video_id: the video's audio at 24 kHz (--audio FILE elsewhere)

The official validation annotations are our ``test`` split (the labelled test set is not public); a validation
split is carved from ``train`` by video at fine-tuning time. Each manifest entry names the HDF5 file as ``path``,
the video as ``hdf5_key`` and the segment as ``start_sample``/``stop_sample`` (24 kHz) and ``start``/``stop``
(seconds); ``group`` is the video. Classes are ordered by ``class_id``. With h5py installed every video id is
checked against the file; without it the check is skipped (loading the audio needs h5py anyway).
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from eval.prepare.common import PrepareError, Prepared, check_splits, examples, require_columns, require_file

log = logging.getLogger(__name__)
SAMPLE_RATE = 24000
HDF5_NAME = "EPIC-KITCHENS-100_audio.hdf5"
COLUMNS = ("annotation_id", "participant_id", "video_id", "start_timestamp", "stop_timestamp", "start_sample",
           "stop_sample", "description", "class", "class_id")
FILES = {"EPIC_Sounds_train.csv": "train", "EPIC_Sounds_validation.csv": "test"}


def hdf5_keys(path: Path) -> set[str] | None:
    """The dataset names at the top of an HDF5 file, or ``None`` when h5py is not installed."""
    try:
        import h5py
    except ImportError:
        return None
    with h5py.File(path, "r") as f:
        return set(f.keys())


def prepare(root, audio=None) -> Prepared:
    """Manifest entries of EPIC-Sounds under ``root`` (``audio``: the HDF5 file, if not ``ROOT/<name>``)."""
    root = Path(root)
    h5 = require_file(Path(audio) if audio else root / HDF5_NAME, f"the audio file {HDF5_NAME}", "epic_sounds")
    classes: dict[int, str] = {}
    entries, bad = [], []
    for fname, split in FILES.items():
        with open(require_file(root / fname, fname, "epic_sounds"), newline="", encoding="utf-8") as fh:
            reader = csv.DictReader(fh)
            require_columns(reader.fieldnames, COLUMNS, fname, "epic_sounds")
            for r in reader:
                cid, name = int(r["class_id"]), r["class"].strip()
                if classes.setdefault(cid, name) != name:
                    raise PrepareError(f"epic_sounds: class_id {cid} is both {classes[cid]!r} and {name!r}")
                a, b = int(r["start_sample"]), int(r["stop_sample"])
                if b <= a:
                    bad.append(r["annotation_id"])
                    continue
                entries.append({"path": str(h5.resolve()), "hdf5_key": r["video_id"], "labels": [name],
                                "split": split, "group": r["video_id"], "start_sample": a, "stop_sample": b,
                                "start": a / SAMPLE_RATE, "stop": b / SAMPLE_RATE, "id": r["annotation_id"]})
    if bad:
        raise PrepareError(f"epic_sounds: {len(bad)} annotation(s) end before they start (e.g. {examples(bad)})")
    keys = hdf5_keys(h5)
    if keys is None:
        log.warning("epic_sounds: h5py is not installed, so the video ids were not checked against %s "
                    "(pip install h5py; loading the audio needs it)", h5)
    else:
        absent = sorted({e["hdf5_key"] for e in entries} - keys)
        if absent:
            n = sum(e["hdf5_key"] in set(absent) for e in entries)
            raise PrepareError(f"epic_sounds: {len(absent)} video(s) used by {n} annotation(s) are not in {h5.name} "
                               f"(e.g. {examples(absent)})")
    counts = check_splits("epic_sounds", entries, ["train", "test"])
    return Prepared(entries, [classes[c] for c in sorted(classes)],
                    {"splits": counts, "videos_checked": keys is not None})
