"""Audio datasets for training: folders or manifests of files, random fixed-length crops, bad files skipped.

A missing, empty, undecodable or non-finite file gives ``None`` (dropped by :func:`collate_skip_bad`) and a line
in a JSON-lines log that DataLoader workers share (:meth:`BadFileLog.summary`, :func:`format_bad_file_report`).
Crops depend only on ``(seed, epoch, index)``: use ``(epoch, index)`` keys (:class:`EpochSampler`) or ``set_epoch``.
"""

from __future__ import annotations

import collections
import csv
import json
import logging
import os
import time
from pathlib import Path

import numpy as np
import soundfile as sf
import torch

from aum.audio.features import get_preset, pad_to_one_frame, waveform_to_features
from aum.audio.frames import KALDI_SAMPLE_RATE, frames_for_samples, samples_for_frames
from aum.audio.io import AudioDecodeError, load_audio
from aum.audio.synth import generate_clip

__all__ = ["AUDIO_EXTENSIONS", "MAX_BAD_LOADS", "scan_audio", "read_manifest", "check_files", "BadFileLog",
           "UnusableDataError", "AudioClipDataset", "SynthAudioDataset", "EpochSampler", "collate_skip_bad",
           "format_bad_file_report", "load_clip", "bad_file_reason", "epoch_index"]

log = logging.getLogger(__name__)
AUDIO_EXTENSIONS = (".wav", ".flac", ".ogg") + ((".mp3",) if "MP3" in sf.available_formats() else ())
MAX_BAD_LOADS = 50  # a data set whose first this many different clips (or all, if fewer) fail to load is unusable


def scan_audio(root) -> list[Path]:
    """Audio files (``AUDIO_EXTENSIONS`` in any case; mp3 where soundfile decodes it) under ``root``, recursively,
    sorted. Raises ``FileNotFoundError``/``ValueError`` naming ``root`` if it is not a folder or has no audio."""
    root = Path(root)
    if not root.is_dir():
        raise (ValueError if root.exists() else FileNotFoundError)(f"audio folder not found or not a folder: {root}")
    files = sorted(p for p in root.rglob("*") if p.suffix.lower() in AUDIO_EXTENSIONS and p.is_file())
    if not files:
        raise ValueError(f"no audio files ({', '.join(AUDIO_EXTENSIONS)}) found under {root}")
    return files


def _entry(row, base: Path, where: str) -> dict:
    path = str(row.get("path") or "").strip() if isinstance(row, dict) else ""
    if not path:
        raise ValueError(f"{where}: expected an entry with a non-empty 'path', got {str(row)[:80]!r}")
    e = {k: v for k, v in row.items() if k is not None and v not in (None, "")}
    e["path"] = str(base / path if not os.path.isabs(path) else path)
    if "label" not in e and "labels" in e:
        e["label"] = e["labels"]
    for k in ("start", "stop"):
        if k in e:
            try:
                e[k] = float(e[k])
            except (TypeError, ValueError):
                raise ValueError(f"{where}: {k}={e[k]!r} is not a number of seconds") from None
    return e


def _json_rows(path: Path, text: str) -> list[tuple[str, object]]:
    """``(where, row)`` of a JSON list or of JSON lines; invalid JSON raises ``ValueError`` naming the line of the
    file (``manifest PATH:LINE: invalid JSON (...)``)."""
    if text.lstrip()[:1] == "[":
        try:
            return [(f"{path} item {i}", r) for i, r in enumerate(json.loads(text))]
        except json.JSONDecodeError as e:      # its line and column are those of the whole file
            raise ValueError(f"manifest {path}:{e.lineno}: invalid JSON ({e})") from None
    rows = []
    for i, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                rows.append((f"{path}:{i}", json.loads(line)))
            except json.JSONDecodeError as e:  # its line is 1: the line within this one line of the file
                raise ValueError(f"manifest {path}:{i}: invalid JSON ({e.msg}: column {e.colno})") from None
    return rows


