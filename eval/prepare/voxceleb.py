"""VoxCeleb1 speaker identification (1251 speakers) from the official download.

Layout read::

    ROOT/iden_split.txt          "1 id10001/1zcIwhmdeo4/00001.wav"   (1 = train, 2 = valid, 3 = test)
    ROOT/wav/id10001/1zcIwhmdeo4/00001.wav ...

The identification split spans the dev and the test archives: unpack both into ``ROOT/wav`` (or leave them as
``ROOT/vox1_dev_wav/wav`` and ``ROOT/vox1_test_wav/wav``; ``--audio DIR`` names another folder). Every listed file
must exist. Classes are the speaker ids, sorted; ``group`` is ``speaker/video``.
"""
from __future__ import annotations

from pathlib import Path

from eval.prepare.common import PrepareError, Prepared, check_splits, missing_error, require_file

SPLITS = {"1": "train", "2": "valid", "3": "test"}


def prepare(root, audio=None) -> Prepared:
    """Manifest entries of VoxCeleb1 identification under ``root``."""
    root = Path(root)
    listing = require_file(root / "iden_split.txt", "the identification split iden_split.txt", "voxceleb")
    dirs = [Path(audio)] if audio else [root / "wav", root / "vox1_dev_wav" / "wav", root / "vox1_test_wav" / "wav",
                                        root]
    dirs = [d for d in dirs if d.is_dir()]
    rows, bad = [], []
    for n, line in enumerate(listing.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        parts = line.split()
        if len(parts) != 2 or parts[0] not in SPLITS or parts[1].count("/") != 2:
            bad.append(f"line {n}: {line.strip()[:60]}")
            continue
        rows.append((SPLITS[parts[0]], parts[1]))
    if bad:
        raise PrepareError(f"voxceleb: {len(bad)} malformed line(s) in iden_split.txt, expected '<1|2|3> "
                           f"idXXXXX/<video>/<n>.wav' (e.g. {bad[0]})")
    entries, missing = [], []
    for split, rel in rows:
        path = next((d / rel for d in dirs if (d / rel).is_file()), None)
        if path is None:
            missing.append(rel)
            continue
        speaker, video, _ = rel.split("/")
        entries.append({"path": str(path.resolve()), "labels": [speaker], "split": split,
                        "group": f"{speaker}/{video}"})
    if missing:
        raise missing_error("voxceleb", missing, len(rows), " or ".join(map(str, dirs)) or f"{root}/wav")
    counts = check_splits("voxceleb", entries, ["train", "valid", "test"])
    speakers = sorted({e["labels"][0] for e in entries})
    return Prepared(entries, speakers, {"splits": counts, "speakers": len(speakers)})
