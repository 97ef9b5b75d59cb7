"""Supervised fine-tuning of an AuM or DASS encoder on a benchmark with its recipe (eval/recipes/<benchmark>.yaml).

    python -m eval.finetune BENCHMARK MANIFEST --init scratch|imagenet [PATH]|aum PATH|ssl PATH [key=value ...]
    python -m eval.finetune BENCHMARK MANIFEST --random PRESET [key=value ...]     # = --init scratch model.preset=
    python -m eval.finetune esc10 prep/esc10/manifest.jsonl --init ssl runs/pretrain/encoder.safetensors \\
        run.out=runs/ft_esc10 run.fold=all recipe.lr=5e-5

``BENCHMARK`` is a registered name or a YAML file of the same form; ``MANIFEST`` comes from ``python -m
eval.prepare`` (``classes.txt`` beside it). ``--init``: ``scratch`` (random, of ``model.preset``: an AuM preset or a
DASS one such as ``dass_tiny``), ``imagenet`` (Vision Mamba weights; without a PATH the registry's
``vim_small_imagenet``, downloaded on first use), ``aum`` (a released or trained checkpoint: official AuM, Hugging
Face, DASS ``.pth`` or HF port, or ours, e.g. AudioSet-trained) or ``ssl`` (our pretraining's
``encoder.safetensors``). A PATH may also be a registered name (``aum-models``), ``hf://org/repo`` or a URL.
The family and architecture come from the checkpoint unless ``model.*`` says otherwise,
and the position grid (AuM) and head are adapted (:func:`aum.checkpoint.adapt.load_raw_into`, the body of
``init_from_pretrained``).

The epoch is chosen on the VALIDATION split (the manifest's, or carved from the training clips; for k-fold
benchmarks from the training folds) and the TEST split is scored once, with the selected weights. Each run (each
fold) writes into ``run.out[/fold<k>]``: engine checkpoints (resume by running the same command again),
``metrics.jsonl`` (training lines and one ``"eval": true`` line per epoch), ``best.safetensors`` (the selected
encoder + head), ``test_metrics.json``, ``bad_files.jsonl``; and one :class:`eval.records.ResultRecord` (mode
``finetune``) into ``run.out/records/``. Keys: ``benchmark.*`` and ``recipe.*`` (the YAML), ``model.*``, ``run.*``.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Optional

import numpy as np
import torch
import torch.nn.functional as F
from omegaconf import OmegaConf

from aum.checkpoint import check_reference, feature_preset_of, read_checkpoint, save_checkpoint
from aum.checkpoint.adapt import load_raw_into
from aum.checkpoint.official_aum import infer_config
from aum.checkpoint.pretrained import IMAGENET
from aum.cli import EXIT_OK, CommandLine, RunStopped, UsageError, run_cli, save_run_config, stopped_message
from aum.config import load_config, to_dataclass
from aum.data.datasets import collate_skip_bad, format_bad_file_report
from aum.train.distributed import barrier, dist_env
from aum.train.config import EngineConfig
from aum.train.engine import Trainer
from aum.train.state import latest_checkpoint
from aum.audio.features import get_preset
from aum.models.registry import (check_model_options, list_models, model_config, model_from_config, model_name,
                                 preset_family, preset_fields)
from aum.train.selection import load_best
from eval.ft_data import FinetuneDataset, balanced_weights, check_entries, load_manifest, make_splits
from eval.metrics import score
from eval.prepare.custom import hash_unit
from eval.records import ResultRecord, write_record
from eval.registry import BenchmarkFile, check_benchmark, engine_settings, recipe_path

log = logging.getLogger("eval.finetune")
INITS = {"scratch": ("scratch", None), "imagenet": ("imagenet", "vim"), "aum": ("official", "auto"),
         "ssl": ("ssl", "auto")}


@dataclass
class ModelSpec:
    """Architecture overrides; unset fields come from the init checkpoint (or the ``base`` preset from scratch).
    ``preset`` may be a DASS preset (``dass_tiny``); the other fields are AuM options."""

    preset: Optional[str] = None
    mixer: Optional[str] = None
    depth: Optional[int] = None
    embed_dim: Optional[int] = None
    cls_position: Optional[str] = None


@dataclass
class RunSpec:
    """How to run: output folder, seed, fold (``all`` or 1..K), devices, checkpoints, and caps for smoke tests."""

    out: str = ""
    seed: int = 0
    fold: str = "all"
    model_name: str = ""             # the record's model name; "" = aum.models.registry.model_name (tiny-d2, dass_tiny)
    classes: str = ""
    device: str = "auto"
    precision: str = "auto"
    num_workers: int = 0
    grad_accum: int = 1
    ckpt_every: int = 0              # steps; 0 = every epoch, at most every 2000 steps
    keep_last: int = 1
    log_every: int = 50
    eval_batch_size: int = 0         # 0 = twice the training micro-batch
    max_steps: int = 0               # 0 = the recipe's epochs
    max_train_clips: int = 0         # 0 = all (a fixed hash-chosen subset otherwise)
    max_eval_clips: int = 0
    check_files: bool = True
    resume: bool = True
    deterministic: bool = False


@dataclass
class FinetuneConfig(BenchmarkFile):
    """Everything ``python -m eval.finetune`` reads: the benchmark file plus ``model`` and ``run``."""

    model: ModelSpec = field(default_factory=ModelSpec)
    run: RunSpec = field(default_factory=RunSpec)


def load_finetune_config(benchmark: str, overrides=()) -> FinetuneConfig:
    """The checked config: the benchmark's YAML, then ``key=value`` overrides (``model.*`` choices checked too)."""
    cfg = to_dataclass(load_config(FinetuneConfig, recipe_path(benchmark), overrides), FinetuneConfig)
    check_benchmark(cfg)
    check_model_options("model.", **asdict(cfg.model))
    return cfg


