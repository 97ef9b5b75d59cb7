"""VGGSound (309 classes) from the official ``vggsound.csv`` plus a folder of audio extracted from the clips.

Layout read::

    ROOT/vggsound.csv      no header: YTID,start_seconds,label,split    (split: train | test)
    clips anywhere under ROOT (or --audio DIR), named
        <YTID>_<start>.<ext>   e.g. ---g-f_I2yQ_000001.wav (start zero-padded to 6 digits, as the release's
                               video names) or ---g-f_I2yQ_1.wav
        <YTID>_<start>_<end>.<ext>   e.g. ---g-f_I2yQ_000001_000011.wav

``ext`` is an audio extension soundfile reads (wav, flac, ogg): extract the audio of the ``.mp4`` files first.
Like AudioSet, VGGSound comes from YouTube and copies lack clips: missing clips are counted per split and
reported, an error only when a split ends up empty (or with ``strict=True``). Classes are the labels, sorted;
``group`` is the YouTube id.
"""
from __future__ import annotations

import csv
import logging
from pathlib import Path

from eval.prepare.common import (PrepareError, Prepared, check_splits, missing_error, require_file,
                                 scan_audio_files)

log = logging.getLogger(__name__)
YTID_LEN = 11


def clip_key(stem: str) -> tuple[str, int] | None:
    """``(ytid, start seconds)`` of a clip file name (see the module docstring), or ``None``."""
    if len(stem) < YTID_LEN + 2 or stem[YTID_LEN] != "_":
        return None
    start = stem[YTID_LEN + 1:].split("_")[0]
    return (stem[:YTID_LEN], int(start)) if start.isdigit() else None


def prepare(root, audio=None, strict: bool = False) -> Prepared:
    """Manifest entries of VGGSound under ``root``; ``strict`` makes any missing clip an error."""
    root = Path(root)
    listing = require_file(root / "vggsound.csv", "vggsound.csv", "vggsound")
    rows, bad = [], []
    with open(listing, newline="", encoding="utf-8") as fh:
        for n, rec in enumerate(csv.reader(fh), 1):
            if not rec:
                continue
            if len(rec) != 4 or rec[3].strip() not in ("train", "test") or not rec[1].strip().isdigit():
                bad.append(f"line {n}: {','.join(rec)[:70]}")
                continue
            rows.append((rec[0].strip(), int(rec[1]), rec[2].strip(), rec[3].strip()))
    if bad:
        raise PrepareError(f"vggsound: {len(bad)} malformed line(s) in vggsound.csv, expected "
                           f"YTID,start_seconds,label,train|test (e.g. {bad[0]})")
    index = {}
    for f in scan_audio_files(Path(audio) if audio else root):
        key = clip_key(f.stem)
        if key is not None:
            index.setdefault(key, f)
    entries, missing, report = [], [], {"listed": {}, "missing": {}}
    for yt, start, label, split in rows:
        report["listed"][split] = report["listed"].get(split, 0) + 1
        path = index.get((yt, start))
        if path is None:
            missing.append(f"{yt}_{start:06d}")
            report["missing"][split] = report["missing"].get(split, 0) + 1
            continue
        entries.append({"path": str(path.resolve()), "labels": [label], "split": split, "group": yt})
    if missing and strict:
        raise missing_error("vggsound", missing, len(rows), Path(audio) if audio else root)
    if missing:
        log.warning("vggsound: %d of %d listed clips are missing (%s)", len(missing), len(rows), report["missing"])
    report["splits"] = check_splits("vggsound", entries, ["train", "test"])
    report["message"] = f"{len(missing)} of {len(rows)} listed clips missing"
    return Prepared(entries, sorted({r[2] for r in rows}), report)
