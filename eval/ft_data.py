"""Labelled data for fine-tuning: manifest checks, train/valid/test splits, and the clip dataset with the recipe's
augmentations (mixup, SpecAugment, time warp, noise + roll) and class-balanced sampling.

Everything random about a training item comes from ``numpy.random.default_rng([seed, epoch, position])`` (the
engine's sampler yields ``(epoch, position)`` keys), so a resumed run sees exactly the same data.
"""
from __future__ import annotations

import collections
import logging
import os
from pathlib import Path

import numpy as np
import torch

from aum.audio.features import epic_logmel, fbank, get_preset, normalize, pad_or_cut, pad_to_one_frame
from aum.audio.frames import EPIC_SAMPLE_RATE, samples_for_frames
from aum.audio.io import resample, validate_waveform
from aum.data.datasets import AudioClipDataset, bad_file_reason, epoch_index
from eval.augment import (epic_spec_augment, mix_targets, mix_waves, mixup_lambda, noise_and_roll, spec_augment,
                          time_warp)
from eval.prepare.common import CLASSES, PrepareError, read_classes
from eval.prepare.custom import hash_unit

log = logging.getLogger(__name__)
_HDF5_FILES: dict = {}
__all__ = ["load_manifest", "manifest_classes", "check_entries", "make_splits", "carve_validation",
           "balanced_weights", "read_hdf5_segment", "FinetuneDataset"]


def load_manifest(manifest, classes_path=None) -> tuple[list[dict], list[str]]:
    """Entries of a prepared manifest and its class list (``classes.txt`` beside it unless given)."""
    from aum.data.datasets import read_manifest
    manifest = Path(manifest)
    classes_path = Path(classes_path) if classes_path else manifest.parent / CLASSES
    if not classes_path.is_file():
        raise FileNotFoundError(f"class list {classes_path} not found (written by python -m eval.prepare)")
    return read_manifest(manifest), read_classes(classes_path)


def _labels(entry: dict) -> list[str]:
    value = entry.get("labels", entry.get("label"))
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else ([] if value in (None, "") else [str(value)])


def manifest_classes(manifest) -> list[str] | None:
    """The class list beside a manifest file (``classes.txt``, written by ``python -m eval.prepare``), or ``None``
    when there is none (a dataset folder, a hand-written manifest)."""
    path = Path(manifest)
    if path.is_dir() or not (path.parent / CLASSES).is_file():
        return None
    return read_classes(path.parent / CLASSES)


def check_entries(entries: list[dict], classes: list[str] | None, bench, check_files: bool = True) -> None:
    """Everything that would fail later, now: class count, unlabelled clips, unknown labels, several labels on a
    single-label benchmark, missing audio files. Each error says which and how many. The one manifest check of
    :mod:`eval.finetune` and :mod:`eval.probe`.

    ``bench`` needs ``name``, ``num_classes`` (``None``: unknown, not checked) and ``multi_label``. Without a class
    list (``classes=None``), the labels of the entries are the vocabulary and there may be at most
    ``num_classes`` distinct ones; the error then names the rarest labels (the likely strays)."""
    name, n_classes = bench.name, bench.num_classes
    if classes is not None and n_classes is not None and len(classes) != n_classes:
        raise PrepareError(f"{name}: the class list has {len(classes)} classes, the benchmark {n_classes}")
    unlabelled = [e["path"] for e in entries if not _labels(e)]
    if unlabelled:
        raise PrepareError(f"{name}: {len(unlabelled)} clip(s) have no label (e.g. {unlabelled[0]})")
    if classes is None:
        counts = collections.Counter(lab for e in entries for lab in _labels(e))
        if n_classes is not None and len(counts) > n_classes:
            rare = sorted(counts.items(), key=lambda kv: (kv[1], kv[0]))[:3]
            raise PrepareError(f"{name}: the manifest has {len(counts)} distinct labels, the benchmark "
                               f"{n_classes} classes (rarest: "
                               f"{', '.join(f'{lab!r} x{n}' for lab, n in rare)})")
        classes = list(counts)
    vocab = set(classes)
    unknown = collections.Counter(lab for e in entries for lab in _labels(e) if lab not in vocab)
    if unknown:
        raise PrepareError(f"{name}: {sum(unknown.values())} label(s) are not in the class list ({len(unknown)} "
                           f"distinct, e.g. {', '.join(map(repr, list(unknown)[:3]))})")
    if not bench.multi_label:
        multi = [e["path"] for e in entries if len(_labels(e)) > 1]
        if multi:
            raise PrepareError(f"{name}: single-label benchmark, but {len(multi)} clip(s) have several labels "
                               f"(e.g. {multi[0]})")
    if check_files:
        paths = sorted({e["path"] for e in entries})
        missing = [p for p in paths if not os.path.isfile(p)]
        if missing:
            raise PrepareError(f"{name}: {len(missing)} of {len(paths)} audio files are missing "
                               f"(e.g. {', '.join(missing[:3])})")


