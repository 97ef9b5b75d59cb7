"""Frozen-encoder clip embeddings for linear probes: extracted once, streamed, cached on disk.

Cache layout::

    <root>/<encoder key>/<benchmark>/<split>.npz            (last layer)
    <root>/<encoder key>/<benchmark>/<split>.L<layer>.npz   (an intermediate layer)

``root`` is the ``cache_dir`` argument (``--cache``), else ``$AUM_CACHE/embeddings``, else
``~/.cache/aum/embeddings``. The encoder key is the first 16 hex digits of a sha256:

- for a checkpoint file: :func:`aum.checkpoint.content_hash` of its bytes (any config overrides are hashed in);
- for a randomly initialised encoder: :func:`weights_hash` of its weights, i.e. of every state-dict tensor's
  name, dtype, shape and bytes, which is what its saved file would hold. It therefore changes with the preset,
  the seed and the initialisation code alike, and never collides with another random encoder.

Embeddings are built by :mod:`aum.embed` (the one embedding path: the clip, cut or padded to ``target_frames``,
is one window; pooled with its vocabulary), so any encoder that describes itself (AuM, DASS) works. Each file
stores every pooling part of :data:`aum.embed.POOLINGS`: ``mean`` and ``max`` (over the clip's columns, each the
mean of its frequency tokens) and ``cls`` (the class-token output; absent for an encoder without one), so every
``--embedding`` (``mean``, ``cls``, ``mean+max``, ``cls+mean`` alias ``both``, ...) reads the same cache; ``index`` (the rows of the entry list that decoded:
bad files are skipped and logged) and a JSON ``meta`` (entry fingerprint, feature preset, frames, layer, encoder
config, timing). A file whose fingerprint or front end differs from the request is re-extracted and replaced. The
fingerprint (:func:`entries_fingerprint`) covers each audio file's size and modification time, so an audio file
replaced at the same path, or a missing one restored, makes the next run extract the split again.

Memory: audio lives only one batch at a time (``batch_size`` clips); the embeddings themselves, ``3 x N x D``
float32, are kept in memory (a linear probe needs them all anyway).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np
import torch
from tqdm.auto import tqdm

from aum.atomic import atomic_write
from aum.audio.features import get_preset, pad_to_one_frame, waveform_to_features
from aum.checkpoint import content_hash, load_checkpoint
from aum.embed import POOLINGS, column_embeddings, pad_value_for, parse_pooling, pool_columns
from aum.data.datasets import BadFileLog, bad_file_reason, collate_skip_bad, load_clip
from aum.models import AuM, DASS, create_model

log = logging.getLogger(__name__)
DEFAULT_EMBEDDING = "mean"
CACHE_FORMAT = 3                 # 2: the entry fingerprint includes file size and mtime; 3: aum.embed, max stored


def embedding_kind(text: str) -> str:
    """``text`` when it is a pooling of :func:`aum.embed.parse_pooling` (``mean``, ``max``, ``cls`` joined by
    ``+``; ``both`` = ``cls+mean``), for ``--embedding``; ``argparse.ArgumentTypeError`` naming the valid names
    otherwise."""
    import argparse
    try:
        parse_pooling(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def default_cache_dir() -> Path:
    """``$AUM_CACHE/embeddings`` when set, else ``~/.cache/aum/embeddings``."""
    root = os.environ.get("AUM_CACHE")
    return Path(root) / "embeddings" if root else Path.home() / ".cache" / "aum" / "embeddings"


def weights_hash(model: torch.nn.Module) -> str:
    """Hex sha256 of a model's weights: each state-dict tensor's name, dtype, shape and raw bytes, by name."""
    h = hashlib.sha256()
    for name, t in sorted(model.state_dict().items()):
        t = t.detach().cpu().contiguous()
        h.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


@dataclass
class Encoder:
    """A frozen encoder for probing: its cache ``key``, a human ``source`` and a lazy model factory.

    The model is built only when embeddings must actually be extracted (a cache hit never builds it); ``calls``
    counts the batches it encoded. Build one with :meth:`from_checkpoint` or :meth:`random`.
    """

    key: str
    source: str
    factory: Callable[[], AuM | DASS]
    model_: AuM | DASS | None = field(default=None, repr=False)
    calls: int = 0

    @classmethod
    def from_checkpoint(cls, path, **overrides) -> "Encoder":
        """An encoder loaded from any checkpoint kind (:func:`aum.checkpoint.load_checkpoint`); key from its bytes."""
        h = hashlib.sha256(content_hash(path).encode())
        h.update(json.dumps(overrides, sort_keys=True, default=str).encode())
        return cls(h.hexdigest()[:16], str(path), lambda: load_checkpoint(path, **overrides))

    @classmethod
    def random(cls, preset: str, seed: int = 0, **overrides) -> "Encoder":
        """A randomly initialised preset (torch seeded with ``seed``, global RNG untouched); key from its weights."""
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = create_model(preset, **overrides)
        desc = f"random:{preset}:seed{seed}" + "".join(f":{k}={v}" for k, v in sorted(overrides.items()))
        return cls(weights_hash(model)[:16], desc, lambda: model, model)

    @property
    def model(self) -> AuM | DASS:
        """The encoder, built on first use, in eval mode with frozen parameters."""
        if self.model_ is None:
            self.model_ = self.factory()
        self.model_.eval().requires_grad_(False)
        return self.model_


@dataclass
class EmbeddingSet:
    """Cached embeddings of one split, one ``[n, D]`` array per pooling part (:data:`aum.embed.POOLINGS`):
    ``mean``, ``max`` and ``cls`` (``None`` for an encoder without a class token); ``index`` ``[n]`` into the
    entry list."""

    mean: np.ndarray
    max: np.ndarray | None
    cls: np.ndarray | None
    index: np.ndarray
    meta: dict

    def features(self, kind: str = DEFAULT_EMBEDDING) -> np.ndarray:
        """The probe input: the parts of pooling ``kind`` (:func:`aum.embed.parse_pooling`: ``mean``, ``max``,
        ``cls`` joined by ``+``, e.g. ``cls+mean``, alias ``both``) concatenated in that order, ``[n, k D]``."""
        try:
            names = parse_pooling(kind)
        except ValueError as e:
            raise ValueError(f"unknown embedding {kind!r}: {e}") from None
        missing = [name for name in names if getattr(self, name) is None]
        if missing:
            raise ValueError(f"embedding {kind!r} needs {missing[0]!r}, which this cache does not hold"
                             + ("; the encoder has no class token, use 'mean'" if missing[0] == "cls" else ""))
        return np.hstack([getattr(self, name) for name in names])


def _file_state(path) -> list | None:
    """``[size, mtime_ns]`` of a file, or ``None`` when it cannot be stat'ed (missing)."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def entries_fingerprint(entries) -> str:
    """sha256 of what decides the audio of each entry: path, start, stop, an HDF5 key, and the file's size and
    modification time (``None`` when it is missing), so a file replaced at the same path, or a missing one
    restored, changes it. Labels and folds do not matter. Costs one ``stat`` per distinct file."""
    h, states = hashlib.sha256(), {}
    for e in entries:
        path = str(e["path"])
        if path not in states:
            states[path] = _file_state(path)
        key = [path, e.get("start"), e.get("stop"), e.get("hdf5_key"), states[path]]
        h.update(json.dumps(key).encode() + b"\n")
    return h.hexdigest()


