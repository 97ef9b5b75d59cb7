"""Linear probes of a frozen AuM encoder: ``python -m eval.probe BENCHMARK MANIFEST --checkpoint PATH|--random PRESET``.

``--checkpoint`` also takes a registered name of released weights (``aum-models``; ``--init`` then defaults to the
entry's), an ``hf://org/repo`` reference or a URL: fetched on first use into the Hub / aum cache.

The encoder is frozen; clip embeddings are extracted once per (encoder, benchmark, split) and cached
(:mod:`eval.embeddings`). A logistic regression on standardised embeddings (:mod:`eval.linear`) is fitted with its
``C`` chosen on data that never includes the test rows:

- cross-validated benchmarks (ESC-50 / ESC-10: 5 folds): leave one fold out; ``C`` by leave-one-fold-out over
  the remaining training folds only; one record per test fold, plus a ``fold="mean"`` record;
- benchmarks with splits: ``C`` on the validation split (or 5 inner folds of train when there is none), refit
  on train + validation, scored once on test.

``MANIFEST`` is JSON lines / CSV (``path``, ``labels`` list or ``label``, optional ``start``/``stop`` s,
``split``, ``fold``), or a dataset folder: the ESC-10 pack (``meta.csv`` with ``filename``, ``fold`` and
``label`` or ``category``) or the ESC-50 layout (``meta/esc50.csv`` + ``audio/``; ``esc10`` keeps its ESC-10 rows),
read by :func:`eval.prepare.esc50.read_meta`.

Embedding (``--embedding``): ``mean`` (default: mean of the patch-token outputs; the self-supervised objectives
train the patch tokens, while the class token only means something after supervised training), ``cls`` (the
class-token output, what AuM's classifier reads), ``max`` (element-wise maximum over the clip's columns), or
several joined by ``+`` and concatenated (``cls+mean``, alias ``both``; ``mean+max``): the pooling vocabulary of
:mod:`aum.embed`, which builds the embeddings (:mod:`eval.embeddings`). ``--layer N`` probes the output of block N
(through the final norm) instead of the last one. AuM and DASS encoders (``--random dass_tiny``) alike.

Features: a ``--checkpoint`` is fed the feature preset it records (:func:`aum.checkpoint.feature_preset_of`;
``audioset`` with one warning for a file that records none), a ``--random`` encoder the benchmark's;
``--preset`` overrides both (with a warning when it differs from the checkpoint's).
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from aum.cli import CommandLine, UsageError, run_cli
from aum.checkpoint import feature_preset_of, is_reference
from aum.checkpoint.pretrained import lookup
from aum.data.datasets import read_manifest
from aum.audio.features import FbankConfig, get_preset
from aum.models import list_models
from aum.models.registry import model_name
from eval.embeddings import DEFAULT_EMBEDDING, Encoder, embedding_kind, get_embeddings
from eval.ft_data import check_entries, manifest_classes
from eval.linear import C_GRID, CLASSIFIERS, evaluate, fit_probe, inner_splits, select_regularisation
from eval.prepare.esc50 import read_meta
from eval.records import INITS, ResultRecord, write_record
from eval.registry import METRICS, get_benchmark

log = logging.getLogger(__name__)
TRAIN, VALID, TEST = ("train",), ("valid", "val", "validation", "dev"), ("test", "eval", "evaluation")


@dataclass(frozen=True)
class ProbeBenchmark:
    """What a probe needs to know about a benchmark: labels, metric, folds or splits, and the front end."""

    name: str
    multilabel: bool = False
    metric: str = "accuracy"
    folds: int | None = None          # number of cross-validation folds; None: train / valid / test splits
    preset: str | FbankConfig = "audioset"   # feature preset (aum.audio.features.NORM_PRESETS) for random encoders
    target_frames: int | None = 1024
    num_classes: int | None = None    # size of the benchmark's label set; None: unknown (not checked)

    @property
    def multi_label(self) -> bool:
        """Alias of ``multilabel`` (the spelling :func:`eval.ft_data.check_entries` reads)."""
        return self.multilabel


def _from_registry(name: str) -> ProbeBenchmark | None:
    """The benchmark as :func:`eval.registry.get_benchmark` describes it, or None when it is not registered."""
    try:
        spec = get_benchmark(name)
    except (KeyError, FileNotFoundError):
        return None
    return ProbeBenchmark(spec.name, bool(spec.multi_label), spec.metric, spec.folds or None, spec.preset,
                          spec.target_frames, spec.num_classes)


def benchmark_info(name: str, **overrides) -> ProbeBenchmark:
    """Properties of benchmark ``name`` from :mod:`eval.registry` (the one table of benchmark facts); ``overrides``
    (non-None fields) win. An unknown name needs every property given: it gets the defaults otherwise."""
    key = name.lower().replace("-", "_")
    info = _from_registry(key)
    if info is None:
        log.warning("benchmark %r is unknown: using single-label accuracy, audioset features, 1024 frames "
                    "unless given on the command line", name)
        info = ProbeBenchmark(key)
    return dataclasses.replace(info, **{k: v for k, v in overrides.items() if v is not None})


def probe_benchmark(args: argparse.Namespace) -> ProbeBenchmark:
    """The benchmark properties a parsed command line (:func:`build_parser`) probes with, checked without
    reading audio: ``ValueError`` for a metric or feature preset that does not exist (naming the flag and the
    valid values)."""
    info = benchmark_info(args.benchmark, multilabel=args.multilabel, metric=args.metric, preset=args.preset,
                          target_frames=args.frames, folds=args.folds)
    if info.metric not in METRICS:
        raise ValueError(f"--metric must be one of {', '.join(METRICS)}; got {info.metric!r}")
    try:
        get_preset(info.preset)
    except KeyError as e:
        raise ValueError(f"--preset: {e}") from None
    return info


def checkpoint_preset(info: ProbeBenchmark, checkpoint, explicit: str | None = None) -> FbankConfig:
    """The features a frozen ``checkpoint`` is probed with: ``explicit`` (``--preset``) when given, else the
    preset the checkpoint records (:func:`aum.checkpoint.feature_preset_of`: ``audioset`` with one warning
    for a file that records none), not the benchmark's default ``info.preset``, which only feeds random
    encoders. A logged line says when it replaces the benchmark's."""
    chosen = feature_preset_of(checkpoint, explicit=explicit)
    if explicit is None and chosen.name != get_preset(info.preset).name:
        log.info("%s: feeding %s its own feature preset %r instead of the benchmark's %r", info.name, checkpoint,
                 chosen.name, get_preset(info.preset).name)
    return chosen