def carve_validation(entries: list[dict], fraction: float, group_key: str = "group", stratify: bool = False,
                     salt: str = "") -> tuple[list[dict], list[dict]]:
    """Split ``entries`` into ``(train, valid)``: whole groups (``entry[group_key]``, else the path) in an order
    fixed by a hash of ``salt:group``, ``round(fraction * groups)`` of them to valid (per first label when
    ``stratify``, at least one group of every label that has two). Deterministic and seed-independent."""
    buckets: dict[str, list[str]] = collections.defaultdict(list)
    for e in entries:
        g = str(e.get(group_key) or e["path"])
        key = _labels(e)[0] if stratify and _labels(e) else ""
        if g not in buckets[key]:
            buckets[key].append(g)
    valid_groups = set()
    for groups in buckets.values():
        groups = sorted(set(groups), key=lambda g: hash_unit(f"{salt}:{g}"))
        n = round(fraction * len(groups))
        valid_groups.update(groups[:max(n, 1) if stratify and len(groups) >= 2 else n])
    in_valid = [str(e.get(group_key) or e["path"]) in valid_groups for e in entries]
    return ([e for e, v in zip(entries, in_valid) if not v], [e for e, v in zip(entries, in_valid) if v])


def make_splits(entries: list[dict], bench, fold: int | None = None) -> dict[str, list[dict]]:
    """``{"train", "valid", "test"}`` entry lists of a benchmark run: fold ``fold`` as test for k-fold benchmarks,
    else the ``test`` split; ``valid`` from the manifest or carved from the training clips. An empty split is an
    error naming it."""
    by_split = collections.defaultdict(list)
    for e in entries:
        by_split[str(e.get("split", ""))].append(e)
    if bench.folds:
        if fold is None or not 1 <= fold <= bench.folds:
            raise ValueError(f"{bench.name} is a {bench.folds}-fold benchmark: give fold in 1..{bench.folds}")
        test = by_split[f"fold{fold}"]
        pool = [e for k in range(1, bench.folds + 1) if k != fold for e in by_split[f"fold{k}"]]
    else:
        test, pool = by_split["test"], by_split["train"]
    if "valid" in bench.splits and not bench.folds:
        train, valid = pool, by_split["valid"]
    else:
        train, valid = carve_validation(pool, bench.valid_fraction, bench.valid_group, bench.valid_stratify,
                                        bench.name)
    splits = {"train": train, "valid": valid, "test": test}
    empty = [k for k, v in splits.items() if not v]
    if empty:
        raise PrepareError(f"{bench.name}{'' if fold is None else f' fold {fold}'}: split(s) {empty} are empty "
                           f"(manifest splits: { {k: len(v) for k, v in by_split.items()} })")
    return splits