def build_model(cfg: FinetuneConfig, init: str, path: str | None):
    """``(model, load report or None)``: the encoder family and architecture of the checkpoint (AuM or DASS; from
    scratch, of ``model.preset``), ``model.*`` overrides, the benchmark's classes and frames; weights from
    ``path`` with the grid resized (AuM) and the head replaced. ``ValueError`` when ``model.*`` names another
    family than the checkpoint's, or an AuM option for a DASS."""
    raw = None if init == "scratch" else read_checkpoint(path, kind=INITS[init][1])
    if raw is None:
        preset = cfg.model.preset or "base"
        family, arch = preset_family(preset), model_config(preset).to_dict()
    elif raw.kind == "vim":
        family = "aum"
        arch = infer_config({k: v for k, v in raw.state_dict.items() if k != "pos_embed" and not k.startswith("head.")})
    else:
        family, arch = raw.family, dict(raw.config)
    if raw is not None and cfg.model.preset:
        if preset_family(cfg.model.preset) != family:
            raise ValueError(f"model.preset {cfg.model.preset!r} is of the {preset_family(cfg.model.preset)!r} "
                             f"family, but the init checkpoint {path} holds a {family!r} encoder")
        arch.update(preset_fields(cfg.model.preset))
    overrides = {k: v for k, v in asdict(cfg.model).items() if k != "preset" and v is not None}
    if family != "aum" and overrides:
        raise ValueError(f"model.{next(iter(overrides))} is an AuM option; the encoder to fine-tune is {family!r} "
                         + (f"(init checkpoint {path})" if path else f"(model.preset {cfg.model.preset!r})"))
    model = model_from_config(family, {**arch, **overrides, "num_classes": cfg.benchmark.num_classes,
                                       "target_frames": cfg.benchmark.target_frames})
    if raw is None:
        return model, None
    report = load_raw_into(model, raw)
    if raw.kind == "aum":    # the recipe's benchmark.preset feeds the training; say so when the init differs
        init, want = feature_preset_of(raw), get_preset(cfg.benchmark.preset)
        if (init.name, init.mean, init.std) != (want.name, want.mean, want.std):
            report.notes.append(f"init checkpoint trained with feature preset {init.name!r}; fine-tuning feeds "
                                f"{want.name!r} (benchmark.preset)")
            log.warning("%s: %s", raw.path, report.notes[-1])
    return model, report


