"""Our own HEAR API validator: the PyPI hear-validator's checks plus the stricter rules of its GitHub
version (2021.0.6, not on PyPI), as assertions.

``python -m hear_api.validate [CHECKPOINT] [--device cpu] [--model-options JSON]`` prints a report and
exits non-zero on the first broken rule. Rules checked (``validate_module``):

- ``load_model``'s path argument is optional; the model is a ``torch.nn.Module`` with an int
  ``sample_rate`` in {16000, 22050, 44100, 48000} and int ``scene_embedding_size`` /
  ``timestamp_embedding_size``;
- timestamp embeddings for batches of white noise of 2.0 s (x16, PyPI) and 1.07 / 1.98 / 4.0 s (x2, GitHub),
  plus any extra lengths asked for: float32 ``[n, T, size]``, timestamps ``[n, T]``, all finite; with more
  than one timestamp: hop deviation < 1e-3 ms (PyPI), no timestamp past the end of the audio, the first
  within one hop of the start, the last within one hop of the end (GitHub errors at two hops, warns at one;
  we require one). A mean hop above 50 ms is reported as a warning;
- scene embeddings for 3.74 s (x8, PyPI) and 2.74 s (x4, GitHub): float32 ``[n, size]``, finite.
"""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import sys
import time

import numpy as np
import torch

ACCEPTABLE_SAMPLE_RATES = (16000, 22050, 44100, 48000)
TIMESTAMP_CASES = ((16, 2.0), (2, 1.07), (2, 1.98), (2, 4.0))
SCENE_CASES = ((8, 3.74), (4, 2.74))


class ValidationError(AssertionError):
    """A HEAR API rule the module breaks; the message names the rule and the values."""


def _require(cond: bool, msg: str) -> None:
    if not cond:
        raise ValidationError(msg)


def check_timestamp_output(emb, ts, n_sounds: int, length_s: float, size: int) -> list[str]:
    """Check one ``get_timestamp_embeddings`` result for ``n_sounds`` clips of ``length_s`` seconds.
    Raises :class:`ValidationError` on a broken rule; returns warnings (e.g. a hop above 50 ms)."""
    warnings_ = []
    _require(isinstance(emb, torch.Tensor) and isinstance(ts, torch.Tensor), "outputs must be torch tensors")
    _require(emb.dtype == torch.float32, f"embeddings must be float32, got {emb.dtype}")
    _require(emb.ndim == 3, f"embeddings must be 3-D [n, T, size], got shape {tuple(emb.shape)}")
    _require(ts.ndim == 2, f"timestamps must be 2-D [n, T], got shape {tuple(ts.shape)}")
    _require(emb.shape[0] == n_sounds, f"passed {n_sounds} sounds, got {emb.shape[0]} embeddings")
    _require(tuple(emb.shape[:2]) == tuple(ts.shape), f"embeddings {tuple(emb.shape)} vs timestamps {tuple(ts.shape)}")
    _require(emb.shape[2] == size, f"embedding size {emb.shape[2]} != timestamp_embedding_size {size}")
    _require(emb.shape[1] >= 1, "no timestamps")
    _require(bool(torch.isfinite(emb).all()), "embeddings contain NaN/Inf")
    t = ts.detach().cpu().numpy().astype(np.float64)
    _require(bool(np.isfinite(t).all()), "timestamps contain NaN/Inf")
    end = 1000.0 * length_s
    _require(float(t.max()) <= end + 1e-6, f"timestamp {t.max()} ms past the end of {end} ms audio")
    _require(float(t.min()) >= 0.0, f"negative timestamp {t.min()} ms")
    if t.shape[1] > 1:
        d = np.diff(t, axis=1)
        hop = float(d.mean())
        _require(hop > 0, f"timestamps must increase, mean hop {hop}")
        dev = float(np.abs(d - hop).max())
        _require(dev < 1e-3, f"timestamps not regular: deviation {dev} ms from the mean hop {hop} ms")
        _require(float(t[:, 0].max()) <= hop + 1e-6, f"first timestamp {t[:, 0].max()} ms is more than one hop "
                                                     f"({hop} ms) from the start")
        _require(float(t[:, -1].min()) >= end - hop - 1e-6, f"last timestamp {t[:, -1].min()} ms is more than one "
                                                            f"hop ({hop} ms) before the end ({end} ms)")
        if hop > 50.0:
            warnings_.append(f"mean hop {hop} ms > 50 ms (HEAR recommends <= 50 ms)")
    else:
        _require(float(t[0, 0]) <= end, "single timestamp past the end")
    return warnings_