def read_manifest(path) -> list[dict]:
    """Entries (dicts) of a CSV manifest (header with a ``path`` column; optional ``label``/``labels``, ``start``,
    ``stop`` (seconds), ``split``; ``.tsv``: tab-separated) or JSON lines (``{"path": ...}`` per line, or a JSON
    list). Relative paths are resolved against the manifest's folder; ``labels`` is also given as ``label``.
    Missing audio is not checked (:func:`check_files`). ``ValueError`` naming the file for no ``path``/no rows."""
    path = Path(path)
    base, text = path.parent, path.read_text(encoding="utf-8-sig")
    if path.suffix.lower() in (".jsonl", ".json", ".ndjson") or text.lstrip()[:1] in ("{", "["):
        rows = _json_rows(path, text)
    else:
        reader = csv.DictReader(text.splitlines(True), delimiter="\t" if path.suffix.lower() == ".tsv" else ",")
        fields = [f.strip() for f in reader.fieldnames or []]
        if "path" not in fields:
            raise ValueError(f"manifest {path} has no 'path' column (columns: {fields or 'none'})")
        reader.fieldnames = fields
        rows = [(f"{path}:{reader.line_num}", r) for r in reader]
    entries = [_entry(r, base, where) for where, r in rows]
    if not entries:
        raise ValueError(f"manifest {path} lists no audio files")
    return entries


def check_files(entries) -> dict:
    """Count the entries (dicts with ``path``, or paths) whose file is missing:
    ``{"total", "missing", "examples": up to 5 missing paths, "message"}``."""
    paths = [e["path"] if isinstance(e, dict) else str(e) for e in entries]
    missing = [p for p in paths if not os.path.isfile(p)]
    msg = f"{len(missing)} of {len(paths)} audio files missing" + (f", e.g. {missing[0]}" if missing else "")
    return {"total": len(paths), "missing": len(missing), "examples": missing[:5], "message": msg}


class BadFileLog:
    """Record of files skipped as bad: kept in memory (this process) and appended, one JSON object per line
    (``{"path", "reason", "error", "index", "epoch", "pid", "time"}``), to ``path`` when given; each line is
    one ``O_APPEND`` write, so DataLoader workers can share the file."""

    def __init__(self, path=None):
        self.path, self.records = (Path(path) if path else None), []

    def record(self, path, reason: str, error: str = "", index: int | None = None, epoch: int | None = None) -> dict:
        """Add one failure (and append it to the log file); warns once per file in this process."""
        rec = {"path": str(path), "reason": reason, "error": str(error)[:500], "index": index, "epoch": epoch,
               "pid": os.getpid(), "time": time.time()}
        if not any(r["path"] == rec["path"] for r in self.records):
            log.warning("skipping bad audio file %s (%s): %s", path, reason, rec["error"])
        self.records.append(rec)
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            with open(self.path, "ab", buffering=0) as fh:  # O_APPEND, one unbuffered write per line
                fh.write((json.dumps(rec) + "\n").encode())
        return rec

    @staticmethod
    def summary(path) -> dict:
        """Read a log file back: ``{"count": failures, "files": unique files, "reasons": {reason: files},
        "by_file": {path: last reason}, "examples": [records], "unreadable_lines": n}`` (zeros if absent)."""
        recs, bad = [], 0
        lines = Path(path).read_text(errors="replace").splitlines() if path and Path(path).is_file() else []
        for line in filter(str.strip, lines):
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                rec = None
            if isinstance(rec, dict) and "path" in rec and "reason" in rec:
                recs.append(rec)
            else:
                bad += 1
        return _summarize(recs, bad)


def _summarize(recs: list[dict], unreadable: int = 0) -> dict:
    """:meth:`BadFileLog.summary` of failure records."""
    first = {}
    for rec in recs:
        first.setdefault(rec["path"], rec)
    by_file = {r["path"]: r["reason"] for r in recs}
    return {"count": len(recs), "files": len(by_file), "reasons": dict(collections.Counter(by_file.values())),
            "by_file": by_file, "examples": list(first.values())[:10], "unreadable_lines": unreadable}


