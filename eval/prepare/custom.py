"""Any labelled folder described by a CSV: our own small tasks (and the output of ``aum.audio.synth.write_clips``).

Layout read::

    ROOT/meta.csv    filename,label[,split][,fold][,group]     (``labels`` with ``;`` between names: multi-label)
    ROOT/<filename>  the clips, relative to ROOT

Without a ``split`` or ``fold`` column the clips are split deterministically by a hash of the file name (or of
``group``): 80 % ``train``, 10 % ``valid``, 10 % ``test``. With ``fold`` the split is ``fold<k>``. Classes are the
labels, sorted. Every listed file must exist.
"""
from __future__ import annotations

import csv
import hashlib
from pathlib import Path

from eval.prepare.common import PrepareError, Prepared, check_splits, missing_error, require_file


def hash_unit(text: str) -> float:
    """A stable number in [0, 1) from ``text`` (the same on every machine and Python)."""
    return int.from_bytes(hashlib.sha1(text.encode()).digest()[:8], "big") / 2 ** 64


def prepare(root, audio=None, meta: str = "meta.csv") -> Prepared:
    """Manifest entries of the clips listed in ``ROOT/meta.csv`` (``audio`` overrides the clip folder)."""
    root = Path(root)
    audio_dir = Path(audio) if audio else root
    with open(require_file(root / meta, meta, "custom"), newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        fields = reader.fieldnames or []
        if "filename" not in fields or not {"label", "labels"} & set(fields):
            raise PrepareError(f"custom: {meta} needs columns filename and label (or labels), has {fields}")
        rows = list(reader)
    entries, missing, unlabelled = [], [], []
    for r in rows:
        raw = r.get("labels") or r.get("label") or ""
        labels = [x.strip() for x in raw.split(";") if x.strip()]
        if not labels:
            unlabelled.append(r["filename"])
            continue
        path = audio_dir / r["filename"]
        if not path.is_file():
            missing.append(r["filename"])
            continue
        group = (r.get("group") or r["filename"]).strip()
        e = {"path": str(path.resolve()), "labels": labels, "group": group}
        if (r.get("fold") or "").strip():
            e["fold"] = int(r["fold"])
            e["split"] = f"fold{e['fold']}"
        elif (r.get("split") or "").strip():
            e["split"] = r["split"].strip()
        else:
            u = hash_unit(group)
            e["split"] = "train" if u < 0.8 else "valid" if u < 0.9 else "test"
        entries.append(e)
    if unlabelled:
        raise PrepareError(f"custom: {len(unlabelled)} row(s) of {meta} have no label (e.g. {unlabelled[:3]})")
    if missing:
        raise missing_error("custom", missing, len(rows), audio_dir)
    if not entries:
        raise PrepareError(f"custom: {meta} lists no clips")
    splits = sorted({e["split"] for e in entries})
    return Prepared(entries, sorted({lab for e in entries for lab in e["labels"]}),
                    {"splits": check_splits("custom", entries, splits)})