def load_entries(source, benchmark: str) -> list[dict]:
    """Entries of a manifest file (:func:`aum.data.read_manifest`) or of an ESC dataset folder (the ESC-10 / ESC-50
    pack or download, :func:`eval.prepare.esc50.read_meta`; ``esc10`` keeps the ESC-10 rows of an ESC-50 table).
    Clips a folder lists but lacks stay in: they are skipped and logged when embedded."""
    if not Path(source).is_dir():
        return read_manifest(source)
    return read_meta(source, "esc10" if benchmark.lower() == "esc10" else "esc50").entries


def _labels(entry: dict) -> list[str]:
    value = entry.get("labels", entry.get("label"))
    if value is None or value == "" or value == []:
        raise ValueError(f"{entry['path']}: no label")
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def encode_labels(entries, multilabel: bool) -> tuple[np.ndarray, list[str]]:
    """Targets and class names: class indices ``[n]`` (single-label) or a 0/1 matrix ``[n, K]`` (multi-label)."""
    labels = [_labels(e) for e in entries]
    classes = sorted({c for ls in labels for c in ls})
    pos = {c: i for i, c in enumerate(classes)}
    if multilabel:
        Y = np.zeros((len(labels), len(classes)), np.int64)
        for i, ls in enumerate(labels):
            Y[i, [pos[c] for c in ls]] = 1
        return Y, classes
    if any(len(ls) != 1 for ls in labels):
        bad = next(e["path"] for e, ls in zip(entries, labels) if len(ls) != 1)
        raise ValueError(f"single-label benchmark, but {bad} has several labels; is it multi-label?")
    return np.array([pos[ls[0]] for ls in labels]), classes


