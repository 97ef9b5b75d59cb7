"""Sweep files: stages and grids in YAML, expanded into jobs with their dependencies.

A sweep file (OmegaConf YAML; ``key=value`` overrides on the command line) holds::

    name: tiny                      # default: the file name
    out_dir: runs/sweeps/tiny       # the sweep folder (default runs/sweeps/<name>)
    executor: auto                  # auto (SLURM when sbatch exists) | slurm | local
    local_parallel: 1               # local executor: jobs at a time
    resources:                      # per job kind (pretrain, finetune, probe, tables) or `default`
      default: {partition: gpu, time_min: 240, account: myproj}
      pretrain: {gpus_per_node: 4, nodes: 2}
    benchmarks:                     # what eval stages may name
      esc50: {manifest: prep/esc50/manifest.jsonl, recipe: esc50}     # recipe: registered name or YAML
      synth_a: {generate: {clips: 28, duration: 1.0, seed: 0, frames: 128}, finetune_args: {recipe.epochs: 2}}
    inits:                          # initialisations besides the encoders stages produce
      scratch: {preset: tiny, depth: 2}
      imagenet: {checkpoint: weights/vim_t_midclstok.pth, model: tiny}   # no checkpoint: vim_small_imagenet
      dass: {init: official, checkpoint: dass_small_sslam}     # a registered name (aum-models), hf://, or a URL
    stages:
      pretrain:
        kind: pretrain
        config: my_pretrain.yaml    # optional base config of `python -m pretrain`
        args: {engine.max_steps: 20000}
        grid: {model.preset: [tiny, small], objective.name: [ssast, mae]}
      probe:
        kind: probe                 # or finetune
        encoders: [pretrain, scratch, imagenet, dass_medium_sslam]   # a registered name needs no inits entry
        benchmarks: [esc50, synth_a]
        seeds: [0, 1, 2]
        args: {embedding: mean}     # plain keys: --flags; dotted keys (run.*, recipe.*): key=value overrides
        grid: {layer: [6, 12]}      # optional: more axes
        after: []                   # optional: stages to wait for without using their output
        resources: {time_min: 60}
    tables: true                    # build the results tables when everything else has finished

Later stages name earlier ones in ``encoders`` (one encoder per job of that stage) or ``after``; the jobs
depend on the jobs they need. Relative paths are relative to the current directory. A checkpoint may be a
registered name of released weights, ``hf://org/repo[/file]`` or a URL: checked by its form here, never downloaded
(the job fetches it). Errors (:class:`SweepError`) for an unknown key, stage, benchmark or init, a cycle, or a
checkpoint/manifest/config path that does not exist.
"""
from __future__ import annotations

import difflib
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from aum.checkpoint.hub import check_reference, is_reference
from aum.checkpoint.pretrained import IMAGENET, list_pretrained, lookup
from aum.config import ConfigError
from aum.models.registry import check_model_options
from eval.records import INITS
from eval.registry import list_benchmarks
from slurm.data import GENERATE_KEYS, check_generate
from slurm.kinds import KINDS, eval_argv, pretrain_argv, tables_argv
from slurm.resources import Resources, ResourceError, resolve_resources

__all__ = ["SweepError", "JobSpec", "Sweep", "load_sweep", "stage_order"]

TOP_KEYS = ("name", "out_dir", "executor", "local_parallel", "resources", "benchmarks", "inits", "stages", "tables")
STAGE_KEYS = ("kind", "config", "args", "grid", "encoders", "benchmarks", "seeds", "after", "resources")
BENCH_KEYS = ("manifest", "generate", "recipe", "probe_args", "finetune_args")
INIT_KEYS = ("init", "checkpoint", "preset", "depth", "model")
EXECUTORS = ("auto", "slurm", "local")


class SweepError(ValueError):
    """A sweep file that cannot run: reported before anything is submitted."""