def balanced_weights(label_lists: list[list[int]], n_classes: int) -> np.ndarray:
    """AudioSet-2M class-balanced sampling weights (as the official ``gen_weight_file``): class weight
    ``1000 / (clips with the label + 0.01)``, clip weight = the sum over its labels."""
    counts = np.zeros(n_classes)
    for labs in label_lists:
        counts[labs] += 1
    class_w = 1000.0 / (counts + 0.01)
    return np.array([class_w[labs].sum() for labs in label_lists])


def read_hdf5_segment(path, key: str, start: int, stop: int) -> torch.Tensor:
    """Samples ``[start, stop)`` of dataset ``key`` in an HDF5 file (EPIC-KITCHENS audio) as float32; integer
    data is scaled to [-1, 1). Needs h5py."""
    try:
        import h5py
    except ImportError:
        raise ImportError("reading EPIC-Sounds audio needs h5py, which is not installed: pip install h5py") from None
    handle = (os.getpid(), str(path))
    if handle not in _HDF5_FILES:                  # one open handle per process (DataLoader workers fork)
        _HDF5_FILES.clear()
        _HDF5_FILES[handle] = h5py.File(path, "r")
    f = _HDF5_FILES[handle]
    if key not in f:
        raise KeyError(f"{path}: no dataset {key!r}")
    data = np.asarray(f[key][start:stop])
    if np.issubdtype(data.dtype, np.integer):
        data = data.astype(np.float32) / float(np.iinfo(data.dtype).max + 1)
    return torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32).reshape(-1))