def _split_of(entry: dict) -> str:
    return str(entry.get("split") or "all")


def _embed(encoder, info, entries, args) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(X, kept row indices into entries, extraction facts)``, one cached extraction per split name."""
    groups: dict[str, list[int]] = {}
    for i, e in enumerate(entries):
        groups.setdefault(_split_of(e), []).append(i)
    xs, rows, facts = [], [], {"cache_hit": {}, "clips_per_s": {}, "bad": 0, "clips": 0, "seconds": 0.0}
    for split, idx in groups.items():
        emb, hit = get_embeddings(encoder, info.name, split, [entries[i] for i in idx], args.cache, info.preset,
                                  info.target_frames, args.layer, args.batch_size, args.workers, args.device,
                                  args.refresh, bad_files_path=Path(args.out) / "bad_files.jsonl")
        xs.append(emb.features(args.embedding))
        rows.append(np.asarray(idx)[emb.index])
        facts["cache_hit"][split] = hit
        facts["clips_per_s"][split] = emb.meta["stats"]["clips_per_s"]
        facts["bad"] += len(idx) - len(emb.index)
        facts["clips"] += len(idx)
        facts["seconds"] += emb.meta["stats"]["seconds"]
        facts.update(encoder_key=emb.meta["encoder_key"], config=emb.meta["config"])
    facts["clips_per_s_total"] = facts["clips"] / max(facts["seconds"], 1e-9)
    return np.vstack(xs), np.concatenate(rows), facts


def _fold_of(entry: dict) -> int:
    """An entry's fold: its ``fold`` field, else the ``k`` of a ``fold<k>`` split name."""
    fold = entry.get("fold")
    if fold is None and str(entry.get("split", "")).startswith("fold"):
        fold = str(entry["split"])[4:]
    return int(fold)


def _folds(entries, rows, info) -> np.ndarray:
    try:
        folds = np.array([_fold_of(entries[r]) for r in rows])
    except (TypeError, ValueError):
        raise ValueError(f"{info.name} is cross-validated: every entry needs an integer 'fold' "
                         f"(or a 'fold<k>' split)") from None
    if len(np.unique(folds)) < 2:
        raise ValueError(f"{info.name}: need at least 2 folds, found {np.unique(folds).tolist()}")
    return folds


def _role(split: str) -> str:
    s = split.lower()
    return "train" if s in TRAIN else "valid" if s in VALID else "test" if s in TEST else "other"


def probe_scores(X, Y, info: ProbeBenchmark, entries, rows, grid=C_GRID, classifier="sklearn") -> list[dict]:
    """Fit and score the probe: one ``{"fold", "value", "C", "selection", "n_train", "n_test"}`` per test fold
    (cross-validated benchmarks) or a single one with ``fold=None`` (train / valid / test splits)."""
    ml = info.multilabel
    results = []
    if info.folds:
        folds = _folds(entries, rows, info)
        for k in np.unique(folds):
            train, test = np.flatnonzero(folds != k), np.flatnonzero(folds == k)
            C, curve = select_regularisation(X[train], Y[train], inner_splits(groups=folds[train]), grid, ml,
                                             classifier)
            probe = fit_probe(X[train], Y[train], C, ml, classifier)
            results.append({"fold": int(k), "value": evaluate(probe, X[test], Y[test], ml), "C": C,
                            "selection": curve, "n_train": len(train), "n_test": len(test)})
        return results
    roles = np.array([_role(_split_of(entries[r])) for r in rows])
    train, valid, test = (np.flatnonzero(roles == r) for r in ("train", "valid", "test"))
    if not len(train) or not len(test):
        raise ValueError(f"{info.name}: needs entries with split 'train' and 'test' (found "
                         f"{sorted({_split_of(entries[r]) for r in rows})})")
    fit_rows = np.concatenate([train, valid])
    splits = ([(np.arange(len(train)), len(train) + np.arange(len(valid)))] if len(valid)
              else inner_splits(y=Y[train]))
    C, curve = select_regularisation(X[fit_rows], Y[fit_rows], splits, grid, ml, classifier)
    probe = fit_probe(X[fit_rows], Y[fit_rows], C, ml, classifier)
    return [{"fold": None, "value": evaluate(probe, X[test], Y[test], ml), "C": C, "selection": curve,
             "n_train": len(fit_rows), "n_test": len(test)}]