class ClipFeatures(torch.utils.data.Dataset):
    """Model-ready features of whole clips, deterministic: the first ``target_frames`` frames (zero-padded).

    Items are ``{"fbank": [frames, 128], "index": i}``; a file that cannot be read gives ``None`` and a line in
    ``bad_files`` (:class:`aum.data.BadFileLog`). ``start``/``stop`` (seconds) of an entry cut the clip first.
    """

    def __init__(self, entries, preset="audioset", target_frames: int | None = 1024, bad_files_path=None):
        self.entries, self.preset, self.frames = list(entries), get_preset(preset), target_frames
        self.bad_files = BadFileLog(bad_files_path)

    def __len__(self) -> int:
        return len(self.entries)

    def __getitem__(self, i: int):
        """Features of entry ``i``, or ``None`` when its file is bad."""
        e, sr = self.entries[i], self.preset.sample_rate
        try:
            wave = pad_to_one_frame(load_clip(e, sr), sr, self.preset)
            feats = waveform_to_features(wave, sr, self.preset, self.frames, name=str(e["path"]))
        except (OSError, ValueError, RuntimeError, EOFError) as err:
            self.bad_files.record(e["path"], bad_file_reason(err), f"{type(err).__name__}: {err}", i)
            return None
        return {"fbank": feats, "index": i}