@dataclass
class JobSpec:
    """One job of a sweep: what runs (``kind``, ``argv``), where (``out_dir``, ``records_dir``), after which
    jobs (``depends_on``, names), on what (``resources``); ``encoder`` is the file a pretraining job produces;
    ``info`` holds the grid coordinates for display."""

    name: str
    stage: str
    kind: str
    argv: list
    out_dir: str
    resources: Resources
    depends_on: list = field(default_factory=list)
    records_dir: str | None = None
    encoder: str | None = None
    info: dict = field(default_factory=dict)

    @property
    def ddp(self) -> bool:
        """Whether the job trains with DDP (one task per GPU)."""
        return KINDS[self.kind].ddp


@dataclass
class Sweep:
    """A loaded, checked sweep: its jobs in dependency order plus what the launcher needs."""

    name: str
    source: str
    out_dir: str
    executor: str
    local_parallel: int
    benchmarks: dict
    jobs: list
    config: dict

    def job(self, name: str) -> JobSpec:
        """The job called ``name``."""
        return next(j for j in self.jobs if j.name == name)


def _fail_unknown(what: str, key, valid) -> None:
    close = difflib.get_close_matches(str(key), [str(v) for v in valid], n=1, cutoff=0.5)
    hint = f"; did you mean {close[0]!r}?" if close else ""
    raise SweepError(f"unknown {what} {key!r}{hint} (valid: {', '.join(map(str, valid)) or 'none'})")


def _check_keys(mapping, valid, what: str) -> dict:
    if mapping is None:
        return {}
    if not isinstance(mapping, dict):
        raise SweepError(f"{what} must be a mapping, got {type(mapping).__name__}")
    for key in mapping:
        if key not in valid:
            _fail_unknown(f"key in {what}", key, valid)
    return mapping


def _flatten(mapping: dict | None, prefix: str = "") -> dict:
    """``{"engine": {"lr": 1}, "a.b": 2}`` -> ``{"engine.lr": 1, "a.b": 2}``."""
    out = {}
    for key, value in (mapping or {}).items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _as_list(value, what: str) -> list:
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise SweepError(f"{what} is empty")
    return values


def _refs(value) -> list[str]:
    """A stage's list of names (``None`` -> ``[]``, a single name -> ``[name]``)."""
    return [str(v) for v in (value if isinstance(value, (list, tuple)) else [value] if value else [])]


def _grid_points(grid: dict | None, what: str) -> list[dict]:
    flat = _flatten(grid)
    axes = [(k, _as_list(v, f"{what}.grid.{k}")) for k, v in flat.items()]
    return [dict(zip([k for k, _ in axes], combo)) for combo in itertools.product(*[v for _, v in axes])]


def _label(point: dict) -> str:
    """``{"model.preset": "tiny", "engine.lr": 0.001}`` -> ``tiny-lr0.001`` (safe for a folder name)."""
    parts = [str(v) if isinstance(v, str) else f"{k.rsplit('.', 1)[-1]}{v}" for k, v in point.items()]
    return re.sub(r"[^A-Za-z0-9._+-]", "_", "-".join(parts))


def _path(value, what: str, must_exist: bool = True) -> str:
    p = Path(str(value)).expanduser().resolve()
    if must_exist and not p.exists():
        raise SweepError(f"{what}: {value} does not exist")
    return str(p)


def stage_order(stages: dict) -> list[str]:
    """Stage names in dependency order (a stage after every stage it names in ``encoders`` or ``after``).
    Raises :class:`SweepError` for a cycle, naming it (``a -> b -> a``)."""
    deps = {name: [d for d in _refs(s.get("encoders")) + _refs(s.get("after")) if d in stages]
            for name, s in stages.items()}
    order, state = [], {}

    def visit(name: str, path: list[str]) -> None:
        if state.get(name) == "done":
            return
        if state.get(name) == "active":
            cycle = path[path.index(name):] + [name]
            raise SweepError(f"stages form a cycle: {' -> '.join(cycle)}")
        state[name] = "active"
        for dep in deps[name]:
            visit(dep, path + [name])
        state[name] = "done"
        order.append(name)

    for name in stages:
        visit(name, [])
    return order