def check_labels(info: ProbeBenchmark, entries, manifest=None) -> None:
    """The manifest check :mod:`eval.finetune` makes (:func:`eval.ft_data.check_entries`), before any audio is
    read: labels must be in the class list beside ``manifest`` (``classes.txt``), or, without one, number at most
    the benchmark's ``num_classes``. Missing audio files are not an error here: they are skipped and logged."""
    classes = manifest_classes(manifest) if manifest is not None else None
    check_entries(entries, classes, info, check_files=False)


def run_probe(info: ProbeBenchmark, entries, encoder: Encoder, args) -> list[ResultRecord]:
    """Check the labels (:func:`check_labels` against ``args.manifest``), embed (cached), probe, write the records
    to ``args.out`` and return them (per fold, then the mean)."""
    t0 = time.perf_counter()
    check_labels(info, entries, getattr(args, "manifest", None))
    X, rows, facts = _embed(encoder, info, entries, args)
    Y, classes = encode_labels([entries[r] for r in rows], info.multilabel)
    results = probe_scores(X, Y, info, entries, rows, args.c_grid, args.classifier)
    name = args.model_name or model_name(facts["config"])
    config = {"embedding": args.embedding, "layer": args.layer, "preset": get_preset(info.preset).name,
              "target_frames": info.target_frames, "classifier": args.classifier, "c_grid": list(args.c_grid),
              "multilabel": info.multilabel, "encoder": encoder.source, "encoder_config": facts["config"]}
    common = dict(benchmark=info.name, mode="probe", init=args.init, model=name, metric=info.metric,
                  seed=args.seed, checkpoint=args.checkpoint, config=config)
    wall = time.perf_counter() - t0
    records = [ResultRecord(**common, value=r["value"], fold=r["fold"], wall_time_s=wall, extra={
        "C": r["C"], "selection": {str(c): v for c, v in r["selection"].items()}, "n_train": r["n_train"],
        "n_test": r["n_test"], "n_classes": len(classes), "encoder_key": facts["encoder_key"],
        "cache_hit": facts["cache_hit"], "clips_per_s": facts["clips_per_s"],
        "clips_per_s_total": facts["clips_per_s_total"], "bad_files": facts["bad"]})
        for r in results]
    if info.folds:
        values = [r["value"] for r in results]
        records.append(ResultRecord(**common, value=statistics.fmean(values), fold="mean", wall_time_s=wall, extra={
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values),
            "folds": {str(r["fold"]): r["value"] for r in results}, "encoder_key": facts["encoder_key"]}))
    for rec in records:
        write_record(rec, args.out)
    return records


