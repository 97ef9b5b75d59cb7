"""Embeddings of audio of any length, for any encoder that describes itself (AuM, DASS): one vector per time
column, timestamps, and clip (scene) vectors, in bounded memory. The one embedding path of the project:
:mod:`hear_api`, :mod:`eval.embeddings` (linear probes) and :mod:`hear_api.select_layer` all go through it.

The encoder sees a ``[frames, 128]`` spectrogram as a grid of tokens; a *column* is the set of frequency
tokens that share one time position. Its size comes from the encoder (:func:`time_geometry`: ``token_frames``
and ``frame_multiple``): 16 frames = 160 ms for 16x16 AuM patches on the 10 ms Kaldi hop, 32 frames = 320 ms
for DASS's last stage (finer at its earlier stages). This package turns a clip of any length - 50 ms or
10 minutes - into column embeddings with timestamps:

* :func:`column_embeddings` (:mod:`aum.embed.windows`) runs the encoder over **sliding windows** (default:
  the model's training length, 1024 frames for AudioSet models, with a hop of half a window) in batches of
  ``batch_size`` windows, so memory depends on the window, not on the clip. Windows overlap; each output column
  is taken from the window in which it is most central (nearest window centre), so every column has at least
  a quarter of a window of context on both sides except at the clip edges. A clip that fits in one window is
  one encoder pass over the whole clip (identical to ``model.forward_features``). The frequency tokens of a
  column are combined by ``combine="mean"`` (``D`` values) or ``"concat"`` (``F' * D`` values,
  frequency-major).
* :func:`fbank_frames` computes the Kaldi fbank of long audio in chunks (exact: Kaldi frames are
  independent), :func:`shifted_column_embeddings` gives a finer hop by running the encoder on copies of
  the spectrogram shifted by a fraction of a column in time and interleaving the columns, and
  :func:`interpolate_columns` resamples column embeddings to any time grid (linear).
* :func:`embed_waveform` (:mod:`aum.embed.waveform`) puts it together for waveforms: timestamps in
  milliseconds at ``0, hop, 2 hop, ...`` up to the end of the audio, with ``method="shift"`` (default,
  40 ms hop: four shifted passes for AuM, 4x the encoder cost), ``"interp"`` (one pass, linear interpolation
  of the native columns) or ``"native"`` (one pass, the column step).
* Pooling (:mod:`aum.embed.pooling`), one vocabulary everywhere: ``mean``, ``max`` (over the columns) and
  ``cls`` (the class token, for encoders that have one) joined by ``+`` (``"mean+max"``, ``"cls+mean"``;
  ``"both"`` is an alias of ``"cls+mean"``). :func:`scene_embedding` pools waveforms, :func:`scene_from_features`
  normalised features, :func:`pool_columns` column embeddings already computed.

Time convention: Kaldi frame ``i`` covers ``[10 i, 10 i + 25)`` ms of the input; a column covers the audio of
its frames, and its time is the centre of that span (``87.5 + 160 j`` ms for 16x16 patches, ``167.5 + 320 j``
for DASS's 32-frame cells). To put column centres at ``0, hop, 2 hop, ...`` ms, :func:`embed_waveform` pads the
waveform with that first centre (``87.5`` ms) of zeros at the start (and enough at the end for the last
timestamp).
"""
from aum.audio.frames import FRAME_LENGTH_MS, FRAME_SHIFT_MS
from aum.embed.pooling import (POOLING_ALIASES, POOLINGS, check_pooling, parse_pooling, pool_columns, pooled_width,
                               scene_from_features)
from aum.embed.waveform import check_audio_batch, embed_waveform, scene_embedding
from aum.embed.windows import (column_embeddings, column_times_ms, column_width, encode_columns, fbank_frames,
                               interpolate_columns, pad_value_for, read_out_layers, shifted_column_embeddings,
                               time_geometry, window_starts)

__all__ = ["FRAME_SHIFT_MS", "FRAME_LENGTH_MS", "POOLINGS", "POOLING_ALIASES", "check_audio_batch", "check_pooling",
           "column_embeddings", "column_times_ms", "column_width", "embed_waveform", "encode_columns",
           "fbank_frames", "interpolate_columns", "pad_value_for", "parse_pooling", "pool_columns", "pooled_width",
           "read_out_layers", "scene_embedding", "scene_from_features", "shifted_column_embeddings",
           "time_geometry", "window_starts"]