def _benchmarks(raw: dict, out_dir: Path) -> dict:
    out = {}
    for name, b in raw.items():
        b = _check_keys(b, BENCH_KEYS, f"benchmarks.{name}")
        if ("manifest" in b) == ("generate" in b):
            raise SweepError(f"benchmarks.{name}: give exactly one of manifest (a file or dataset folder) "
                             f"or generate ({', '.join(GENERATE_KEYS)})")
        entry = {"probe_args": _flatten(b.get("probe_args")), "finetune_args": _flatten(b.get("finetune_args"))}
        if "generate" in b:
            gen = dict(_check_keys(b["generate"] or {}, GENERATE_KEYS, f"benchmarks.{name}.generate"))
            try:
                check_generate(**gen)
            except (ValueError, TypeError) as e:
                raise SweepError(f"benchmarks.{name}.generate: {e}") from None
            folder = out_dir / "data" / name
            entry.update(generate=gen, manifest=str(folder / "manifest.csv"), recipe=str(folder / "benchmark.yaml"))
            entry["probe_args"] = {"frames": gen.get("frames", 128), "folds": 0, **entry["probe_args"]}
        else:
            entry["manifest"] = _path(b["manifest"], f"benchmarks.{name}.manifest")
            recipe = str(b.get("recipe") or name)
            entry["recipe"] = _path(recipe, f"benchmarks.{name}.recipe") if recipe.endswith((".yaml", ".yml")) \
                else recipe
            if b.get("recipe") and not (recipe.endswith((".yaml", ".yml")) or "/" in recipe) \
                    and recipe not in list_benchmarks():
                raise SweepError(f"benchmarks.{name}.recipe: unknown benchmark {recipe!r} (registered: "
                                 f"{', '.join(list_benchmarks())}; or give a benchmark YAML file)")
        out[name] = entry
    return out


def _init(name: str, raw: dict | None) -> dict:
    """A named initialisation as an encoder description (checkpoint path checked)."""
    raw = dict(_check_keys(raw, INIT_KEYS, f"inits.{name}"))
    init = raw.get("init", name if name in INITS else None)
    if init not in INITS:
        raise SweepError(f"inits.{name}: init must be one of {INITS}, got {init!r}")
    if init == "scratch" and not raw.get("checkpoint"):
        preset = raw.get("preset", "tiny")
        try:
            check_model_options(f"inits.{name}.", preset=preset, depth=raw.get("depth"))
        except ConfigError as e:
            raise SweepError(str(e)) from None
        return {"init": "scratch", "preset": preset, "depth": raw.get("depth"),
                "model": raw.get("model") or preset + (f"-d{raw['depth']}" if raw.get("depth") else ""),
                "label": name}
    if not raw.get("checkpoint") and init == "imagenet":
        raw["checkpoint"] = IMAGENET                       # the registry's ImageNet weights
    if not raw.get("checkpoint"):
        raise SweepError(f"inits.{name}: init {init!r} needs a checkpoint path (inits.{name}.checkpoint)")
    path = _checkpoint(raw["checkpoint"], f"inits.{name}: missing checkpoint path")
    return {"init": init, "checkpoint": path, "model": raw.get("model") or _model_name(path), "label": name}


def _checkpoint(ref, what: str) -> str:
    """A checkpoint of the sweep: a registered name, ``hf://`` reference or URL, checked by its form only (no
    download), kept as written; otherwise a path that must exist, made absolute."""
    if not is_reference(str(ref)):
        return _path(ref, what)
    try:
        check_reference(str(ref))
    except ValueError as e:
        raise SweepError(f"{what.split(':')[0]}: {e}") from None
    return str(ref)


def _model_name(ref: str) -> str:
    """The model name of a checkpoint in records: a registered name as it is, a file's stem."""
    return ref if lookup(ref) is not None else Path(ref).stem


