"""Write HEAR-format task folders (what heareval reads) from our manifests, ESC-10 and the generator.

A task folder ``TASKS/<task_name>/`` holds ``task_metadata.json``, ``labelvocabulary.csv`` (``idx,label``),
one ``<split>.json`` per split (scene: ``{"clip.wav": ["label", ...]}``; event: ``{"clip.wav": [{"label",
"start", "end"}, ...]}`` with start/end in **milliseconds**) and the audio as mono 16-bit PCM WAVs in
``<sample_rate>/<split>/`` for every sample rate offered (16 kHz by default; our model's rate).

Commands (each writes ``OUT/<task_name>``; ``OUT`` is then a ``--tasks`` folder for :mod:`hear_api.evaluate`)::

    python -m hear_api.tasks esc10 ../shared/data/esc10 OUT           # 5-fold scene task, 400 x 5 s
    python -m hear_api.tasks synth-events OUT [--clips 120]             # event task from aum.audio.synth
    python -m hear_api.tasks synth-scene OUT [--per-class 10]           # small 5-fold scene task from aum.audio.synth
    python -m hear_api.tasks manifest data.csv OUT --name mytask [--event] [--split-column fold]

Library: :func:`write_task` (any clips), :func:`manifest_task` (a manifest read by
:func:`aum.data.read_manifest`), :func:`esc10_task`, :func:`synth_event_task`, :func:`synth_scene_task`.
"""
from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import sys
from pathlib import Path
from typing import Iterable

import numpy as np
import soundfile as sf
import torch

from aum.audio.io import resample
from aum.cli import run_cli
from aum.data.datasets import load_clip, read_manifest
from aum.audio.synth import SOUND_NAMES, background_noise, finish_mix, generate_labelled_clip, make_event
from eval.prepare import esc50

__all__ = ["write_task", "manifest_task", "esc10_task", "synth_event_task", "synth_scene_task",
           "check_task", "main"]

SCENE_METRICS = ("top1_acc",)
EVENT_METRICS = ("event_onset_200ms_fms", "segment_1s_er")


def _fold_names(n: int) -> list[str]:
    """HEAR's names of ``n`` k-fold splits, ``fold00 ...``. They exist only in the task files written here: our
    manifests name folds ``fold1 ...`` (:mod:`eval.prepare`), converted by :func:`_hear_folds`."""
    return [f"fold{i:02d}" for i in range(n)]


def _hear_folds(values) -> dict[str, str]:
    """Our fold values (numbers, or ``fold<k>`` names) -> HEAR's split names: ``fold00 ...`` in natural order."""
    ordered = sorted({str(v).strip() for v in values}, key=_natural)
    return dict(zip(ordered, _fold_names(len(ordered))))


def _audio_of(clip: dict, sr: int) -> np.ndarray:
    if "audio" in clip and not isinstance(clip["audio"], (str, os.PathLike)):
        wave = torch.as_tensor(np.asarray(clip["audio"], dtype=np.float32))
        src_sr = int(clip.get("sample_rate", sr))
        wave = resample(wave, src_sr, sr) if src_sr != sr else wave
    else:
        wave = load_clip({**clip, "path": clip.get("audio") or clip["path"]}, sr)
    return wave.numpy().astype(np.float32)


def _fit(wave: np.ndarray, n: int | None) -> np.ndarray:
    if n is None:
        return wave
    return wave[:n] if len(wave) >= n else np.pad(wave, (0, n - len(wave)))