def format_bad_file_report(path) -> str:
    """One human-readable paragraph about the bad-file log at ``path`` (for the end of a run). ``path`` may be a
    :class:`BadFileLog`: its file, or its in-memory records when it has no file."""
    if isinstance(path, BadFileLog):
        s, path = (BadFileLog.summary(path.path) if path.path else _summarize(path.records)), path.path or "(in memory)"
    else:
        s = BadFileLog.summary(path)
    if not s["count"]:
        return "bad audio files: none"
    reasons = ", ".join(f"{k}: {v}" for k, v in sorted(s["reasons"].items()))
    lines = [f"bad audio files: {s['files']} file(s) skipped ({s['count']} failed loads; {reasons}); log: {path}"]
    lines += [f"  {r['path']} [{r['reason']}] {r['error']}" for r in s["examples"]]
    return "\n".join(lines + ([f"  ... and {s['files'] - len(s['examples'])} more"] if s["files"] > 10 else []))


class UnusableDataError(ValueError):
    """No clip of a data set could be loaded: the first :data:`MAX_BAD_LOADS` different clips tried (or every clip
    of a smaller data set) all failed. A ``ValueError`` (bad input); the message ends with
    :func:`format_bad_file_report`."""


def load_clip(entry: dict, sample_rate: int) -> torch.Tensor:
    """The audio of one entry (``path``; optional ``start``/``stop`` in seconds, ``None`` or ``""``: unset) as a
    mono float tensor at ``sample_rate`` (:func:`aum.audio.load_audio`), cut to ``[start, stop)``. A missing,
    undecodable or non-finite file raises what ``load_audio`` raises; an empty segment raises ``ValueError``
    naming the file and the segment. :func:`bad_file_reason` names the failure for a :class:`BadFileLog`."""
    wave = load_audio(entry["path"], sample_rate)
    start, stop = (entry.get(k) if entry.get(k) not in (None, "") else None for k in ("start", "stop"))
    wave = wave[max(0, round(float(start or 0) * sample_rate)):
                None if stop is None else round(float(stop) * sample_rate)]
    if wave.numel() == 0:
        raise ValueError(f"{entry['path']}: empty segment start={start} stop={stop}")
    return wave


def bad_file_reason(error: Exception) -> str:
    """The ``reason`` a :class:`BadFileLog` records for a failed load: ``missing``, ``decode_error``, ``empty``,
    ``non_finite``, ``invalid`` (another ``ValueError``), ``io_error`` (another ``OSError``) or ``error``."""
    text = str(error)
    return ("missing" if isinstance(error, FileNotFoundError) else "decode_error"
            if isinstance(error, AudioDecodeError) else "empty" if "empty" in text else "non_finite"
            if "non-finite" in text else "invalid" if isinstance(error, ValueError) else "io_error"
            if isinstance(error, OSError) else "error")


def epoch_index(key, epoch: int, n: int) -> tuple[int, int]:
    """``(epoch, index)`` of a dataset key: an ``(epoch, index)`` pair (:class:`EpochSampler`) or a plain index,
    which takes ``epoch`` (the dataset's :meth:`set_epoch`). Negative indices count from the end; an index
    outside a dataset of ``n`` items raises ``IndexError``."""
    epoch, index = (int(key[0]), int(key[1])) if isinstance(key, (tuple, list)) else (epoch, int(key))
    if not -n <= index < n:
        raise IndexError(f"index {index} out of range for a dataset of {n} items")
    return epoch, index % n


class _EpochMixin:
    epoch = 0

    def set_epoch(self, epoch: int) -> None:
        """Set the epoch used for plain integer keys / yielded by a sampler."""
        self.epoch = int(epoch)