def check_scene_output(emb, n_sounds: int, size: int) -> None:
    """Check one ``get_scene_embeddings`` result; raises :class:`ValidationError` on a broken rule."""
    _require(isinstance(emb, torch.Tensor), "scene embeddings must be a torch tensor")
    _require(emb.dtype == torch.float32, f"scene embeddings must be float32, got {emb.dtype}")
    _require(emb.ndim == 2 and emb.shape == (n_sounds, size),
             f"scene embeddings must be [{n_sounds}, {size}], got {tuple(emb.shape)}")
    _require(bool(torch.isfinite(emb).all()), "scene embeddings contain NaN/Inf")


def validate_module(module_name: str = "hear_api", model_file_path: str = "", device: str = "cpu",
                    extra_lengths=(), seed: int = 0, model_options: dict | None = None) -> dict:
    """Run every rule on ``module_name`` (see the module docstring); returns a report dict
    ``{"sample_rate", "scene_embedding_size", "timestamp_embedding_size", "hop_ms", "warnings", "seconds"}``.
    ``extra_lengths``: more clip lengths (s) to check, two clips each. Raises :class:`ValidationError`."""
    t0 = time.time()
    module = importlib.import_module(module_name)
    for fn in ("load_model", "get_timestamp_embeddings", "get_scene_embeddings"):
        _require(callable(getattr(module, fn, None)), f"module {module_name} has no function {fn}")
    params = list(inspect.signature(module.load_model).parameters.values())
    _require(bool(params) and params[0].default is not inspect.Parameter.empty,
             "load_model's model_file_path argument must be optional")
    opts = dict(model_options or {})
    model = module.load_model(model_file_path, **opts) if model_file_path else module.load_model(**opts)
    _require(isinstance(model, torch.nn.Module), f"load_model must return a torch.nn.Module, got {type(model)}")
    model.to(device)
    for attr in ("sample_rate", "scene_embedding_size", "timestamp_embedding_size"):
        _require(isinstance(getattr(model, attr, None), int) and not isinstance(getattr(model, attr), bool),
                 f"model.{attr} must be an int, got {getattr(model, attr, None)!r}")
    sr = model.sample_rate
    _require(sr in ACCEPTABLE_SAMPLE_RATES, f"sample_rate {sr} not in {ACCEPTABLE_SAMPLE_RATES}")
    gen = torch.Generator().manual_seed(seed)
    warns, hops = [], set()
    cases = list(TIMESTAMP_CASES) + [(2, float(x)) for x in extra_lengths]
    with torch.no_grad():
        for n, length in cases:
            audio = (torch.rand(n, int(length * sr), generator=gen) * 2 - 1).to(device)
            emb, ts = module.get_timestamp_embeddings(audio, model)
            try:
                warns += check_timestamp_output(emb, ts, n, length, model.timestamp_embedding_size)
            except ValidationError as e:
                raise ValidationError(f"get_timestamp_embeddings, {n} clips of {length} s: {e}") from None
            if ts.shape[1] > 1:
                hops.add(round(float(torch.diff(ts.double(), dim=1).mean()), 6))
        for n, length in SCENE_CASES:
            audio = (torch.rand(n, int(length * sr), generator=gen) * 2 - 1).to(device)
            try:
                check_scene_output(module.get_scene_embeddings(audio, model), n, model.scene_embedding_size)
            except ValidationError as e:
                raise ValidationError(f"get_scene_embeddings, {n} clips of {length} s: {e}") from None
    _require(len(hops) <= 1, f"the hop differs between clip lengths: {sorted(hops)} ms")
    return {"sample_rate": sr, "scene_embedding_size": model.scene_embedding_size,
            "timestamp_embedding_size": model.timestamp_embedding_size, "hop_ms": next(iter(hops), None),
            "warnings": sorted(set(warns)), "seconds": round(time.time() - t0, 2)}


def main(argv: list[str] | None = None) -> int:
    """Command line: ``python -m hear_api.validate [CHECKPOINT] [--module hear_api] [--device cpu]
    [--model-options JSON] [--lengths 0.05,5]``."""
    ap = argparse.ArgumentParser(prog="python -m hear_api.validate", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", nargs="?", default="")
    ap.add_argument("--module", default="hear_api")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--model-options", default="{}", help="JSON object passed to load_model")
    ap.add_argument("--lengths", default="0.05,5", help="extra clip lengths in seconds (comma-separated)")
    a = ap.parse_args(argv)
    extra = [float(x) for x in a.lengths.split(",") if x.strip()]
    try:
        report = validate_module(a.module, a.checkpoint, a.device, extra, model_options=json.loads(a.model_options))
    except ValidationError as e:
        print(f"FAILED: {e}", file=sys.stderr)
        return 1
    print(json.dumps(report, indent=2))
    print("strict HEAR validation passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