def build_parser() -> CommandLine:
    """The command line of ``python -m eval.probe`` (:class:`aum.cli.CommandLine`; flags only, no config)."""
    p = CommandLine("python -m eval.probe", __doc__.split("\n\n")[0])
    p.add_argument("benchmark", help="benchmark name, e.g. esc10, esc50, speechcommands, audioset20k")
    p.add_argument("manifest", help="JSON-lines/CSV manifest, or a dataset folder (ESC-10 pack, ESC-50 layout)")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--checkpoint", help="encoder checkpoint (ours, official .pth, HF folder, Vim), or a registered "
                                          "name (aum-models), hf://org/repo or URL")
    src.add_argument("--random", metavar="PRESET", choices=list_models("all"),
                     help="randomly initialised preset (AuM or DASS)")
    p.add_argument("--init", choices=INITS, help="how the encoder started (required with a --checkpoint file; a "
                                                 "registered name's own by default; scratch with --random)")
    p.add_argument("--embedding", type=embedding_kind, default=DEFAULT_EMBEDDING,
                   help="clip pooling: mean, max, cls or several joined by + (cls+mean, alias both); "
                        "default: %(default)s")
    p.add_argument("--layer", type=int, help="probe the output of this block (1..depth); default: the last")
    p.add_argument("--out", default="results/probe", help="folder for the result records (default: %(default)s)")
    p.add_argument("--cache", help="embedding cache folder (default: $AUM_CACHE/embeddings or ~/.cache/aum/embeddings)")
    p.add_argument("--refresh", action="store_true", help="extract again even when cached")
    p.add_argument("--seed", type=int, default=0, help="seed of the random encoder, recorded (default: 0)")
    p.add_argument("--depth", type=int, help="override the depth of a --random preset (24 is the real model)")
    p.add_argument("--model-name", help="model name in the records (default: from the encoder config)")
    p.add_argument("--classifier", choices=CLASSIFIERS, default="sklearn",
                   help="sklearn logistic regression, or torch linear + BCE (multi-label only)")
    p.add_argument("--c-grid", type=lambda s: tuple(float(v) for v in s.split(",")), default=C_GRID,
                   help="comma-separated C values to search (default: 1e-4 ... 1e2 by decades)")
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--workers", type=int, default=0, help="DataLoader workers for audio decoding")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, help="torch CPU threads (torch.set_num_threads); on a shared machine 1 "
                                               "can be several times faster than the default")
    g = p.add_argument_group("benchmark properties (default: from eval.registry)")
    g.add_argument("--multilabel", action=argparse.BooleanOptionalAction, default=None)
    g.add_argument("--metric", help="accuracy or mAP")
    g.add_argument("--folds", type=int, help="number of cross-validation folds (0: splits)")
    g.add_argument("--preset", help="feature normalisation preset (default: the checkpoint's own, else the "
                                    "benchmark's)")
    g.add_argument("--frames", type=int, help="target frames per clip")
    return p


def check_args(args: argparse.Namespace) -> ProbeBenchmark:
    """The benchmark properties a parsed command line (:func:`build_parser`) probes with
    (:func:`probe_benchmark`), checked without building the encoder or reading audio; :class:`aum.cli.UsageError`
    for a ``--checkpoint`` file without its ``--init`` (a registered name brings its own)."""
    if args.checkpoint and not args.init:
        entry = lookup(args.checkpoint) if is_reference(args.checkpoint) else None
        if entry is None:
            raise UsageError("--init is required with --checkpoint (scratch, imagenet, ssl or official)")
        args.init = entry.init
    return probe_benchmark(args)


def main(argv=None) -> int:
    """Entry point of ``python -m eval.probe`` / ``aum-probe``; prints each fold and the mean +- std. Returns the
    exit status: 0 done, 2 a usage or input error (benchmark, manifest, checkpoint: one message, the traceback
    with ``--debug``)."""
    return run_cli("aum-probe", _main, argv)


def _main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = build_parser().parse(argv)
    info = check_args(args)
    args.init = args.init or "scratch"
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.checkpoint:
        info = dataclasses.replace(info, preset=checkpoint_preset(info, args.checkpoint, args.preset))
    entries = load_entries(args.manifest, info.name)
    overrides = {"depth": args.depth} if args.depth else {}
    encoder = (Encoder.from_checkpoint(args.checkpoint, **overrides) if args.checkpoint
               else Encoder.random(args.random, args.seed, **overrides))
    print(f"{info.name}: {len(entries)} clips, encoder {encoder.source} (key {encoder.key}), "
          f"embedding {args.embedding}, layer {args.layer or 'last'}")
    records = run_probe(info, entries, encoder, args)
    per_fold = [r for r in records if r.fold != "mean"]
    for r in per_fold:
        where = f"fold {r.fold}" if r.fold is not None else "test"
        print(f"  {where}: {r.metric} {r.value:.4f} (C={r.extra['C']:g}, {r.extra['n_train']} train / "
              f"{r.extra['n_test']} test)")
    values = [r.value for r in per_fold]
    std = statistics.stdev(values) if len(values) > 1 else 0.0
    print(f"{info.name} probe [{records[0].model}, {args.init}, {args.embedding}]: {info.metric} "
          f"{statistics.fmean(values):.4f} +- {std:.4f} over {len(values)} fold(s); "
          f"extraction {records[0].extra['clips_per_s_total']:.2f} clips/s"
          f"{' (cached)' if all(records[0].extra['cache_hit'].values()) else ''}; "
          f"records in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