class AudioClipDataset(_EpochMixin, torch.utils.data.Dataset):
    """Random fixed-length crops of audio files as model-ready features.

    ``entries_or_root``: a folder (:func:`scan_audio`), a manifest file (:func:`read_manifest`) or a list of paths
    / entry dicts (``path``; optional ``label``, ``start``/``stop`` s). Audio is read by :func:`aum.audio.load_audio`
    at ``sample_rate``, cut to ``start``/``stop``, and cropped to ``crop_frames`` feature frames (or ``crop_seconds``;
    both ``None``: whole clips) at an offset from ``numpy.random.default_rng([seed, epoch, index])``; shorter clips
    get zero-padded features. Items: ``{"fbank": [crop_frames, 128] float32, "index", "path"}`` (+ ``"label"`` if
    the entry has one, + ``"wave"``, the zero-padded crop, if ``return_waveform``). A bad file gives ``None``,
    recorded in ``self.bad_files``: a :class:`BadFileLog` appending to ``bad_files_path`` (out/bad_files.jsonl).
    Once ``min(MAX_BAD_LOADS, len(self))`` different clips have failed in this process and none has loaded, the
    next item raises :class:`UnusableDataError` with the bad-file report instead of trying more files."""

    def __init__(self, entries_or_root, sample_rate: int = 16000, crop_seconds: float | None = None,
                 crop_frames: int | None = 1024, preset="audioset", seed: int = 0, return_waveform: bool = False,
                 bad_files_path=None):
        src = entries_or_root
        if isinstance(src, (str, os.PathLike)):
            src = scan_audio(src) if Path(src).is_dir() else read_manifest(src)
        self.entries = [dict(e) if isinstance(e, dict) else {"path": str(e)} for e in src]
        if not self.entries:
            raise ValueError("AudioClipDataset: no audio files given")
        self.sample_rate, self.preset, self.seed = int(sample_rate), get_preset(preset), int(seed)
        if crop_seconds is not None:  # the frames of that many seconds
            crop_frames = max(1, frames_for_samples(round(float(crop_seconds) * self.preset.sample_rate),
                                                    self.preset.kind))
        if crop_frames is not None and int(crop_frames) < 1:
            raise ValueError(f"crop_frames must be a positive integer or None, got {crop_frames!r}")
        self.crop_frames = None if crop_frames is None else int(crop_frames)  # None: whole clips, own length
        self.crop_samples = crop_frames and samples_for_frames(self.crop_frames, self.preset.kind, self.sample_rate)
        self.return_waveform = bool(return_waveform)
        self.bad_files = BadFileLog(bad_files_path)
        self._failed: set[int] | None = set()   # entries that failed before any clip loaded; None once one has

    def __len__(self) -> int:
        return len(self.entries)

    def _check_usable(self) -> None:
        """Raise :class:`UnusableDataError` (with the bad-file report) when no clip has loaded in this process and
        ``min(MAX_BAD_LOADS, len(self))`` different entries have failed; call before each load."""
        if self._failed is not None and len(self._failed) >= min(MAX_BAD_LOADS, len(self.entries)):
            raise UnusableDataError(
                f"the data set is unusable: the first {len(self._failed)} different clips tried (of "
                f"{len(self.entries)}) all failed to load and none loaded (the limit is {MAX_BAD_LOADS} clips, or all "
                f"of a smaller data set)\n{format_bad_file_report(self.bad_files)}")

    def _bad(self, index: int, epoch: int, error: Exception) -> None:
        """Record the failed load of entry ``index`` in ``bad_files`` and count it for :meth:`_check_usable`
        (a successful load sets ``self._failed = None``: the data set is usable)."""
        self.bad_files.record(self.entries[index]["path"], bad_file_reason(error),
                              f"{type(error).__name__}: {error}", index, epoch)
        if self._failed is not None:
            self._failed.add(index)

    def _load(self, entry: dict) -> torch.Tensor:
        """The waveform of ``entry`` at the data set's rate (:func:`load_clip`); subclasses add other sources."""
        return load_clip(entry, self.sample_rate)

    def __getitem__(self, key):
        """Item for ``index`` or ``(epoch, index)``; ``None`` if the file is bad (the failure is logged)."""
        epoch, index = epoch_index(key, self.epoch, len(self.entries))
        entry = self.entries[index]
        self._check_usable()
        try:
            wave = self._load(entry)
        except (OSError, ValueError, RuntimeError, EOFError) as e:
            self._bad(index, epoch, e)
            return None
        self._failed = None
        n = self.crop_samples
        if n is not None and wave.numel() > n:
            off = int(np.random.default_rng([self.seed, epoch, index]).integers(0, wave.numel() - n + 1))
            wave = wave[off:off + n]
        return _item(wave, self.sample_rate, self.preset, self.crop_frames, index, entry["path"],
                     entry.get("label"), (n or wave.numel()) if self.return_waveform else None)