def write_task(out_dir, task_name: str, clips: Iterable[dict], *, embedding_type: str = "scene",
               prediction_type: str = "multiclass", split_mode: str = "trainvaltest",
               evaluation: Iterable[str] | None = None, sample_rates: Iterable[int] = (16000,),
               sample_duration: float | None = None, labels: Iterable[str] | None = None,
               evaluation_params: dict | None = None, overwrite: bool = False, extra_metadata: dict | None = None
               ) -> Path:
    """Write the HEAR task folder ``out_dir/task_name`` and return its path.

    ``clips``: dicts with ``split`` (``train``/``valid``/``test`` for ``split_mode="trainvaltest"``, or
    ``fold00 ...`` for ``"presplit_kfold"``/``"new_split_kfold"``), ``name`` (the WAV's file name; default
    the source file's stem + ``.wav``), the audio as ``path`` (read by :func:`aum.data.datasets.load_clip`,
    optionally cut to ``start``/``stop`` seconds) or ``audio`` (array) + ``sample_rate``; and the targets:
    ``labels`` (list of str; scene) or ``events`` (list of ``{"label", "start", "end"}`` in ms; event).
    Multiclass scene clips need exactly one label. Audio is written as mono 16-bit PCM at every rate in
    ``sample_rates``, cut or zero-padded to ``sample_duration`` seconds when given (``None``: clips keep
    their length and heareval embeds them one at a time). ``labels`` fixes the vocabulary order (default:
    sorted). ``evaluation``: metric names, the first is the primary score (default ``top1_acc`` for scene
    tasks, ``event_onset_200ms_fms`` + ``segment_1s_er`` for event tasks). Refuses to overwrite an
    existing folder unless ``overwrite``.
    """
    if embedding_type not in ("scene", "event"):
        raise ValueError(f"embedding_type must be 'scene' or 'event', got {embedding_type!r}")
    if prediction_type not in ("multiclass", "multilabel"):
        raise ValueError(f"prediction_type must be 'multiclass' or 'multilabel', got {prediction_type!r}")
    clips = list(clips)
    if not clips:
        raise ValueError(f"task {task_name}: no clips")
    splits = sorted({c["split"] for c in clips})
    if split_mode == "trainvaltest":
        if set(splits) != {"train", "valid", "test"}:
            raise ValueError(f"task {task_name}: trainvaltest needs splits train, valid and test; got {splits}")
        splits = ["train", "valid", "test"]
    elif split_mode in ("presplit_kfold", "new_split_kfold"):
        if splits != _fold_names(len(splits)) or len(splits) < 3:
            raise ValueError(f"task {task_name}: k-fold splits must be fold00..foldNN (at least 3), got {splits}")
    else:
        raise ValueError(f"unknown split_mode {split_mode!r}")
    found = set()
    for c in clips:
        found.update(c.get("labels", []) if embedding_type == "scene" else [e["label"] for e in c.get("events", [])])
    vocab = list(labels) if labels is not None else sorted(found)
    if not found <= set(vocab):
        raise ValueError(f"task {task_name}: labels {sorted(found - set(vocab))} not in the vocabulary")
    root = Path(out_dir) / task_name
    if root.exists():
        if not overwrite:
            raise FileExistsError(f"{root} exists; pass overwrite=True (--overwrite) to replace it")
        shutil.rmtree(root)
    rates = [int(r) for r in sample_rates]
    tmp = root.with_name(f".{task_name}.partial")
    shutil.rmtree(tmp, ignore_errors=True)
    split_data: dict[str, dict] = {s: {} for s in splits}
    for c in clips:
        name = c.get("name") or Path(str(c.get("path") or c.get("audio"))).stem + ".wav"
        name = name if name.endswith(".wav") else name + ".wav"
        if name in split_data[c["split"]]:
            raise ValueError(f"task {task_name}: duplicate clip name {name!r} in split {c['split']}")
        if embedding_type == "scene":
            target = list(c.get("labels", []))
            if prediction_type == "multiclass" and len(target) != 1:
                raise ValueError(f"task {task_name}: multiclass clip {name} has labels {target}, needs exactly one")
        else:
            target = [{"label": e["label"], "start": float(e["start"]), "end": float(e["end"])}
                      for e in c.get("events", [])]
            bad = [e for e in target if not 0 <= e["start"] < e["end"]]
            if bad:
                raise ValueError(f"task {task_name}: clip {name} has events with bad times (ms): {bad}")
        split_data[c["split"]][name] = target
        for sr in rates:
            folder = tmp / str(sr) / c["split"]
            folder.mkdir(parents=True, exist_ok=True)
            n = None if sample_duration is None else int(round(sample_duration * sr))
            sf.write(str(folder / name), _fit(_audio_of(c, sr), n), sr, subtype="PCM_16")
    for s in splits:
        if not split_data[s]:
            raise ValueError(f"task {task_name}: split {s} is empty")
        (tmp / f"{s}.json").write_text(json.dumps(split_data[s], indent=1))
    with open(tmp / "labelvocabulary.csv", "w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["idx", "label"])
        w.writerows(enumerate(vocab))
    metrics = list(evaluation or (SCENE_METRICS if embedding_type == "scene" else EVENT_METRICS))
    meta = {"task_name": task_name, "version": "aum-1", "embedding_type": embedding_type,
            "prediction_type": prediction_type, "split_mode": split_mode, "splits": splits,
            "sample_duration": sample_duration, "sample_rates": rates, "evaluation": metrics,
            "label_count": len(vocab), "clip_count": len(clips)}
    if split_mode != "trainvaltest":
        meta["nfolds"] = len(splits)
    if evaluation_params:
        meta["evaluation_params"] = evaluation_params
    meta.update(extra_metadata or {})
    (tmp / "task_metadata.json").write_text(json.dumps(meta, indent=2))
    os.replace(tmp, root)
    return root


def check_task(task_dir) -> dict:
    """Check a task folder the way heareval will read it; returns its metadata. Raises ``ValueError`` on
    missing files, labels outside the vocabulary, audio at the wrong rate or clips of the wrong length."""
    root = Path(task_dir)
    meta = json.loads((root / "task_metadata.json").read_text())
    with open(root / "labelvocabulary.csv") as fh:
        rows = list(csv.DictReader(fh))
    vocab = [r["label"] for r in rows]
    if [int(r["idx"]) for r in rows] != list(range(len(rows))):
        raise ValueError(f"{root}/labelvocabulary.csv: idx must be 0..n-1")
    for split in meta["splits"]:
        data = json.loads((root / f"{split}.json").read_text())
        for sr in meta.get("sample_rates", [16000]):
            for name, target in data.items():
                path = root / str(sr) / split / name
                info = sf.info(str(path))
                if info.samplerate != sr or info.channels != 1:
                    raise ValueError(f"{path}: {info.samplerate} Hz x {info.channels} channels, expected {sr} mono")
                if meta.get("sample_duration") and info.frames != int(round(meta["sample_duration"] * sr)):
                    raise ValueError(f"{path}: {info.frames} samples, expected {meta['sample_duration']} s")
                labels = target if meta["embedding_type"] == "scene" else [e["label"] for e in target]
                if not set(labels) <= set(vocab):
                    raise ValueError(f"{path}: labels {labels} not in the vocabulary")
    return meta


def manifest_task(manifest, out_dir, task_name: str, *, split_column: str = "split", event: bool = False,
                  label_separator: str = ";", **kwargs) -> Path:
    """A HEAR task from a manifest (CSV/JSON lines read by :func:`aum.data.read_manifest`).

    Each entry needs ``path`` and a split column (``split_column``: values ``train``/``valid``/``test``, or
    fold numbers/names, which become ``fold00 ...`` in sorted order and a ``presplit_kfold`` task). Scene
    tasks read ``label`` (several labels separated by ``label_separator`` make a multilabel task); event
    tasks (``event=True``) read ``events``: JSON list of ``{"label", "start", "end"}`` in seconds, or of
    ``{"label", "start_s", "end_s"}`` (the format of :func:`aum.audio.synth.write_clips`). ``start``/``stop``
    columns cut the audio. ``kwargs`` go to :func:`write_task`.
    """
    entries = read_manifest(manifest)
    values = sorted({str(e.get(split_column, "")).strip() for e in entries})
    if "" in values:
        raise ValueError(f"manifest {manifest}: every entry needs a {split_column!r} value")
    kfold = not set(values) <= {"train", "valid", "test"}
    fold_of = _hear_folds(values) if kfold else {}
    clips, multilabel = [], False
    for e in entries:
        c = {"path": e["path"], "split": fold_of.get(str(e[split_column]).strip(), str(e[split_column]).strip())}
        c.update({k: e[k] for k in ("start", "stop") if k in e})
        if event:
            raw = e.get("events", "[]")
            evs = json.loads(raw) if isinstance(raw, str) else raw
            c["events"] = [{"label": v["label"], "start": 1000.0 * float(v.get("start", v.get("start_s"))),
                            "end": 1000.0 * float(v.get("end", v.get("end_s")))} for v in evs]
        else:
            labels = [s.strip() for s in str(e.get("label", "")).split(label_separator) if s.strip()]
            multilabel |= len(labels) != 1
            c["labels"] = labels
        clips.append(c)
    kwargs.setdefault("split_mode", "presplit_kfold" if kfold else "trainvaltest")
    kwargs.setdefault("embedding_type", "event" if event else "scene")
    kwargs.setdefault("prediction_type", "multilabel" if (event or multilabel) else "multiclass")
    if kwargs["prediction_type"] == "multilabel" and kwargs["embedding_type"] == "scene":
        kwargs.setdefault("evaluation", ["mAP", "d_prime", "aucroc"])
    return write_task(out_dir, task_name, clips, **kwargs)


def _natural(v: str):
    number = v.removeprefix("fold")
    return (0, int(number), v) if number.lstrip("-").isdigit() else (1, 0, v)


def esc10_task(data_dir, out_dir, task_name: str = "esc10", per_class_per_fold: int | None = None,
               overwrite: bool = False) -> Path:
    """ESC-10 (``../shared/data/esc10``: ``meta.csv`` + ``audio/*.flac``, or the ESC-50 download; read by
    :func:`eval.prepare.esc50.prepare`, which checks every file and fold) as a 5-fold multiclass scene task
    (``presplit_kfold``: the ESC folds 1-5 become HEAR's ``fold00..fold04`` here, in the task files only; 5.0 s
    clips; ``top1_acc``; the vocabulary in ESC target order). ``per_class_per_fold`` keeps only the first N
    clips of each class in each fold (for quick tests; the real pack has 8)."""
    prepared = esc50.prepare(data_dir, subset="esc10")
    rank = {c: i for i, c in enumerate(prepared.classes)}
    to_hear = _hear_folds(e["fold"] for e in prepared.entries)
    clips, seen = [], {}
    for e in sorted(prepared.entries, key=lambda e: (e["fold"], rank[e["labels"][0]], e["path"])):
        key = (e["fold"], e["labels"][0])
        seen[key] = seen.get(key, 0) + 1
        if per_class_per_fold is not None and seen[key] > per_class_per_fold:
            continue
        clips.append({"path": e["path"], "split": to_hear[str(e["fold"])], "labels": e["labels"],
                      "name": Path(e["path"]).stem + ".wav"})
    labels = [lbl for lbl in prepared.classes if any(c["labels"][0] == lbl for c in clips)]
    return write_task(out_dir, task_name, clips, embedding_type="scene", prediction_type="multiclass",
                      split_mode="presplit_kfold", evaluation=["top1_acc"], sample_duration=5.0, labels=labels,
                      overwrite=overwrite, extra_metadata={"source": "ESC-10 (CC BY 3.0), " + str(data_dir)})


def _event_clip(seed: int, duration: float, classes: tuple[str, ...], max_events: int, sr: int,
                noise_level: float, min_event: float, max_event: float, min_gap: float):
    """One clip of non-overlapping events at known onsets over background noise: ``(wave, events)`` with
    events ``{"label", "start", "end"}`` in ms. Fully determined by ``seed``."""
    rng = np.random.default_rng([int(seed), 4242])
    n = int(round(duration * sr))
    mix = background_noise(rng, n, sr, noise_level)
    events, t = [], float(rng.uniform(0.0, min_gap + 0.3))
    for _ in range(int(rng.integers(1, max_events + 1))):
        label = classes[int(rng.integers(len(classes)))]
        ev = make_event(label, rng, duration, sr, min_duration=min_event, max_duration=max_event)
        start = int(round(t * sr))
        if start + len(ev) > n:
            break
        mix[start:start + len(ev)] += 10 ** (rng.uniform(-6.0, 0.0) / 20.0) * ev
        events.append({"label": label, "start": 1000.0 * start / sr, "end": 1000.0 * (start + len(ev)) / sr})
        t = (start + len(ev)) / sr + float(rng.uniform(min_gap, min_gap + 0.8))
    return finish_mix(mix), events


def synth_event_task(out_dir, task_name: str = "synth_events", clips: int = 120, duration: float = 4.0,
                     seed: int = 0, classes: Iterable[str] | None = None, max_events: int = 3,
                     noise_level: float = 0.01, min_event: float = 0.25, max_event: float = 1.2,
                     min_gap: float = 0.2, evaluation: Iterable[str] | None = None, overwrite: bool = False
                     ) -> Path:
    """An event task from the built-in generator: ``clips`` clips of ``duration`` s, each with 1..``max_events``
    non-overlapping events (classes from :data:`aum.audio.synth.SOUND_NAMES` or ``classes``; lengths
    ``min_event``..``max_event`` s; gaps >= ``min_gap`` s; levels -6..0 dB) at known onsets over coloured
    noise of RMS ``noise_level`` (on the scale where an event peaks at 1). The first 20 % of clips are the
    test split, the next 20 % valid, the rest train (``trainvaltest``); multilabel, scored by
    ``event_onset_200ms_fms`` (primary) and ``segment_1s_er`` unless ``evaluation`` says otherwise.
    A clip with no event that fits is kept (all background). Deterministic in ``seed``."""
    classes = tuple(classes or SOUND_NAMES)
    unknown = sorted(set(classes) - set(SOUND_NAMES))
    if unknown:
        raise ValueError(f"unknown sound classes {unknown}; choose from {list(SOUND_NAMES)}")
    if clips < 5:
        raise ValueError("synth_event_task needs at least 5 clips (train/valid/test)")
    n_test = n_valid = max(1, int(round(0.2 * clips)))
    out = []
    for i in range(clips):
        wave, events = _event_clip(seed * 1_000_003 + i, duration, classes, max_events, 16000, noise_level,
                                   min_event, max_event, min_gap)
        split = "test" if i < n_test else "valid" if i < n_test + n_valid else "train"
        out.append({"audio": wave, "sample_rate": 16000, "split": split, "name": f"clip_{i:05d}.wav",
                    "events": events})
    return write_task(out_dir, task_name, out, embedding_type="event", prediction_type="multilabel",
                      split_mode="trainvaltest", evaluation=list(evaluation or EVENT_METRICS),
                      sample_duration=duration, labels=sorted(classes), overwrite=overwrite,
                      extra_metadata={"source": f"aum.audio.synth events, seed {seed}"})


def synth_scene_task(out_dir, task_name: str = "synth_scene", per_class: int = 10, folds: int = 5,
                     duration: float = 1.5, seed: int = 0, classes: Iterable[str] | None = None,
                     overwrite: bool = False) -> Path:
    """A small multiclass scene task from :func:`aum.audio.synth.generate_labelled_clip`: ``per_class`` clips of each
    class (``classes``, default all 7 generator classes) of ``duration`` s, dealt round-robin into ``folds``
    folds (``presplit_kfold``, ``top1_acc``)."""
    classes = tuple(classes or SOUND_NAMES)
    if per_class < folds or folds < 3:
        raise ValueError(f"need folds >= 3 and per_class >= folds (every fold holds every class); "
                         f"got per_class={per_class}, folds={folds}")
    clips, splits = [], _fold_names(folds)
    for ci, label in enumerate(classes):
        for j in range(per_class):
            s = seed * 100_003 + ci * 1009 + j
            clips.append({"audio": generate_labelled_clip(s, label, duration), "sample_rate": 16000,
                          "split": splits[j % folds], "labels": [label], "name": f"{label}_{j:04d}.wav"})
    return write_task(out_dir, task_name, clips, embedding_type="scene", prediction_type="multiclass",
                      split_mode="presplit_kfold", evaluation=["top1_acc"], sample_duration=duration,
                      labels=sorted(classes), overwrite=overwrite,
                      extra_metadata={"source": f"aum.audio.synth labelled clips, seed {seed}"})


def main(argv: list[str] | None = None) -> int:
    """Command line (see the module docstring); prints the path of the task folder written. Returns the exit
    status: 0 done, 2 an input error (one message, the traceback with ``--debug``)."""
    return run_cli("aum-hear-tasks", _main, argv)


def _main(argv: list[str]) -> int:
    ap = argparse.ArgumentParser(prog="python -m hear_api.tasks", description="Write HEAR task folders.")
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("esc10", help="ESC-10 pack -> 5-fold scene task")
    p.add_argument("data_dir")
    p.add_argument("out")
    p.add_argument("--name", default="esc10")
    p.add_argument("--per-class-per-fold", type=int, default=None, help="keep N clips per class per fold")
    p = sub.add_parser("synth-events", help="event task from the built-in generator")
    p.add_argument("out")
    p.add_argument("--name", default="synth_events")
    p.add_argument("--clips", type=int, default=120)
    p.add_argument("--duration", type=float, default=4.0)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--classes", default=None, help="comma-separated subset of " + ",".join(SOUND_NAMES))
    p.add_argument("--evaluation", default=None, help="comma-separated metrics (first = primary)")
    p = sub.add_parser("synth-scene", help="small 5-fold scene task from the built-in generator")
    p.add_argument("out")
    p.add_argument("--name", default="synth_scene")
    p.add_argument("--per-class", type=int, default=10)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--duration", type=float, default=1.5)
    p.add_argument("--seed", type=int, default=0)
    p = sub.add_parser("manifest", help="any manifest (CSV / JSON lines) -> task")
    p.add_argument("manifest")
    p.add_argument("out")
    p.add_argument("--name", required=True)
    p.add_argument("--split-column", default="split")
    p.add_argument("--event", action="store_true", help="event task (an 'events' column)")
    p.add_argument("--duration", type=float, default=None, help="cut / pad every clip to this many seconds")
    for p in sub.choices.values():
        p.add_argument("--overwrite", action="store_true", help="replace an existing task folder")
    a = ap.parse_args(argv)
    if a.cmd == "esc10":
        path = esc10_task(a.data_dir, a.out, a.name, a.per_class_per_fold, overwrite=a.overwrite)
    elif a.cmd == "synth-events":
        path = synth_event_task(a.out, a.name, clips=a.clips, duration=a.duration, seed=a.seed,
                                classes=a.classes.split(",") if a.classes else None,
                                evaluation=a.evaluation.split(",") if a.evaluation else None, overwrite=a.overwrite)
    elif a.cmd == "synth-scene":
        path = synth_scene_task(a.out, a.name, per_class=a.per_class, folds=a.folds, duration=a.duration,
                                seed=a.seed, overwrite=a.overwrite)
    else:
        path = manifest_task(a.manifest, a.out, a.name, split_column=a.split_column, event=a.event,
                             sample_duration=a.duration, overwrite=a.overwrite)
    meta = check_task(path)
    print(f"{path}: {meta['embedding_type']} task, {meta['clip_count']} clips, {meta['label_count']} labels, "
          f"splits {meta['splits']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
