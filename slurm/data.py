"""Small labelled benchmarks made of generated sounds, for trying sweeps without downloading data.

``make_synth_benchmark(folder, clips=28, duration=1.0, seed=0)`` writes ``clips`` WAVs of the seven
:mod:`aum.synth` sound classes (balanced: clip ``i`` is class ``i % 7``) and ``manifest.csv`` with ``path``,
``label``, ``split`` and ``fold``. Every run of 7 consecutive clips holds one clip per class; run ``r`` goes to
fold ``r % folds + 1``, and the last fold is the ``test`` split (the rest ``train``), so both the split and the
cross-validated readings of the manifest see every class in training and in testing.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path

from aum.synth import write_clips

__all__ = ["make_synth_benchmark", "GENERATE_KEYS"]

GENERATE_KEYS = ("clips", "duration", "seed", "folds")
N_CLASSES = 7


def make_synth_benchmark(folder, clips: int = 28, duration: float = 1.0, seed: int = 0, folds: int = 4) -> Path:
    """Write (or keep, when already written with the same settings) a generated benchmark in ``folder``;
    returns the path of its ``manifest.csv``."""
    if clips < N_CLASSES * 2 or folds < 2:
        raise ValueError(f"a generated benchmark needs clips >= {2 * N_CLASSES} and folds >= 2 "
                         f"(got clips={clips}, folds={folds})")
    folder = Path(folder)
    manifest, stamp = folder / "manifest.csv", folder / "generate.json"
    settings = {"clips": int(clips), "duration": float(duration), "seed": int(seed), "folds": int(folds)}
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return manifest
    rows = write_clips(folder / "audio", clips, duration=duration, seed=seed, labelled=True)
    tmp = folder / ".manifest.csv.tmp"
    with open(tmp, "w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["path", "label", "split", "fold"])
        for i, row in enumerate(rows):
            fold = (i // N_CLASSES) % folds + 1
            writer.writerow([f"audio/{row['filename']}", row["label"], "test" if fold == folds else "train", fold])
    tmp.replace(manifest)
    stamp.write_text(json.dumps(settings))
    return manifest
