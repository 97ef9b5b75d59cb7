"""Pick the encoder layer to give hear-eval-kit, on labelled audio that is NOT the evaluation task.

``python -m hear_api.select_layer CHECKPOINT MANIFEST [--layers 4,8,...] [--model-options JSON]``

A lightly pretrained encoder is not always best read at its last layer, and choosing the layer on the HEAR
task itself would leak its test folds into the choice. This tool computes the HEAR scene embeddings (the
same options as ``hear_api.load_model``: ``combine``, ``scene``, ``pad_to_window``, ...) of every clip of a
labelled manifest (``path`` and ``label`` columns; e.g. ESC-50 classes outside ESC-10) at several layers in
one pass of the encoder, scores each layer by stratified k-fold logistic regression (standardised features),
prints the table, writes it as JSON (``--out``) and names the best layer (ties: the deeper layer). Unreadable
clips are skipped, counted and named.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from aum.audio.io import load_audio
from aum.data.datasets import read_manifest
from aum.embed import scene_embedding
from hear_api.model import SAMPLE_RATE, build


def layer_embeddings(model, paths: list[str], layers: list[int]) -> tuple[dict[int, np.ndarray], list[int], list]:
    """Scene embeddings ``{layer: [n_ok, D]}`` of the clips at ``paths`` (one encoder pass per clip), the
    indices of the clips that were read, and ``(path, error)`` for those that could not be."""
    o = model.options
    rows: dict[int, list[np.ndarray]] = {n: [] for n in layers}
    ok, bad = [], []
    for i, path in enumerate(tqdm(paths, desc="embeddings", unit="clip", dynamic_ncols=True)):
        try:
            wave = load_audio(path, SAMPLE_RATE)
        except (OSError, ValueError, RuntimeError) as err:
            bad.append((path, f"{type(err).__name__}: {err}"))
            continue
        outs = scene_embedding(model.encoder, wave.to(model.device), SAMPLE_RATE, preset=model.feature_preset,
                               pooling=o.scene, window_frames=o.window, hop_frames=o.window_hop, layer=layers,
                               combine=o.combine, batch_size=o.batch_size, pad_to_window=o.pad_to_window)
        for n, emb in zip(layers, outs):
            rows[n].append(emb.cpu().numpy())
        ok.append(i)
    if not ok:
        raise RuntimeError(f"none of the {len(paths)} clips could be read; first error: {bad[0]}")
    return {n: np.stack(v) for n, v in rows.items()}, ok, bad


def score_layers(embeddings: dict[int, np.ndarray], labels: list[str], folds: int = 5, c: float = 1.0,
                 seed: int = 0) -> dict[int, dict]:
    """``{layer: {"mean", "std", "folds"}}``: stratified ``folds``-fold accuracy of a logistic regression
    (inverse regularisation ``c``) on standardised embeddings; the same splits for every layer."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold, cross_val_score
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    y = np.asarray(labels)
    counts = np.unique(y, return_counts=True)[1]
    if len(counts) < 2 or counts.min() < folds:
        raise ValueError(f"need at least 2 classes with >= {folds} clips each for {folds}-fold selection, "
                         f"got class sizes {sorted(counts.tolist())}")
    splits = list(StratifiedKFold(folds, shuffle=True, random_state=seed).split(y, y))
    out = {}
    for n, x in embeddings.items():
        clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=3000))
        acc = cross_val_score(clf, x, y, cv=splits)
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
    depth = model.encoder.config.depth
    layers = ([int(x) for x in a.layers.split(",")] if a.layers
              else sorted(set(range(4, depth + 1, 4)) | {depth}))
    entries = read_manifest(a.manifest)
    unlabelled = [e["path"] for e in entries if not e.get("label")]
    if unlabelled:
        ap.error(f"{a.manifest}: {len(unlabelled)} entries without a label, e.g. {unlabelled[0]}")
    embeddings, ok, bad = layer_embeddings(model, [e["path"] for e in entries], layers)
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