def _encoders(stage: str, refs: list, stages: dict, produced: dict, inits: dict) -> list[dict]:
    """Encoder descriptions for the ``encoders`` list of an eval stage (model names made unique)."""
    out = []
    for ref in refs:
        ref = str(ref)
        if ref in stages:
            if not KINDS[stages[ref]["kind"]].produces_encoder:
                raise SweepError(f"stages.{stage}.encoders: stage {ref!r} ({stages[ref]['kind']}) produces no encoder")
            out += [dict(e) for e in produced[ref]]
        elif ref in inits or ref in ("scratch", "imagenet"):
            out.append(_init(ref, inits.get(ref)))
        elif is_reference(ref) and lookup(ref) is not None:        # released weights by name (aum-models)
            out.append({"init": lookup(ref).init, "checkpoint": ref, "model": ref, "label": ref})
        elif ref in INITS:
            raise SweepError(f"stages.{stage}.encoders: {ref!r} needs a checkpoint: declare inits.{ref}.checkpoint")
        elif "/" in ref or ref.endswith((".safetensors", ".pth", ".pt", ".bin")):
            path = _path(ref, f"stages.{stage}.encoders: missing checkpoint path")
            out.append({"init": "ssl", "checkpoint": path, "model": Path(path).stem,
                        "label": re.sub(r"[^A-Za-z0-9._+-]", "_", Path(path).stem)})
        else:
            _fail_unknown(f"stage, init or released weights (aum-models) in stages.{stage}.encoders", ref,
                          list(stages) + list(inits) + list_pretrained())
    models = [e["model"] for e in out]
    for e in out:
        if models.count(e["model"]) > 1 and e.get("stage"):
            e["model"] = e["label"] = f"{e['stage']}-{e['label']}"
    if len({e["label"] for e in out}) < len(out):
        raise SweepError(f"stages.{stage}.encoders: two encoders share the name {sorted(models)}; set inits.<name>.model")
    return out