def extract_embeddings(encoder: Encoder, entries, preset="audioset", target_frames: int | None = 1024,
                       layer: int | None = None, batch_size: int = 16, num_workers: int = 0,
                       device: str | torch.device = "cpu", desc: str = "embeddings",
                       bad_files_path=None) -> tuple[dict, dict]:
    """Encode every entry once, streaming ``batch_size`` clips at a time, with a tqdm bar showing clips/s.

    Each batch of features goes through :func:`aum.embed.column_embeddings` as one window of its own length
    (one encoder pass, the same as ``forward_features``) and is pooled by :func:`aum.embed.pool_columns`.
    Returns ``(arrays, stats)``: arrays ``mean``/``max``/``cls`` (``cls`` only for an encoder with a class
    token) ``[n_ok, D]`` float32 and ``index`` ``[n_ok]``;
    stats ``clips``, ``bad``, ``seconds`` (wall, decoding included), ``clips_per_s``, ``encoder_seconds`` and
    ``encoder_clips_per_s`` (forward passes only), ``has_cls``.
    """
    ds = ClipFeatures(entries, preset, target_frames, bad_files_path)
    loader = torch.utils.data.DataLoader(ds, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_skip_bad)
    model = encoder.model.to(device)
    n, rows = len(ds), {name: None for name in POOLINGS if name != "cls" or model.has_cls}
    pad = pad_value_for(ds.preset)
    ok = np.zeros(n, bool)
    t0, t_enc, done = time.perf_counter(), 0.0, 0
    with torch.inference_mode(), tqdm(total=n, desc=desc, unit="clip", dynamic_ncols=True) as bar:
        for b, batch in enumerate(loader):
            size = min(batch_size, n - b * batch_size)
            if batch is not None:
                t1 = time.perf_counter()
                feats = batch["fbank"].to(device)
                columns, _, cls = column_embeddings(model, feats, window_frames=feats.shape[1], layer=layer,
                                                    batch_size=len(feats), pad_value=pad, return_cls=True)
                encoder.calls += 1
                t_enc += time.perf_counter() - t1
                idx = batch["index"].numpy()
                for name in rows:
                    value = pool_columns(columns, cls, name)
                    if rows[name] is None:
                        rows[name] = np.zeros((n, value.shape[-1]), np.float32)
                    rows[name][idx] = value.float().cpu().numpy()
                ok[idx] = True
            done += size
            bar.update(size)
            bar.set_postfix(clips_per_s=f"{done / (time.perf_counter() - t0):.1f}")
    seconds = time.perf_counter() - t0
    if not ok.any():
        raise RuntimeError(f"{desc}: none of the {n} clips could be read; see the bad-file log "
                           f"{bad_files_path or '(in memory)'}: {ds.bad_files.records[:3]}")
    index = np.flatnonzero(ok)
    arrays = {k: v[index] for k, v in rows.items()} | {"index": index}
    good = int(ok.sum())
    stats = {"clips": good, "bad": n - good, "seconds": seconds, "clips_per_s": n / seconds,
             "encoder_seconds": t_enc, "encoder_clips_per_s": good / max(t_enc, 1e-9),
             "has_cls": model.has_cls, "batch_size": batch_size, "device": str(device)}
    if n - good:
        log.warning("%s: %d of %d clips skipped as bad files", desc, n - good, n)
    return arrays, stats


def cache_path(cache_dir, encoder_key: str, benchmark: str, split: str, layer: int | None = None) -> Path:
    """Where the embeddings of ``(encoder, benchmark, split, layer)`` live (see the module docstring)."""
    root = Path(cache_dir) if cache_dir else default_cache_dir()
    return root / encoder_key / benchmark / (f"{split}.npz" if layer is None else f"{split}.L{layer}.npz")


def save_embeddings(path, arrays: dict, meta: dict) -> Path:
    """Write ``arrays`` and JSON ``meta`` to ``path`` atomically (:func:`aum.atomic.atomic_write`)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda fh: np.savez(fh, **arrays, meta=np.array(json.dumps(meta, default=str))))
    return path


def load_embeddings(path) -> EmbeddingSet:
    """Read an embedding file written by :func:`save_embeddings`."""
    with np.load(path, allow_pickle=False) as z:
        part = {name: (z[name] if name in z.files else None) for name in ("max", "cls")}
        return EmbeddingSet(z["mean"], part["max"], part["cls"], z["index"], json.loads(str(z["meta"])))


def get_embeddings(encoder: Encoder, benchmark: str, split: str, entries, cache_dir=None, preset="audioset",
                   target_frames: int | None = 1024, layer: int | None = None, batch_size: int = 16,
                   num_workers: int = 0, device="cpu", refresh: bool = False,
                   bad_files_path=None) -> tuple[EmbeddingSet, bool]:
    """Embeddings of ``entries`` from the cache, extracting (and caching) them on a miss; ``(set, cache_hit)``.

    A cached file is used only if it was made from the same entries (:func:`entries_fingerprint`), feature
    preset, frame count and layer; otherwise, or with ``refresh``, it is extracted again and overwritten.
    """
    entries = list(entries)
    path = cache_path(cache_dir, encoder.key, benchmark, split, layer)
    want = {"format": CACHE_FORMAT, "fingerprint": entries_fingerprint(entries), "preset": get_preset(preset).name,
            "target_frames": target_frames, "layer": layer}
    if path.is_file() and not refresh:
        try:
            cached = load_embeddings(path)
            if all(cached.meta.get(k) == v for k, v in want.items()):
                log.info("embeddings cache hit: %s", path)
                return cached, True
            log.warning("%s was made from other entries or features; extracting again", path)
        except (OSError, ValueError, KeyError) as err:
            log.warning("unreadable embedding cache %s (%s); extracting again", path, err)
    arrays, stats = extract_embeddings(encoder, entries, preset, target_frames, layer, batch_size, num_workers,
                                       device, desc=f"{benchmark}/{split}", bad_files_path=bad_files_path)
    meta = want | {"encoder_key": encoder.key, "encoder": encoder.source, "has_cls": stats["has_cls"],
                   "config": encoder.model.config.to_dict(), "n_entries": len(entries), "stats": stats,
                   "created": time.strftime("%Y-%m-%dT%H:%M:%S")}
    save_embeddings(path, arrays, meta)
    return EmbeddingSet(arrays["mean"], arrays["max"], arrays.get("cls"), arrays["index"], meta), False
