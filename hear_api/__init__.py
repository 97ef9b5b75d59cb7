"""The HEAR 2021 API for AuM and DASS encoders: name this module (``hear_api``) to hear-eval-kit.

::

    hear-validator hear_api -m encoder.safetensors -d cpu
    python -m heareval.embeddings.runner hear_api --model encoder.safetensors --tasks-dir tasks \\
        --model-options '{"layer": 12, "combine": "concat"}'
    python -m hear_api.evaluate encoder.safetensors --tasks tasks --out results   # all of it, in one command

``load_model(model_file_path="", **options)`` loads any checkpoint :func:`aum.checkpoint.load_checkpoint`
reads (ours, the official AuM ``.pth`` files, the Hugging Face re-upload folder / ``model.safetensors``,
Vision Mamba ImageNet weights, a headless self-supervised encoder, a DASS checkpoint). With no path it uses
``$AUM_HEAR_CHECKPOINT`` if set, else the documented default: a **randomly initialised, untrained**
AuM-tiny (depth 24, seed 0; ``arch``/``depth``/``seed`` options change it, ``arch="dass_tiny"`` a DASS one),
announced with a loud warning. The encoder describes its own columns (:func:`aum.embed.time_geometry`); the
numbers below are AuM's (DASS: 320 ms columns of 4 frequency cells, no class token).

Embeddings (all computed by :mod:`aum.embed`, which handles any length in bounded memory):

- audio: float32 ``[n_sounds, n_samples]`` at 16 kHz (``model.sample_rate``), any length (a 10 ms clip, a
  10-minute recording), on the model's device; features: the Kaldi fbank of AuM, normalised with the
  checkpoint's preset (AudioSet statistics by default). Integer PCM (e.g. int16), zero-length clips, a
  ``(n, 1)`` column and NaN/Inf samples are rejected with a ``ValueError`` (never rescaled or padded silently).
- ``get_timestamp_embeddings``: one vector per time column of patches; the 8 frequency patches of a column
  are **averaged** by default (``combine="concat"`` concatenates them). Timestamps in **ms** at column
  centres ``0, 40, 80, ...`` up to the end of the clip. The native column hop is 160 ms; the default 40 ms hop
  comes from running the encoder on 4 copies of the spectrogram shifted by 4 frames (every vector a real
  patch column; ``fine="interp"`` interpolates the 160 ms columns instead, ``fine="native"`` keeps 160 ms).
- ``get_scene_embeddings``: the mean of the clip's columns (``scene="mean+max"`` adds their maximum, as the
  HEAR naive baselines pool; ``scene="cls"`` or ``"cls+mean"`` for the class token).
- Audio longer than the model's window (1024 frames = 10.24 s for AudioSet models) is encoded in windows
  with a hop of half a window, each column taken from the window where it is most central.

See :class:`hear_api.model.EmbeddingOptions` for every ``--model-options`` key; ``$AUM_HEAR_OPTIONS`` (JSON)
sets defaults for them, for tools that cannot pass options (the validator).
"""
from __future__ import annotations

from typing import Tuple

import torch

from hear_api.model import EmbeddingOptions, HearAuM, build

__all__ = ["load_model", "get_timestamp_embeddings", "get_scene_embeddings", "HearAuM", "EmbeddingOptions"]


def load_model(model_file_path: str = "", **model_options) -> HearAuM:
    """Load an AuM encoder for HEAR.

    ``model_file_path``: any checkpoint the library loads (ours, official AuM, HF re-upload, Vim, headless
    encoder); ``""`` uses ``$AUM_HEAR_CHECKPOINT`` or the random, untrained default (loud warning).
    ``model_options`` (heareval's ``--model-options`` JSON): :class:`EmbeddingOptions` fields (``layer``,
    ``combine``, ``scene``, ``hop_ms``, ``fine``, ``window``, ``window_hop``, ``pad_to_window``,
    ``features``, ``batch_size``) and, for the default, ``arch``, ``depth``, ``seed``.
    Returns a :class:`HearAuM` (a ``torch.nn.Module``) with ``sample_rate``, ``scene_embedding_size`` and
    ``timestamp_embedding_size``.
    """
    return build(model_file_path, **model_options)


def get_timestamp_embeddings(audio: torch.Tensor, model: HearAuM) -> Tuple[torch.Tensor, torch.Tensor]:
    """``audio`` float32 ``[n_sounds, n_samples]`` (16 kHz) -> ``(embeddings float32 [n_sounds, n_timestamps,
    model.timestamp_embedding_size], timestamps [n_sounds, n_timestamps] in ms)``; timestamps are column
    centres at a regular hop (40 ms by default) from 0 to at most the clip's end."""
    with torch.no_grad():
        return model.timestamp_embeddings(audio)


def get_scene_embeddings(audio: torch.Tensor, model: HearAuM) -> torch.Tensor:
    """``audio`` float32 ``[n_sounds, n_samples]`` (16 kHz) -> float32 ``[n_sounds, model.scene_embedding_size]``."""
    with torch.no_grad():
        return model.scene_embeddings(audio)