class FinetuneDataset(AudioClipDataset):
    """Clips of one split as ``{"fbank": [frames, 128], "target": [classes] float, "index"}`` (``None`` for a bad
    file, logged in ``bad_files_path``).

    ``recipe`` ``None`` means evaluation: the clip's first ``bench.target_frames`` frames, no augmentation. With a
    recipe (training): crop (``bench.train_crop``), mixup with probability ``recipe.mixup`` against a uniformly
    drawn partner, features, time warp, SpecAugment before normalisation, then noise + roll. ``sample_weights``
    turns the epoch's positions into weighted draws with replacement (class-balanced sampling), fixed per
    ``(seed, epoch)``.
    """

    def __init__(self, entries: list[dict], classes: list[str], bench, recipe=None, seed: int = 0,
                 bad_files_path=None, sample_weights=None):
        super().__init__(entries, sample_rate=get_preset(bench.preset).sample_rate, crop_frames=bench.target_frames,
                         preset=bench.preset, seed=seed, bad_files_path=bad_files_path)
        self.bench, self.recipe, self.train = bench, recipe, recipe is not None
        index = {c: i for i, c in enumerate(classes)}
        self.label_ids = [[index[lab] for lab in _labels(e)] for e in self.entries]
        self.n_classes = len(classes)
        self.weights = None if sample_weights is None else np.asarray(sample_weights, dtype=np.float64)
        self._draws: tuple[int, np.ndarray] | None = None

    def target(self, index: int) -> torch.Tensor:
        """Multi-hot label vector of entry ``index``."""
        t = torch.zeros(self.n_classes)
        t[self.label_ids[index]] = 1.0
        return t

    def _load(self, entry: dict) -> torch.Tensor:
        sr = self.sample_rate
        if "hdf5_key" in entry:
            start = int(entry.get("start_sample", round(entry.get("start", 0) * EPIC_SAMPLE_RATE)))
            stop = int(entry.get("stop_sample", round(entry["stop"] * EPIC_SAMPLE_RATE)))
            wave = read_hdf5_segment(entry["path"], entry["hdf5_key"], start, stop)
            wave = validate_waveform(wave, f"{entry['path']}:{entry['hdf5_key']}")
            return resample(wave, EPIC_SAMPLE_RATE, sr) if sr != EPIC_SAMPLE_RATE else wave
        return super()._load(entry)

    def _crop(self, wave: torch.Tensor, rng) -> torch.Tensor:
        """The samples of ``wave`` that the item's features come from (``bench.train_crop``).

        ``window`` (EPIC-Sounds, as its official loader): a window of ``train_window_s`` seconds at an offset
        uniform in [0, len - window] (clips no longer than it: the whole clip; evaluation: offset 0), of which only
        the first ``target_frames`` frames are kept, so only the samples those frames see are returned (one frame
        more, so that the last kept frame covers real audio, not padding; the extra frame is cut)."""
        n, bench = self.crop_samples, self.bench
        if bench.train_crop == "window":
            window = round(bench.train_window_s * self.sample_rate)
            long = self.train and wave.numel() > window
            off = int(rng.integers(0, wave.numel() - window + 1)) if long else 0
            keep = samples_for_frames(self.crop_frames + 1, self.preset.kind, self.sample_rate)
            return wave[off:off + min(window, keep)]
        if wave.numel() <= n:
            return wave
        off = int(rng.integers(0, wave.numel() - n + 1)) if self.train and self.bench.train_crop == "random" else 0
        return wave[off:off + n]

    def _features(self, wave: torch.Tensor) -> torch.Tensor:
        p = self.preset
        wave = pad_to_one_frame(wave, self.sample_rate, p)
        raw = fbank(wave, self.sample_rate) if p.kind == "kaldi" else epic_logmel(wave, self.sample_rate)
        return pad_or_cut(raw, self.crop_frames, p.pad_mode)

    def _position(self, epoch: int, position: int) -> int:
        if self.weights is None:
            return position
        if self._draws is None or self._draws[0] != epoch:
            rng = np.random.default_rng([self.seed, epoch, 7919])
            p = self.weights / self.weights.sum()
            self._draws = (epoch, rng.choice(len(p), size=len(p), replace=True, p=p))
        return int(self._draws[1][position])

    def __getitem__(self, key):
        """Item for ``position`` or ``(epoch, position)``; ``None`` when its file is bad (logged)."""
        epoch, position = epoch_index(key, self.epoch, len(self.entries))
        index = self._position(epoch, position)
        rng = np.random.default_rng([self.seed, epoch, position])
        self._check_usable()          # raises once only bad files were seen (aum.data.MAX_BAD_LOADS)
        try:
            wave = self._crop(self._load(self.entries[index]), rng)
        except (OSError, ValueError, RuntimeError, EOFError, KeyError) as e:
            self._bad(index, epoch, e)
            return None
        self._failed = None
        target = self.target(index)
        r = self.recipe
        if self.train and r.mixup > 0 and rng.random() < r.mixup:
            other = int(rng.integers(0, len(self.entries)))
            try:
                partner = self._crop(self._load(self.entries[other]), rng)
                lam = mixup_lambda(rng, r.mixup_alpha)
                wave, target = mix_waves(wave, partner, lam), mix_targets(target, self.target(other), lam)
            except (OSError, ValueError, RuntimeError, EOFError, KeyError) as e:
                self.bad_files.record(self.entries[other]["path"], bad_file_reason(e), f"{type(e).__name__}: {e}",
                                      other, epoch)
        feats = self._features(wave)
        if self.train:
            feats = time_warp(feats, rng, r.time_warp)
            if r.mask_style == "epic":
                feats = epic_spec_augment(feats, rng, r.freqm, r.timem, r.freq_masks, r.time_masks)
            else:
                mask_value = 0.0 if self.preset.normalized else float(feats.mean())
                feats = spec_augment(feats, rng, r.freqm, r.timem, r.freq_masks, r.time_masks, mask_value)
        if self.preset.normalized:
            feats = normalize(feats, self.preset.mean, self.preset.std)
        if self.train and r.noise:
            feats = noise_and_roll(feats, rng, r.roll)
        return {"fbank": feats.to(torch.float32), "target": target, "index": index}
