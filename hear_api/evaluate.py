"""Evaluate a checkpoint on HEAR tasks with the real hear-eval-kit, and write result records.

::

    python -m hear_api.setup_env                                    # once: the separate HEAR environment
    python -m hear_api.tasks esc10 ../shared/data/esc10 tasks       # a tasks folder (see hear_api.tasks)
    python -m hear_api.evaluate encoder.safetensors --tasks tasks --out results/hear [--grid default]

Stages, each in the HEAR environment (:mod:`hear_api.setup_env`; ``--venv``) with the TensorFlow stand-in on
``PYTHONPATH``, each timed and logged to ``OUT/logs/``:

1. ``validate``: the PyPI ``hear-validator`` and our stricter rules (:mod:`hear_api.validate`);
2. ``embeddings``: ``heareval.embeddings.runner`` per task, into ``OUT/embeddings/``;
3. ``predictions``: ``heareval.predictions.runner`` per task (``--grid``, ``--grid-points``) in a scratch
   folder (its Lightning logs and checkpoints are large; deleted afterwards unless ``--keep-scratch``) with
   ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1`` for that command only;
4. one :class:`eval.records.ResultRecord` per task in ``OUT/records/`` (``mode="hear"``; ``fold="mean"``
   with the std over folds in ``extra`` for k-fold tasks, ``fold=None`` for train/valid/test tasks; the
   wall time of every stage in ``extra["stage_seconds"]``), for k-fold tasks also one record per fold
   (``fold`` 1..k for heareval's ``fold00``..; what ``eval.results`` tabulates), and ``OUT/summary.json``.

``CHECKPOINT`` is any file :func:`hear_api.load_model` reads, or ``random`` for the untrained default
(``--model-options '{"depth": 2}'`` etc.). Scores come from heareval's ``test.predicted-scores.json``: the
primary metric (the first of the task's ``evaluation``), ``aggregated_scores.test_score_mean`` / ``_std`` for
k-fold tasks, ``test.test_score`` otherwise.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from hear_api.setup_env import default_venv, hear_env, is_ready, setup, venv_python

GRIDS = ("default", "fast", "faster")
MODULE = "hear_api"


class StageError(RuntimeError):
    """A hear-eval-kit stage failed; the message names the stage, the command and the end of its log."""


def _tail(path: Path, n: int = 40) -> str:
    try:
        lines = path.read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return "\n".join(line[:300] for line in lines[-n:])


def run_stage(name: str, cmd: list[str], log: Path, env: dict, cwd: str | os.PathLike | None = None,
              timeout: float | None = None) -> float:
    """Run one command with its output in ``log``; return its wall time in seconds. Raises
    :class:`StageError` (with the log's tail) when it fails or times out."""
    log.parent.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[{name}] {' '.join(cmd)}", flush=True)
    with open(log, "w") as fh:
        fh.write(f"$ {' '.join(cmd)}\n(cwd {cwd or os.getcwd()})\n\n")
        fh.flush()
        try:
            proc = subprocess.run(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=cwd, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise StageError(f"{name}: timed out after {timeout} s; log {log}:\n{_tail(log)}") from None
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        raise StageError(f"{name}: exit code {proc.returncode} after {wall:.0f} s; log {log}:\n{_tail(log)}")
    print(f"[{name}] done in {wall:.1f} s", flush=True)
    return wall


def find_tasks(tasks_dir: str | os.PathLike, names: list[str] | None = None) -> list[Path]:
    """Task folders (those holding ``task_metadata.json``) in ``tasks_dir``, sorted; only ``names`` if given."""
    root = Path(tasks_dir)
    if not root.is_dir():
        raise FileNotFoundError(f"tasks folder not found: {root}")
    tasks = sorted(p for p in root.iterdir() if (p / "task_metadata.json").is_file())
    if names:
        missing = sorted(set(names) - {p.name for p in tasks})
        if missing:
            raise FileNotFoundError(f"no task(s) {missing} in {root} (found {[p.name for p in tasks]})")
        tasks = [p for p in tasks if p.name in names]
    if not tasks:
        raise FileNotFoundError(f"no HEAR task folders (with task_metadata.json) in {root}")
    return tasks


def _finite(v):
    return v if isinstance(v, (int, float)) and math.isfinite(v) else None


def read_scores(task_emb_dir: str | os.PathLike) -> dict:
    """Headline scores of one task from heareval's ``test.predicted-scores.json`` (which may hold
    ``Infinity``/``NaN``): ``{"metric", "value", "std", "folds", "secondary", "k_fold"}``."""
    d = Path(task_emb_dir)
    meta = json.loads((d / "task_metadata.json").read_text())
    scores = json.loads((d / "test.predicted-scores.json").read_text())
    metric = meta["evaluation"][0]
    if "aggregated_scores" in scores:
        agg = scores["aggregated_scores"]
        folds = {k: v["test_score"] for k, v in scores.items() if isinstance(v, dict) and "test_score" in v}
        secondary = {k[len("test_"):-len("_mean")]: _finite(v) for k, v in agg.items()
                     if k.startswith("test_") and k.endswith("_mean") and k not in ("test_score_mean", "test_loss_mean")}
        return {"metric": metric, "value": agg["test_score_mean"], "std": agg.get("test_score_std"),
                "folds": folds, "secondary": secondary, "k_fold": True}
    test = scores["test"]
    secondary = {k[len("test_"):]: _finite(v) for k, v in test.items()
                 if k.startswith("test_") and k not in ("test_score", "test_loss")}
    return {"metric": metric, "value": test["test_score"], "std": None, "folds": {}, "secondary": secondary,
            "k_fold": False}


def _model_facts(checkpoint: str, options: dict) -> dict:
    """Encoder config, init kind and name, read in this process (no embeddings computed)."""
    import torch

    from hear_api.model import build
    with torch.device("cpu"):
        model = build("" if checkpoint == "random" else checkpoint, **options)
    cfg = model.encoder.config.to_dict()
    init = "scratch"
    if model.trained:
        from aum.checkpoint import read_checkpoint
        raw = read_checkpoint(checkpoint)
        init = {"official": "official", "hf": "official", "dass_original": "official", "dass_hf": "official",
                "vim": "imagenet"}.get(raw.kind, "scratch")
        if raw.kind == "aum" and raw.metadata.get("objective"):
            init = "ssl"
    from aum.models.registry import model_name
    name = model_name(cfg, family=model.encoder.family)
    return {"describe": model.describe(), "init": init, "model": name, "trained": model.trained}


def evaluate(checkpoint: str, tasks_dir, out, grid: str = "default", grid_points: int | None = None,
             model_options: dict | None = None, venv=None, task_names: list[str] | None = None,
             init: str | None = None, seed: int = 0, keep_scratch: bool = False, skip_validate: bool = False,
             threads: int | None = None, timeout: float | None = None, build_env: bool = False,
             model_name: str | None = None) -> list[dict]:
    """Run validator + embeddings + predictions for ``checkpoint`` over the tasks in ``tasks_dir`` and
    write one result record per task to ``out/records`` (see the module docstring). Returns the records
    as dicts. ``model_name`` names the model in the records (default: preset and depth, e.g. ``tiny``).
    ``threads`` sets ``OMP_NUM_THREADS`` for every stage (1 is much faster on a busy CPU)."""
    from eval.records import ResultRecord, code_version, write_record

    if grid not in GRIDS:
        raise ValueError(f"grid must be one of {GRIDS}, got {grid!r}")
    venv = Path(venv) if venv else default_venv()
    if not is_ready(venv):
        if not build_env:
            raise RuntimeError(f"the HEAR environment {venv} is not ready: run `python -m hear_api.setup_env "
                               f"--venv {venv}` (or pass --setup)")
        setup(venv)
    out = Path(out).resolve()
    tasks = find_tasks(tasks_dir, task_names)
    options = dict(model_options or {})
    ckpt = "" if checkpoint in ("", "random", "default") else str(Path(checkpoint).resolve())
    facts = _model_facts(ckpt or "random", options)
    py = str(venv_python(venv))
    base = dict(os.environ)
    if threads:
        base.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    base["AUM_HEAR_OPTIONS"] = json.dumps(options)          # the validator cannot pass options itself
    base.pop("AUM_HEAR_CHECKPOINT", None)
    env = hear_env(base=base)
    logs = out / "logs"
    device = "cuda" if _cuda_available(py, env) else "cpu"
    stage_common = {}
    if not skip_validate:
        stage_common["validate"] = run_stage(
            "validate", [str(venv / "bin" / "hear-validator"), MODULE, *(["-m", ckpt] if ckpt else []), "-d", device],
            logs / "validate-pypi.log", env, timeout=timeout)
        stage_common["validate_strict"] = run_stage(
            "validate (strict)", [py, "-m", "hear_api.validate", *([ckpt] if ckpt else []), "--device", device],
            logs / "validate-strict.log", env, timeout=timeout)
    emb_root = out / "embeddings"
    records = []
    for task in tasks:
        stages = dict(stage_common)
        stale = [p / task.name for p in emb_root.glob(f"{MODULE}*")]
        for p in stale:                                      # heareval skips tasks it thinks are done
            shutil.rmtree(p, ignore_errors=True)
        stages["embeddings"] = run_stage(
            f"embeddings {task.name}",
            [py, "-m", "heareval.embeddings.runner", MODULE, *(["--model", ckpt] if ckpt else []),
             "--tasks-dir", str(task.parent.resolve()), "--task", task.name, "--embeddings-dir", str(emb_root),
             "--model-options", json.dumps(options)], logs / f"embeddings-{task.name}.log", env, timeout=timeout)
        task_emb = [p / task.name for p in emb_root.glob(f"{MODULE}*") if (p / task.name).is_dir()]
        if len(task_emb) != 1:
            raise StageError(f"embeddings {task.name}: expected one output folder, found {task_emb}")
        task_emb = task_emb[0]
        scratch = Path(tempfile.mkdtemp(prefix=f"hear-pred-{task.name}-", dir=out))
        try:
            link = scratch / "emb"
            link.symlink_to(task_emb.parent, target_is_directory=True)
            cmd = [py, "-m", "heareval.predictions.runner", f"emb/{task.name}", "--grid", grid]
            if grid_points:
                cmd += ["--grid-points", str(grid_points)]
            stages["predictions"] = run_stage(f"predictions {task.name}", cmd, logs / f"predictions-{task.name}.log",
                                              hear_env(predictions=True, base=base), cwd=scratch, timeout=timeout)
        finally:
            if not keep_scratch:
                shutil.rmtree(scratch, ignore_errors=True)
        scores = read_scores(task_emb)
        meta = json.loads((task / "task_metadata.json").read_text())
        profile = task_emb / "profile.embeddings.json"
        extra = {"std": scores["std"], "folds": scores["folds"], "secondary": scores["secondary"],
                 "stage_seconds": {k: round(v, 2) for k, v in stages.items()},
                 "embedding_seconds_heareval": json.loads(profile.read_text()).get("time_elapsed")
                 if profile.is_file() else None,
                 "device": device, "task_dir": str(task.resolve()), "embeddings_dir": str(task_emb),
                 "n_clips": meta.get("clip_count"), "trained": facts["trained"]}
        config = {"grid": grid, "grid_points": grid_points or 8, "model_options": options,
                  "embedding": facts["describe"], "heareval": "2021.1.3", "hearvalidator": "2021.0.2",
                  "task": {k: meta.get(k) for k in ("task_name", "embedding_type", "prediction_type", "split_mode",
                                                      "splits", "sample_duration", "evaluation")}}
        rec = ResultRecord(benchmark=f"hear-{meta['task_name']}", mode="hear", init=init or facts["init"],
                           model=model_name or facts["model"], metric=scores["metric"],
                           value=float(scores["value"]), seed=seed,
                           fold="mean" if scores["k_fold"] else None, checkpoint=ckpt or facts["describe"]["source"],
                           config=config, extra=extra, code_version=code_version(),
                           wall_time_s=round(sum(stages.values()), 2))
        path = write_record(rec, out / "records")
        for fold_rec in fold_records(rec):
            write_record(fold_rec, out / "records")
        records.append({**rec.__dict__, "record_path": str(path)})
        std = f" +- {scores['std']:.4f}" if scores["std"] is not None else ""
        print(f"{task.name}: {scores['metric']} = {scores['value']:.4f}{std}  (stages: "
              + ", ".join(f"{k} {v:.0f} s" for k, v in stages.items()) + f"); record {path}", flush=True)
    (out / "summary.json").write_text(json.dumps(records, indent=2, default=str))
    return records


def fold_records(mean_record) -> list:
    """The per-fold records of a k-fold task's ``fold="mean"`` record (``extra["folds"]``: heareval's
    ``foldNN`` -> score), as ``fold=NN+1``; an empty list for other records."""
    folds = mean_record.extra.get("folds") or {}
    if mean_record.fold != "mean" or not folds:
        return []
    return [dataclasses.replace(mean_record, fold=int(name.removeprefix("fold")) + 1, value=float(value),
                                extra={"heareval_fold": name, "mean_record": mean_record.filename()})
            for name, value in sorted(folds.items())]


def _cuda_available(py: str, env: dict) -> bool:
    try:
        res = subprocess.run([py, "-c", "import torch; print(torch.cuda.is_available())"], capture_output=True,
                             text=True, env=env, timeout=300)
    except (OSError, subprocess.SubprocessError):
        return False
    return res.stdout.strip() == "True"


def main(argv: list[str] | None = None) -> int:
    """Command line; see the module docstring and ``--help``."""
    ap = argparse.ArgumentParser(prog="python -m hear_api.evaluate", description=__doc__.split("\n\n")[0])
    ap.add_argument("checkpoint", help="checkpoint file/folder, or 'random' for the untrained default")
    ap.add_argument("--tasks", required=True, help="folder of HEAR task folders (python -m hear_api.tasks ...)")
    ap.add_argument("--out", required=True, help="output folder (records/, embeddings/, logs/, summary.json)")
    ap.add_argument("--grid", default="default", choices=GRIDS, help="heareval's probe grid (default: default)")
    ap.add_argument("--grid-points", type=int, default=None, help="grid points to try (heareval default 8)")
    ap.add_argument("--model-options", default="{}", help="JSON object for load_model (layer, combine, ...)")
    ap.add_argument("--task", action="append", default=None, help="only this task (repeatable)")
    ap.add_argument("--venv", default=None, help="HEAR environment (default $AUM_HEAR_VENV or .venv-hear)")
    ap.add_argument("--setup", action="store_true", help="build the HEAR environment first if needed")
    ap.add_argument("--init", default=None, help="record's init (scratch/imagenet/ssl/official; default: guessed)")
    ap.add_argument("--model-name", default=None, help="model name in the records (default: preset and depth)")
    ap.add_argument("--seed", type=int, default=0, help="seed recorded (and of the random default)")
    ap.add_argument("--threads", type=int, default=None, help="OMP_NUM_THREADS for every stage")
    ap.add_argument("--timeout", type=float, default=None, help="seconds allowed per stage")
    ap.add_argument("--skip-validate", action="store_true")
    ap.add_argument("--keep-scratch", action="store_true", help="keep heareval's Lightning logs/checkpoints")
    a = ap.parse_args(argv)
    options = json.loads(a.model_options)
    if not isinstance(options, dict):
        ap.error("--model-options must be a JSON object")
    if a.checkpoint in ("random", "default"):
        options.setdefault("seed", a.seed)
    try:
        evaluate(a.checkpoint, a.tasks, a.out, grid=a.grid, grid_points=a.grid_points, model_options=options,
                 venv=a.venv, task_names=a.task, init=a.init, seed=a.seed, keep_scratch=a.keep_scratch,
                 skip_validate=a.skip_validate, threads=a.threads, timeout=a.timeout, build_env=a.setup,
                 model_name=a.model_name)
    except (StageError, RuntimeError, FileNotFoundError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