def load_sweep(path, overrides=(), out_dir: str | None = None) -> Sweep:
    """Read, check and expand the sweep file ``path`` with ``key=value`` ``overrides`` (``out_dir`` wins over
    the file's). Touches no cluster and writes nothing; raises :class:`SweepError` for any problem."""
    path = Path(path)
    if not path.is_file():
        raise SweepError(f"sweep file not found: {path}")
    try:
        cfg = OmegaConf.merge(OmegaConf.load(path), OmegaConf.from_dotlist(list(overrides)))
        raw = OmegaConf.to_container(cfg, resolve=True) or {}
    except Exception as e:  # noqa: BLE001 - YAML / interpolation errors of several types
        raise SweepError(f"cannot read sweep file {path}: {e}") from e
    _check_keys(raw, TOP_KEYS, "the sweep file")
    name = str(raw.get("name") or path.stem)
    root = Path(out_dir or raw.get("out_dir") or f"runs/sweeps/{name}").expanduser().resolve()
    executor = str(raw.get("executor", "auto"))
    if executor not in EXECUTORS:
        _fail_unknown("executor", executor, EXECUTORS)
    res_cfg = _check_keys(raw.get("resources"), ("default",) + tuple(KINDS), "resources")
    stages = _check_keys(raw.get("stages"), list(raw.get("stages") or {}), "stages")
    if not stages:
        raise SweepError("the sweep file declares no stages")
    for sname, s in stages.items():
        _check_keys(s, STAGE_KEYS, f"stages.{sname}")
        if s.get("kind") not in KINDS or s["kind"] == "tables":
            raise SweepError(f"stages.{sname}.kind must be one of {[k for k in KINDS if k != 'tables']}, "
                             f"got {s.get('kind')!r}")
        for dep in _refs(s.get("after")):
            if dep not in stages:
                _fail_unknown(f"stage in stages.{sname}.after", dep, list(stages))
    benchmarks = _benchmarks(_check_keys(raw.get("benchmarks"), list(raw.get("benchmarks") or {}), "benchmarks"),
                             root)
    inits = _check_keys(raw.get("inits"), list(raw.get("inits") or {}), "inits")
    jobs, produced, by_stage = [], {}, {}

    def add(job: JobSpec, kind: str, stage_res) -> None:
        try:
            job.resources = resolve_resources(kind, res_cfg.get("default"), res_cfg.get(kind), stage_res)
        except ResourceError as e:
            raise SweepError(f"{job.name}: {e}") from None
        if not KINDS[kind].ddp and (job.resources.nodes > 1 or (job.resources.tasks_per_node or 1) > 1):
            raise SweepError(f"{job.name}: {kind} runs as one process; nodes and tasks_per_node must be 1")
        jobs.append(job)
        by_stage.setdefault(job.stage, []).append(job.name)

    for sname in stage_order(stages):
        s, kind = stages[sname], stages[sname]["kind"]
        after = [j for dep in _refs(s.get("after")) for j in by_stage.get(dep, [])]
        args, points = _flatten(s.get("args")), _grid_points(s.get("grid"), f"stages.{sname}")
        if kind == "pretrain":
            for key in ("encoders", "benchmarks", "seeds"):
                if s.get(key) is not None:
                    raise SweepError(f"stages.{sname}: a pretrain stage takes no {key!r} (put engine.seed in grid)")
            config = _path(s["config"], f"stages.{sname}.config") if s.get("config") else None
            produced[sname] = []
            for point in points:
                label = _label(point) or sname
                out = root / sname / label if point else root / sname
                job = JobSpec(f"{sname}/{label}" if point else sname, sname, kind,
                              pretrain_argv(config, {**args, **point}, str(out)), str(out), None, list(after),
                              encoder=str(out / "encoder.safetensors"), info=dict(point))
                add(job, kind, s.get("resources"))
                produced[sname].append({"init": "ssl", "checkpoint": job.encoder, "model": label, "label": label,
                                        "stage": sname, "job": job.name})
            continue
        if not s.get("encoders") or not s.get("benchmarks"):
            raise SweepError(f"stages.{sname}: a {kind} stage needs encoders and benchmarks")
        encoders = _encoders(sname, _refs(s["encoders"]), stages, produced, inits)
        seeds = _as_list(s.get("seeds", [0]), f"stages.{sname}.seeds")
        for enc, bench, seed, point in itertools.product(
                encoders, _as_list(s["benchmarks"], f"stages.{sname}.benchmarks"), seeds, points):
            if bench not in benchmarks:
                _fail_unknown(f"benchmark in stages.{sname}.benchmarks", bench, list(benchmarks))
            b = benchmarks[bench]
            label = f"{bench}-seed{seed}" + (f"-{_label(point)}" if point else "")
            out, rec = root / sname / enc["label"] / label, root / "records" / sname / enc["label"] / label
            extra = {**b[f"{kind}_args"], **args, **point}
            job = JobSpec(f"{sname}/{enc['label']}/{label}", sname, kind,
                          eval_argv(kind, bench if kind == "probe" else b["recipe"], b["manifest"], enc, int(seed),
                                    extra, str(rec), str(out), str(root / "cache")), str(out), None,
                          list(after) + ([enc["job"]] if enc.get("job") else []), records_dir=str(rec),
                          info={"encoder": enc["label"], "init": enc["init"], "benchmark": bench, "seed": seed,
                                **point})
            add(job, kind, s.get("resources"))
    tables = raw.get("tables", True)
    if tables:
        tables_res = tables.get("resources") if isinstance(tables, dict) else None
        job = JobSpec("tables", "tables", "tables", tables_argv(str(root / "records"), str(root / "tables")),
                      str(root / "tables"), None, [j.name for j in jobs])
        add(job, "tables", tables_res)
    local_parallel = int(raw.get("local_parallel", 1))
    if local_parallel < 1:
        raise SweepError(f"local_parallel must be >= 1, got {local_parallel}")
    return Sweep(name, str(path.resolve()), str(root), executor, local_parallel, benchmarks, jobs, raw)
