"""Pick the encoder layer to give hear-eval-kit, on labelled audio that is NOT the evaluation task.

``python -m hear_api.select_layer CHECKPOINT MANIFEST [--layers 4,8,...] [--model-options JSON]``

A lightly pretrained encoder is not always best read at its last layer, and choosing the layer on the HEAR
task itself would leak its test folds into the choice. This tool computes the HEAR scene embeddings (the
same options as ``hear_api.load_model``: ``combine``, ``scene``, ``pad_to_window``, ...) of every clip of a
labelled manifest (``path`` and ``label`` columns; e.g. ESC-50 classes outside ESC-10) at several layers in
one pass of the encoder, scores each layer by stratified k-fold logistic regression (standardised features),
prints the table, writes it as JSON (``--out``) and names the best layer (ties: the deeper layer). Unreadable
clips are skipped, counted and named. Clips are read as the linear probes read them
(:class:`eval.embeddings.ClipFeatures`, whole clips), embedded by :func:`aum.embed.scene_from_features` and scored
with the probes' classifier (:func:`eval.linear.fit_probe`), so AuM and DASS checkpoints alike.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from aum.data.datasets import collate_skip_bad, read_manifest
from aum.embed import pad_value_for, scene_from_features
from eval.embeddings import ClipFeatures
from eval.linear import evaluate, fit_probe, inner_splits
from hear_api.model import build


def layer_embeddings(model, entries: list[dict], layers: list[int]) -> tuple[dict[int, np.ndarray], list[int], list]:
    """Scene embeddings ``{layer: [n_ok, D]}`` of the manifest ``entries`` (whole clips, one encoder pass per
    window for all layers), the indices of the entries that were read, and ``(path, error)`` for those that
    could not be."""
    o = model.options
    clips = ClipFeatures(entries, model.feature_preset, target_frames=None)
    loader = torch.utils.data.DataLoader(clips, batch_size=1, collate_fn=collate_skip_bad)
    rows: dict[int, list[np.ndarray]] = {n: [] for n in layers}
    ok = []
    for item in tqdm(loader, desc="embeddings", unit="clip", dynamic_ncols=True):
        if item is None:
            continue
        outs = scene_from_features(model.encoder, item["fbank"].to(model.device), o.scene, layers, o.window,
                                   o.window_hop, o.combine, o.batch_size, pad_value_for(model.feature_preset),
                                   o.pad_to_window)
        for n, emb in zip(layers, outs):
            rows[n].append(emb[0].cpu().numpy())
        ok.append(int(item["index"][0]))
    bad = [(r["path"], r["error"]) for r in clips.bad_files.records]
    if not ok:
        raise RuntimeError(f"none of the {len(entries)} clips could be read; first error: {bad[0]}")
    return {n: np.stack(v) for n, v in rows.items()}, ok, bad


def score_layers(embeddings: dict[int, np.ndarray], labels: list[str], folds: int = 5, c: float = 1.0,
                 seed: int = 0) -> dict[int, dict]:
    """``{layer: {"mean", "std", "folds"}}``: stratified ``folds``-fold accuracy of the linear probe of
    :mod:`eval.linear` (standardised embeddings, logistic regression with inverse regularisation ``c``); the same
    splits for every layer."""
    y = np.asarray(labels)
    counts = np.unique(y, return_counts=True)[1]
    if len(counts) < 2 or counts.min() < folds:
        raise ValueError(f"need at least 2 classes with >= {folds} clips each for {folds}-fold selection, "
                         f"got class sizes {sorted(counts.tolist())}")
    splits = inner_splits(y=y, n_splits=folds, seed=seed)             # stratified: every class has >= folds
    out = {}
    for n, x in embeddings.items():
        acc = np.array([evaluate(fit_probe(x[tr], y[tr], c, False), x[te], y[te], False) for tr, te in splits])
        out[n] = {"mean": float(acc.mean()), "std": float(acc.std(ddof=1)), "folds": acc.round(4).tolist()}
    return out


def best_layer(scores: dict[int, dict]) -> int:
    """The layer with the highest mean accuracy (ties go to the deeper layer)."""
    return max(scores, key=lambda n: (round(scores[n]["mean"], 6), n))


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module docstring."""
    ap = argparse.ArgumentParser(prog="python -m hear_api.select_layer", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoint, or 'random' for the untrained default")
    ap.add_argument("manifest", help="labelled CSV / JSON-lines manifest (path, label)")
    ap.add_argument("--layers", default=None, help="comma-separated layers (default: every 4th and the last)")
    ap.add_argument("--model-options", default="{}", help="JSON object for hear_api.load_model")
    ap.add_argument("--folds", type=int, default=5)
    ap.add_argument("--c", type=float, default=1.0, help="logistic regression C")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    ap.add_argument("--out", default=None, help="write the scores here (JSON)")
    a = ap.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    options = json.loads(a.model_options)
    if not isinstance(options, dict) or "layer" in options:
        ap.error("--model-options must be a JSON object without 'layer' (that is what is selected)")
    model = build("" if a.checkpoint == "random" else a.checkpoint, **options)
    depth = model.encoder.num_layers
    layers = ([int(x) for x in a.layers.split(",")] if a.layers
              else sorted(set(range(4, depth + 1, 4)) | {depth}))
    entries = read_manifest(a.manifest)
    unlabelled = [e["path"] for e in entries if not e.get("label")]
    if unlabelled:
        ap.error(f"{a.manifest}: {len(unlabelled)} entries without a label, e.g. {unlabelled[0]}")
    embeddings, ok, bad = layer_embeddings(model, entries, layers)
    for path, err in bad:
        print(f"skipped {path}: {err}", file=sys.stderr)
    scores = score_layers(embeddings, [entries[i]["label"] for i in ok], folds=a.folds, c=a.c)
    best = best_layer(scores)
    print(f"{len(ok)} clips ({len(bad)} skipped), {a.folds}-fold logistic regression, options {options}")
    for n, s in scores.items():
        print(f"  layer {n:3d}: {s['mean']:.4f} +- {s['std']:.4f}{'   <- best' if n == best else ''}")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        Path(a.out).write_text(json.dumps({"checkpoint": a.checkpoint, "manifest": a.manifest, "options": options,
                                           "clips": len(ok), "skipped": bad, "scores": scores, "best": best},
                                          indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