def _item(wave, sample_rate, preset, frames, index, path, label=None, wave_len=None) -> dict:
    """Features of ``wave`` (too-short clips padded to one window; features zero-padded to ``frames``)."""
    feats = waveform_to_features(pad_to_one_frame(wave, sample_rate, preset), sample_rate, preset=preset,
                                 target_frames=frames, name=path)
    pad = None if wave_len is None else torch.nn.functional.pad(wave, (0, max(0, wave_len - wave.numel()))).float()
    item = {"fbank": feats.to(torch.float32), "index": index, "path": path, "label": label, "wave": pad}
    return {k: v for k, v in item.items() if v is not None}


class SynthAudioDataset(_EpochMixin, torch.utils.data.Dataset):
    """The built-in default data: ``length`` procedural clips (:func:`aum.audio.synth.generate_clip`, 16 kHz) of
    ``crop_frames * 0.01 + 0.015`` s, i.e. exactly ``crop_frames`` feature frames, as the items of
    :class:`AudioClipDataset` (``path`` is ``"synth:<clip seed>"``). The clip seed comes from
    ``(seed, epoch, index)``, so every epoch sees new clips when keys are ``(epoch, index)``."""

    def __init__(self, length: int, crop_frames: int = 1024, preset="audioset", seed: int = 0,
                 return_waveform: bool = False):
        self.length, self.crop_frames, self.seed = int(length), int(crop_frames), int(seed)
        self.preset, self.return_waveform = get_preset(preset), bool(return_waveform)
        self.duration = samples_for_frames(self.crop_frames) / KALDI_SAMPLE_RATE

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, key):
        """Item for ``index`` or ``(epoch, index)``."""
        epoch, index = epoch_index(key, self.epoch, self.length)
        clip_seed = int(np.random.SeedSequence([self.seed, epoch, index]).generate_state(1)[0])
        wave = torch.from_numpy(generate_clip(clip_seed, self.duration)[0])
        return _item(wave, KALDI_SAMPLE_RATE, self.preset, self.crop_frames, index, f"synth:{clip_seed}", None,
                     wave.numel() if self.return_waveform else None)


class EpochSampler(_EpochMixin, torch.utils.data.Sampler):
    """Yields ``(epoch, index)`` keys over ``length`` items, shuffled per epoch by ``(seed, epoch)`` when
    ``shuffle``; ``set_epoch`` (or ``epoch=``) picks the epoch. Use as ``DataLoader(..., sampler=...)``."""

    def __init__(self, length: int, shuffle: bool = True, seed: int = 0, epoch: int = 0):
        self.length, self.shuffle, self.seed, self.epoch = int(length), bool(shuffle), int(seed), int(epoch)

    def __len__(self) -> int:
        return self.length

    def __iter__(self):
        order = (np.random.default_rng([self.seed, self.epoch]).permutation(self.length) if self.shuffle
                 else np.arange(self.length))
        return iter([(self.epoch, int(i)) for i in order])


def collate_skip_bad(batch):
    """Collate dataset items, dropping ``None`` (bad files): tensors are stacked, ints/floats become tensors,
    anything else (paths, string labels) a list (``None`` where an item lacks the key). Returns ``None`` when
    every item was bad."""
    items = [b for b in batch if b is not None]
    if not items:
        return None
    out = {}
    for k in dict.fromkeys(k for it in items for k in it):
        vals = [it.get(k) for it in items]
        if all(isinstance(v, torch.Tensor) for v in vals):
            out[k] = torch.stack(vals)
        elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in vals):
            out[k] = torch.tensor(vals)
        else:
            out[k] = vals
    return out
