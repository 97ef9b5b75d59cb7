"""Small labelled benchmarks made of generated sounds, for trying sweeps without downloading data.

``make_synth_benchmark(folder, "synth_a", clips=28, duration=1.0, seed=0)`` writes ``clips`` WAVs of the seven
:mod:`aum.audio.synth` sound classes (balanced: clip ``i`` is class ``(seed + i) % 7``), ``manifest.csv`` (``path``,
``label``, ``split``, ``fold``), ``classes.txt`` and ``benchmark.yaml`` (the benchmark file ``python -m
eval.finetune`` reads: benchmark facts plus a short recipe). Every run of 7 consecutive clips holds one clip per
class; run ``r`` goes to fold ``r % folds + 1`` and the last fold is the ``test`` split (the rest ``train``), so
the split reading (probe ``--folds 0``, fine-tuning) and the cross-validated one (probe ``--folds K``) both see
every class in training and in testing.
"""
from __future__ import annotations

import csv
import io
import json
from pathlib import Path

from omegaconf import OmegaConf

from aum.atomic import atomic_write_text
from aum.models import AuMConfig
from aum.audio.synth import SOUND_NAMES, write_clips

__all__ = ["make_synth_benchmark", "synth_benchmark_file", "check_generate", "GENERATE_KEYS"]

GENERATE_KEYS = ("clips", "duration", "seed", "folds", "frames")
N_CLASSES = len(SOUND_NAMES)


def synth_benchmark_file(name: str, frames: int = 128) -> dict:
    """The ``benchmark.yaml`` content of a generated benchmark: 7 classes, accuracy, train/test splits with a
    stratified validation carve, and a one-epoch recipe (override with ``recipe.*=...``)."""
    return {
        "benchmark": {"name": name, "title": f"{name}: generated sounds (aum.audio.synth), 7 classes", "num_classes":
                      N_CLASSES, "multi_label": False, "metric": "accuracy", "target_frames": int(frames),
                      "preset": "audioset", "splits": ["train", "test"], "folds": 0, "valid_fraction": 0.25,
                      "valid_stratify": True, "source": "slurm.data.make_synth_benchmark"},
        "recipe": {"official": False, "epochs": 1, "lr": 1.0e-4, "batch_size": 4, "schedule": "constant",
                   "loss": "ce", "notes": "smoke-test recipe for generated benchmarks"},
    }


def check_generate(clips: int = 28, duration: float = 1.0, seed: int = 0, folds: int = 4, frames: int = 128) -> None:
    """Check the settings of :func:`make_synth_benchmark` without writing anything; ``ValueError`` naming the
    settings that cannot make a benchmark (every class in every fold, clips of some length, at least one patch)."""
    if clips < N_CLASSES * 2 or folds < 2 or clips < N_CLASSES * folds:
        raise ValueError(f"a generated benchmark needs folds >= 2 and clips >= 7 * max(2, folds) "
                         f"(got clips={clips}, folds={folds})")
    patch = AuMConfig().patch_size[1]
    if not duration > 0 or frames < patch:
        raise ValueError(f"a generated benchmark needs duration > 0 and frames >= {patch} (one patch); "
                         f"got duration={duration}, frames={frames}")


def make_synth_benchmark(folder, name: str, clips: int = 28, duration: float = 1.0, seed: int = 0,
                         folds: int = 4, frames: int = 128) -> Path:
    """Write (or keep, when already written with the same settings) a generated benchmark in ``folder``;
    returns the path of its ``manifest.csv``. Settings are checked by :func:`check_generate`."""
    check_generate(clips, duration, seed, folds, frames)
    folder = Path(folder)
    manifest, stamp = folder / "manifest.csv", folder / "generate.json"
    settings = {"name": name, "clips": int(clips), "duration": float(duration), "seed": int(seed),
                "folds": int(folds), "frames": int(frames)}
    if manifest.is_file() and stamp.is_file() and json.loads(stamp.read_text()) == settings:
        return manifest
    rows = write_clips(folder / "audio", clips, duration=duration, seed=seed, labelled=True)
    table = io.StringIO()
    writer = csv.writer(table)
    writer.writerow(["path", "label", "split", "fold"])
    for i, row in enumerate(rows):
        fold = (i // N_CLASSES) % folds + 1
        writer.writerow([f"audio/{row['filename']}", row["label"], "test" if fold == folds else "train", fold])
    (folder / "classes.txt").write_text("".join(f"{c}\n" for c in sorted(SOUND_NAMES)))
    OmegaConf.save(OmegaConf.create(synth_benchmark_file(name, frames)), folder / "benchmark.yaml")
    atomic_write_text(manifest, table.getvalue())          # last: a manifest means the benchmark is complete
    stamp.write_text(json.dumps(settings))
    return manifest