def loss_fn(kind: str, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``bce``: BCE with logits on (soft) multi-hot targets; ``ce``: cross-entropy with (soft) targets."""
    if kind == "bce":
        return F.binary_cross_entropy_with_logits(logits.float(), target)
    return -(target * F.log_softmax(logits.float(), dim=-1)).sum(-1).mean()


def predict(model, dataset, batch_size: int, num_workers: int = 0) -> tuple[np.ndarray, np.ndarray, int]:
    """``(scores [n, C], targets [n, C], clips skipped as bad)`` of ``model`` (eval mode, no grad) on ``dataset``."""
    device = next(model.parameters()).device
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers,
                                         collate_fn=collate_skip_bad)
    scores, targets, seen = [], [], 0
    amp = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else torch.autocast("cpu",
                                                                                                   enabled=False)
    was_training = model.training
    model.eval()
    with torch.no_grad(), amp:
        for batch in loader:
            if batch is None:
                continue
            scores.append(model(batch["fbank"].to(device)).float().cpu())
            targets.append(batch["target"])
            seen += len(batch["target"])
    model.train(was_training)
    if not scores:
        raise RuntimeError("no clip of the evaluation split could be read (see bad_files.jsonl)")
    return torch.cat(scores).numpy(), torch.cat(targets).numpy(), len(dataset) - seen


def evaluate_split(model, dataset, cfg: FinetuneConfig, batch_size: int, prefix: str) -> dict:
    """``{prefix_<metric>, prefix_loss, prefix_bad}`` of ``model`` on one split."""
    s, t, bad = predict(model, dataset, batch_size, cfg.run.num_workers)
    loss = float(loss_fn(cfg.recipe.loss, torch.from_numpy(s), torch.from_numpy(t)))
    return {f"{prefix}_{cfg.benchmark.metric}": score(cfg.benchmark.metric, t, s), f"{prefix}_loss": loss,
            f"{prefix}_bad": float(bad)}


def _cap(entries: list[dict], n: int) -> list[dict]:
    if not n or len(entries) <= n:
        return entries
    keep = set(sorted(range(len(entries)), key=lambda i: hash_unit(entries[i]["path"] + str(i)))[:n])
    return [e for i, e in enumerate(entries) if i in keep]


def plan_fold(cfg: FinetuneConfig, entries, fold: int | None) -> tuple[dict, int, int]:
    """``(splits, micro-batch per rank, steps per epoch)`` of one run (one fold), the splits capped as ``run.*``
    says; ``ValueError`` when the recipe's batch cannot be split over the ranks or is larger than the training
    split."""
    b, r, run = cfg.benchmark, cfg.recipe, cfg.run
    splits = make_splits(entries, b, fold)
    splits = {"train": _cap(splits["train"], run.max_train_clips), "valid": _cap(splits["valid"], run.max_eval_clips),
              "test": _cap(splits["test"], run.max_eval_clips)}
    world = dist_env()["world_size"]
    micro, rem = divmod(r.batch_size, world * run.grad_accum)
    if rem or micro < 1:
        raise ValueError(f"recipe.batch_size {r.batch_size} must split evenly over {world} rank(s) x "
                         f"run.grad_accum {run.grad_accum}")
    if len(splits["train"]) < r.batch_size:
        raise ValueError(f"{b.name}: {len(splits['train'])} training clips are fewer than one batch ({r.batch_size})")
    return splits, micro, max(1, (len(splits["train"]) // world // micro) // run.grad_accum)


def run_one(cfg: FinetuneConfig, entries, classes, init: str, path: str | None, out_dir: Path,
            fold: int | None) -> tuple[str, ResultRecord | None]:
    """Fine-tune one run (one fold) and score it: ``("done", record)`` on rank 0, ``("done", None)`` on the other
    ranks, ``("signal", None)`` when SIGTERM/SIGUSR1/SIGINT stopped the training (rerun to resume)."""
    t0, b, r, run = time.perf_counter(), cfg.benchmark, cfg.recipe, cfg.run
    splits, micro, steps_per_epoch = plan_fold(cfg, entries, fold)
    with torch.random.fork_rng(devices=[]):                  # the fresh weights (head, or all) depend on the seed only
        torch.manual_seed(run.seed)
        model, report = build_model(cfg, init, path)
    bad_log = out_dir / "bad_files.jsonl"
    ds = {k: FinetuneDataset(v, classes, b, r if k == "train" else None, run.seed, bad_log) for k, v in splits.items()}
    if r.sampling == "balanced":
        ds["train"].weights = balanced_weights(ds["train"].label_ids, len(classes))
    eval_bs = run.eval_batch_size or 2 * micro
    settings = engine_settings(r, steps_per_epoch)
    if run.max_steps:
        settings["max_steps"] = min(settings["max_steps"], run.max_steps)
    engine = EngineConfig(
        out_dir=str(out_dir), batch_size=micro, grad_accum=run.grad_accum, seed=run.seed, device=run.device,
        precision=run.precision, num_workers=run.num_workers, log_every=run.log_every, keep_last=run.keep_last,
        ckpt_every=run.ckpt_every or min(steps_per_epoch, 2000), eval_every=steps_per_epoch,
        select_metric=f"valid_{b.metric}", select_mode="max", resume=run.resume, deterministic=run.deterministic,
        **settings)
    params = [{"params": [p for p in model.parameters() if p.requires_grad], "weight_decay": r.weight_decay}]

    def step_fn(m, batch):
        """One micro-step: the recipe's loss on (possibly mixed) targets."""
        return loss_fn(r.loss, m(batch["fbank"]), batch["target"]), {}

    trainer = Trainer(model, ds["train"], engine, step_fn, collate_fn=collate_skip_bad, param_groups=params,
                      dataset_epoch_keys=True,
                      evaluate=lambda m, step: evaluate_split(m, ds["valid"], cfg, eval_bs, "valid"))
    resumed = latest_checkpoint(out_dir) is not None and run.resume
    summary = trainer.fit()
    if summary["stopped_by"] == "signal":
        log.warning("stopped by a signal at step %d: run the same command again to resume", summary["step"])
        return "signal", None
    if not trainer.dist.is_main:
        return "done", None
    best = load_best(out_dir)
    if best is None:
        raise RuntimeError(f"{out_dir}: no validation score was finite, so no epoch could be selected")
    trainer.module.load_state_dict(best["model"])
    test = evaluate_split(trainer.module, ds["test"], cfg, eval_bs, "test")
    (out_dir / "test_metrics.json").write_text(json.dumps({"best_step": best["step"], **test,
                                                           **best["metrics"]}, indent=2) + "\n")
    ckpt = save_checkpoint(trainer.module, out_dir / "best.safetensors", metadata={
        "benchmark": b.name, "fold": fold, "step": best["step"], "classes": classes},
        feature_preset=b.preset, feature_source=f"finetune:{b.name}")
    bad = format_bad_file_report(bad_log) if bad_log.exists() else "bad audio files: none"
    rec = ResultRecord(
        benchmark=b.name, mode="finetune", init=INITS[init][0],
        model=run.model_name or model_name(trainer.module.config.to_dict(), trainer.module.family),
        metric=b.metric, value=float(test[f"test_{b.metric}"]), seed=run.seed, fold=fold, checkpoint=str(ckpt),
        config=OmegaConf.to_container(OmegaConf.structured(cfg)),
        extra={"init_kind": init, "init_path": path, "load_notes": list(report.notes) if report else [],
               "best_step": best["step"], "best_epoch": best["step"] / steps_per_epoch,
               "valid_score": best["score"], "test_loss": test["test_loss"],
               "n_train": len(splits["train"]), "n_valid": len(splits["valid"]), "n_test": len(splits["test"]),
               "test_bad_clips": int(test["test_bad"]), "steps": summary["step"], "steps_per_epoch": steps_per_epoch,
               "official_recipe": r.official, "resumed": resumed, "bad_files": bad, "out_dir": str(out_dir)},
        wall_time_s=time.perf_counter() - t0)
    path_written = write_record(rec, Path(run.out) / "records")
    log.info("%s%s: test %s = %.4f (epoch %.0f selected on validation, %s = %.4f); record %s", b.name,
             "" if fold is None else f" fold {fold}", b.metric, rec.value, rec.extra["best_epoch"],
             f"valid_{b.metric}", best["score"], path_written)
    return "done", rec


#: ``run.*`` keys that may change when a run folder with checkpoints is started again.
RESUMABLE_CHANGES = tuple(f"run.{k}" for k in (
    "out", "fold", "resume", "max_steps", "device", "num_workers", "log_every", "ckpt_every", "keep_last",
    "eval_batch_size", "check_files", "model_name"))


def finetune(cfg: FinetuneConfig, manifest, init: str = "scratch", path: str | None = None) -> list[ResultRecord]:
    """Fine-tune as configured (every fold of a k-fold benchmark with ``run.fold=all``); returns the records.

    Everything is checked (init, folds, manifest, clips, batches) before ``run.out/config.yaml`` is written; a
    folder with checkpoints of a different config is refused (:func:`aum.cli.save_run_config`). Raises
    :class:`aum.cli.RunStopped` when a signal stopped the training after a checkpoint (rerun to resume)."""
    if init not in INITS:
        raise ValueError(f"unknown init {init!r}; choose one of {sorted(INITS)}")
    path = IMAGENET if init == "imagenet" and path is None else path
    if (init == "scratch") != (path is None):
        raise ValueError("--init scratch takes no checkpoint; aum/ssl need one")
    if path is not None:
        check_reference(path)           # a file, or a registered name / URL (fetched when the model is built)
    b, run = cfg.benchmark, cfg.run
    if not b.folds and str(run.fold) != "all":
        raise ValueError(f"run.fold applies to k-fold benchmarks; {b.name} has fixed splits")
    if b.folds and str(run.fold) != "all" and not (str(run.fold).isdigit() and 1 <= int(run.fold) <= b.folds):
        raise ValueError(f"run.fold must be 'all' or 1..{b.folds}, got {run.fold!r}")
    entries, classes = load_manifest(manifest, run.classes or None)
    check_entries(entries, classes, b, run.check_files)
    if not run.out:
        run.out = f"runs/finetune/{b.name}_{init}_seed{run.seed}"
    folds = [None] if not b.folds else (list(range(1, b.folds + 1)) if run.fold == "all" else [int(run.fold)])
    for fold in folds:                        # every fold's batches can be formed: checked before writing anything
        plan_fold(cfg, entries, fold)
    out = Path(run.out)
    save_run_config(OmegaConf.structured(cfg), out, run.resume, RESUMABLE_CHANGES, "run.resume")
    records = []
    for fold in folds:
        fold_out = out if fold is None else out / f"fold{fold}"
        status, rec = run_one(cfg, entries, classes, init, path, fold_out, fold)
        barrier()
        if status == "signal":                # pre-empted: the next invocation resumes this fold
            raise RunStopped(f"fine-tuning {b.name}{'' if fold is None else f' fold {fold}'} stopped by a signal "
                             f"after a checkpoint in {fold_out}")
        if rec is not None:
            records.append(rec)
    if len(records) > 1:
        values = [r.value for r in records]
        summary = {"benchmark": b.name, "metric": b.metric, "folds": [r.fold for r in records], "values": values,
                   "mean": float(np.mean(values)), "std": float(np.std(values))}
        (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
        log.info("%s: %s over %d folds = %.4f +- %.4f", b.name, b.metric, len(values), summary["mean"],
                 summary["std"])
    return records


class _InitAction(argparse.Action):
    """``--init KIND [PATH]``: a kind of :data:`INITS`; ``scratch`` takes no checkpoint, ``imagenet`` one or
    none (the registry's :data:`~aum.checkpoint.pretrained.IMAGENET`), the others one (a path or a name)."""

    def __call__(self, parser, namespace, values, option_string=None):
        kind, paths = values[0], values[1:]
        if kind not in INITS:
            parser.error(f"--init must be one of {sorted(INITS)}, got {kind!r}")
        if kind == "scratch" and paths:
            parser.error(f"--init scratch takes no checkpoint, got {' '.join(paths)}")
        if kind == "imagenet" and not paths:
            paths = [IMAGENET]
        if kind != "scratch" and len(paths) != 1:
            parser.error(f"--init {kind} needs a checkpoint path" if not paths else
                         f"--init {kind} takes one checkpoint path, got {len(paths)}: {' '.join(paths)}")
        setattr(namespace, self.dest, (kind, paths[0] if paths else None))


def build_parser() -> CommandLine:
    """The command line of ``python -m eval.finetune`` (:class:`aum.cli.CommandLine`): ``BENCHMARK MANIFEST
    [--init KIND [PATH]]``, then ``key=value`` overrides of :class:`FinetuneConfig`; ``args.init`` is
    ``(kind, checkpoint path or None)``."""
    p = CommandLine("python -m eval.finetune", __doc__, config=FinetuneConfig, listed=("model", "run"))
    p.add_argument("benchmark", help="a registered benchmark name or a benchmark YAML file")
    p.add_argument("manifest", help="manifest.jsonl of python -m eval.prepare (classes.txt beside it)")
    src = p.add_mutually_exclusive_group()
    src.add_argument("--init", nargs="+", metavar=("KIND", "PATH"), action=_InitAction, default=("scratch", None),
                     help=f"{' | '.join(INITS)}: scratch (default) takes no PATH, imagenet an optional one (default: "
                          f"{IMAGENET}), the others a checkpoint PATH or a registered name (aum-models)")
    src.add_argument("--random", metavar="PRESET", choices=list_models("all"),
                     help="randomly initialised preset, AuM or DASS (the same as --init scratch model.preset=PRESET)")
    return p


def check_args(args) -> FinetuneConfig:
    """The config a parsed command line (:func:`build_parser`) fine-tunes with, checked
    (:func:`load_finetune_config`) without reading the manifest or building a model; ``--random PRESET`` is
    ``model.preset=PRESET`` (:class:`aum.cli.UsageError` beside another ``model.preset``)."""
    overrides = list(args.overrides)
    if args.random:
        if any(o.startswith("model.preset=") for o in overrides):
            raise UsageError(f"--random {args.random} sets model.preset; drop the model.preset= override")
        overrides.insert(0, f"model.preset={args.random}")
    return load_finetune_config(args.benchmark, overrides)


def run(argv=None) -> list[ResultRecord]:
    """Parse the command line (:func:`build_parser`; ``sys.argv[1:]`` when None), fine-tune, print one line per
    record and return the records. ``--help`` exits 0 (``SystemExit``)."""
    args = build_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    records = finetune(check_args(args), args.manifest, *args.init)
    for rec in records:
        print(f"{rec.benchmark}{'' if rec.fold is None else f' fold {rec.fold}'}: test {rec.metric} = "
              f"{rec.value:.4f} (selected epoch {rec.extra['best_epoch']:.0f} on validation)")
    return records


def main(argv=None) -> int:
    """Command-line entry point (``aum-finetune``); the exit status: 0 done, 2 a usage / config / data error (one
    message; ``--debug`` adds the traceback), 3 stopped by a signal after a checkpoint (rerun to resume)."""

    def body(words: list[str]) -> int:
        try:
            run(words)
        except RunStopped as e:
            raise RunStopped(stopped_message("aum-finetune", words, str(e))) from None
        return EXIT_OK

    return run_cli("aum-finetune", body, argv)


if __name__ == "__main__":
    sys.exit(main())
