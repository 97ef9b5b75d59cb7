"""Needle in a haystack: up to what input length does a classifier still hear a labelled clip, and where?

    python -m eval.niah CHECKPOINT MANIFEST --lengths 5s 30s 1m 10m --positions 0 0.5 1 \\
        --haystack zeros babble:DIR white --snr 10 --modes whole window --out runs/niah [--per-class 2]

``CHECKPOINT``: any classifier of ours with its head (a fine-tuned AuM or DASS: ``best.safetensors`` of
``eval.finetune``; also a released DASS / AuM with a head). ``MANIFEST``: the labelled clips (``eval.prepare``; the
class order is the checkpoint's recorded ``classes``, else ``classes.txt`` beside the manifest). The needles are the
clips of the test split (the checkpoint's recorded fold for a k-fold benchmark, else ``test``; ``--split``), or a
class-balanced subset of them (``--per-class``, ``--limit``: fixed by a hash of the seed and path). Each needle (its
features cut to the training length, ``config.target_frames``) goes into a haystack (:mod:`eval.haystack`) of each
length at each position, and every run mode scores it:

- ``whole``: the whole input through the encoder in one pass (``torch.no_grad``; AuM stretches its position
  embedding to the input's grid, DASS needs none);
- ``window``: windows of the training length (hop half a window, ``--hop-frames``), pooled over the input:
  ``--pool max`` (default) takes each class's largest probability over the windows (softmax for single-label,
  sigmoid for multi-label: the needle fills at most a window or two, so a mean would drown it in haystack windows);
  ``--pool mean`` averages the logits. A window clear of the needle runs once per haystack (the positions of a
  needle share it), and once in all on ``zeros``.

The score is the benchmark's metric (accuracy or mAP, :mod:`eval.metrics`). Each cell (haystack, length, position,
mode) writes one :class:`eval.records.ResultRecord` (mode ``niah``) into ``OUT/records`` and the per-clip scores
into ``OUT/predictions``; a rerun skips the cells whose record exists (a group of cells half done resumes after its
last finished needle). At the end ``OUT/tables/niah.{md,csv,tex,png}`` cover every record under ``OUT``
(:func:`eval.results.write_niah_tables`). docs/niah.md has the method and its differences from the DASS paper.
"""
from __future__ import annotations

import hashlib
import io
import json
import logging
import resource
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import torch

from aum.atomic import atomic_write
from aum.audio.frames import KALDI_SAMPLE_RATE
from aum.checkpoint import content_hash, feature_preset_of, load_checkpoint
from aum.cli import EXIT_OK, CommandLine, UsageError, run_cli
from aum.data.datasets import load_clip, read_manifest
from aum.embed.windows import pad_value_for
from aum.models.registry import model_name
from eval.ft_data import check_entries, manifest_classes
from eval.haystack import (POOLS, RUN_MODES, babble_loop, format_length, haystack_features, insert_needle,
                           needle_features, parse_haystack, parse_length, parse_position, stream_of, whole_scores,
                           window_scores)
from eval.metrics import score
from eval.prepare.custom import hash_unit
from eval.records import INITS, ResultRecord, write_record

log = logging.getLogger("eval.niah")


@dataclass
class Plan:
    """Everything one NIAH run does (built by :func:`plan_from_args`)."""

    checkpoint: str
    needles: list[dict]                      # manifest entries, in the order scored
    classes: list[str]
    lengths: list[int]                       # frames
    positions: list[float]
    haystacks: list
    modes: list[str]
    out: Path
    benchmark: str = "custom"
    metric: str = "accuracy"
    multi_label: bool = False
    snr_db: float = 10.0
    seed: int = 0
    fold: int | None = None
    init: str = "scratch"
    model_name: str = ""
    window_frames: int = 0                   # 0: the training length
    hop_frames: int = 0                      # 0: half a window
    pool: str = "max"
    batch_size: int = 8
    chunk_frames: int = 6000
    selection: dict = field(default_factory=dict)


def checkpoint_metadata(path) -> dict:
    """The user metadata (``aum_metadata``: benchmark, fold, classes of a fine-tuned model) of one of our
    safetensors checkpoints, read from its header; ``{}`` for other files."""
    path = Path(path)
    if path.suffix != ".safetensors" or not path.is_file():
        return {}
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return json.loads(meta.get("aum_metadata", "{}")) if "aum_config" in meta else {}


def recorded_init(path) -> str | None:
    """How the fine-tuned ``path`` was initialised, from the fine-tuning record beside it (``records/`` in its
    folder or the one above, as :mod:`eval.finetune` writes them), or ``None``."""
    path = Path(path).resolve()
    for folder in (path.parent / "records", path.parent.parent / "records"):
        for f in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            try:
                rec = json.loads(f.read_text())
            except (OSError, ValueError):
                continue
            if rec.get("mode") == "finetune" and rec.get("checkpoint") and Path(rec["checkpoint"]).resolve() == path:
                return rec.get("init")
    return None


def select_needles(entries: list[dict], split: str, per_class: int = 0, limit: int = 0, seed: int = 0) -> list[dict]:
    """The needles: the entries of ``split`` (``all``: every entry; several names joined by ``,``), at most
    ``per_class`` per first label and ``limit`` in all (0: no cap), chosen in a fixed order given by a hash of the
    seed and path; returned by label, then that order. ``ValueError`` when none is left."""
    names = None if split == "all" else set(split.split(","))
    pool = [e for e in entries if names is None or str(e.get("split", "")) in names]
    if not pool:
        raise ValueError(f"no clip of the manifest is in split {split!r} (splits: "
                         f"{sorted({str(e.get('split', '')) for e in entries})})")
    pool.sort(key=lambda e: hash_unit(f"{seed}:{e['path']}"))
    if per_class:
        taken: dict[str, int] = {}
        kept = []
        for e in pool:
            label = _labels(e)[0]
            if taken.get(label, 0) < per_class:
                taken[label] = taken.get(label, 0) + 1
                kept.append(e)
        pool = kept
    if limit:
        pool = pool[:limit]
    rank = {id(e): i for i, e in enumerate(pool)}
    return sorted(pool, key=lambda e: (_labels(e)[0], rank[id(e)]))


def _labels(entry: dict) -> list[str]:
    value = entry.get("labels", entry.get("label"))
    return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]


def _cells(plan: Plan):
    """The grid, grouped by (length, haystack): ``[((length, haystack), [(position, mode), ...]), ...]``."""
    return [((n, h), [(p, m) for p in plan.positions for m in plan.modes])
            for n in sorted(plan.lengths) for h in plan.haystacks]


def _cell_extra(plan: Plan, length: int, hay, position: float, mode: str, window: int, hop: int) -> dict:
    extra = {"haystack": hay.name, "snr_db": plan.snr_db if hay.noise else None, "length_frames": length,
             "length": format_length(length), "length_s": length / 100.0, "position": position, "run_mode": mode}
    if hay.kind == "babble":
        extra["babble_dir"] = str(Path(hay.folder).resolve())
    if mode == "window":
        extra.update(window_frames=window, hop_frames=hop, pool=plan.pool)
    return extra


def _settings_key(base: dict, extra: dict) -> str:
    keep = {k: v for k, v in extra.items() if k not in ("length", "length_s")}
    return hashlib.sha1(json.dumps({**base, **keep}, sort_keys=True, default=str).encode()).hexdigest()[:16]


def _record(plan: Plan, model_id: str, value: float, extra: dict, **kw) -> ResultRecord:
    return ResultRecord(benchmark=plan.benchmark, mode="niah", init=plan.init, model=model_id, metric=plan.metric,
                        value=value, seed=plan.seed, fold=plan.fold, checkpoint=str(plan.checkpoint), extra=extra,
                        **kw)


def _existing(path: Path, key: str) -> bool:
    """Whether the record at ``path`` is this cell's (same settings); another run's there is an error."""
    if not path.is_file():
        return False
    try:
        old = json.loads(path.read_text()).get("extra", {}).get("settings_key")
    except ValueError:
        return False                                            # a torn file is rewritten
    if old != key:
        raise ValueError(f"{path}: a record of this cell from another checkpoint, needle set or settings exists; "
                         f"use another --out (or --name for another model)")
    return True


def _save_npz(path: Path, **arrays) -> None:
    """``arrays`` as one ``.npz`` file, written atomically (its folder made)."""
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda f: f.write(buf.getvalue()))


def run(plan: Plan, model) -> list[ResultRecord]:
    """Score every cell of ``plan`` with ``model`` (eval mode, with a head); returns the records written (the
    skipped ones not included)."""
    from tqdm import tqdm
    preset = feature_preset_of(model)
    if preset.kind != "kaldi":
        raise ValueError(f"{plan.checkpoint}: feature preset {preset.name!r} is not a 16 kHz Kaldi preset; "
                         f"the needle test supports the Kaldi presets only")
    train = int(model.config.target_frames)
    window, model_id = plan.window_frames or train, plan.model_name or model_name(model.config.to_dict(), model.family)
    hop = plan.hop_frames or max(1, window // 2)
    index = {c: i for i, c in enumerate(plan.classes)}
    targets = np.zeros((len(plan.needles), len(plan.classes)), np.float32)
    for i, e in enumerate(plan.needles):
        targets[i, [index[lab] for lab in _labels(e)]] = 1.0
    base = {"checkpoint": content_hash(plan.checkpoint), "needles": [e["path"] for e in plan.needles],
            "preset": [preset.name, preset.mean, preset.std], "needle_frames": train, "seed": plan.seed,
            "metric": plan.metric, "classes": plan.classes}
    out, written, zeros_cache, loops = Path(plan.out), [], {}, {}
    groups = []
    for (length, hay), cells in _cells(plan):
        todo = []
        for pos, mode in cells:
            extra = _cell_extra(plan, length, hay, pos, mode, window, hop)
            extra["settings_key"] = _settings_key(base, extra)
            path = out / "records" / _record(plan, model_id, 0.0, extra, code_version="-", created="-").filename()
            if not _existing(path, extra["settings_key"]):
                todo.append((pos, mode, extra))
        if todo:
            groups.append((length, hay, todo))
    bar = tqdm(total=sum(len(plan.needles) for _ in groups), desc=f"niah {model_id}", unit="needle", mininterval=2.0,
               dynamic_ncols=True, file=sys.stderr)
    for length, hay, todo in groups:
        bar.set_postfix_str(f"{format_length(length)} {hay.name}")
        key = _settings_key(base, {"group": [t[2]["settings_key"] for t in todo]})
        partial = out / "partial" / f"{model_id}_{hay.name}_{length}f.npz"
        scores = np.zeros((len(todo), len(plan.needles), len(plan.classes)), np.float32)
        starts = np.zeros((len(todo), len(plan.needles)), np.int64)
        seconds, done, windows = np.zeros(len(todo)), 0, {}
        if partial.is_file():
            with np.load(partial) as z:
                if str(z["key"]) == key:
                    done, scores, starts, seconds = int(z["done"]), z["scores"], z["starts"], z["seconds"]
                    bar.update(done)
        if hay.kind == "babble" and hay not in loops:
            loops[hay] = babble_loop(hay.folder, plan.seed)
        for i in range(done, len(plan.needles)):
            entry, t0 = plan.needles[i], time.perf_counter()
            wave = load_clip(entry, KALDI_SAMPLE_RATE)
            feats, r = needle_features(wave, preset, train, name=entry["path"])
            if feats.shape[0] > length:
                raise ValueError(f"{entry['path']}: its needle is {feats.shape[0]} frames, longer than the length "
                                 f"{format_length(length)} ({length} frames); ask lengths of at least "
                                 f"{feats.shape[0]} frames")
            stack = haystack_features(hay, length - feats.shape[0], preset, r, plan.snr_db, plan.seed,
                                      stream_of(entry["path"]), loops.get(hay), plan.chunk_frames)
            share, cache = (time.perf_counter() - t0) / len(todo), {}       # cache: this needle's haystack windows
            for j, (pos, mode, _) in enumerate(todo):
                t1 = time.perf_counter()
                x, s = insert_needle(stack, feats, pos)
                if mode == "whole":
                    p = whole_scores(model, x, plan.multi_label)
                else:
                    p, windows[j] = window_scores(model, x, window, hop, plan.multi_label, plan.pool, plan.batch_size,
                                                  pad_value_for(preset), (s, s + feats.shape[0]),
                                                  hay.kind == "zeros", zeros_cache if hay.kind == "zeros" else cache)
                scores[j, i], starts[j, i] = p.numpy(), s
                seconds[j] += time.perf_counter() - t1 + share
            _save_npz(partial, key=np.array(key), done=np.array(i + 1), scores=scores, starts=starts,
                      seconds=seconds)
            bar.update(1)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
        for j, (pos, mode, extra) in enumerate(todo):
            value = score(plan.metric, targets, scores[j])
            extra = {**extra, "n_needles": len(plan.needles), "family": model.family, "feature_preset": preset.name,
                     "training_frames": train, "peak_rss_mb": round(rss, 1), **plan.selection,
                     **({"windows": windows[j]} if j in windows else {})}
            rec = _record(plan, model_id, value, extra, wall_time_s=float(seconds[j]),
                          config={"lengths": plan.lengths, "positions": plan.positions, "modes": plan.modes,
                                  "haystacks": [h.name for h in plan.haystacks]})
            _save_npz(out / "predictions" / rec.filename().replace(".json", ".npz"), scores=scores[j], targets=targets,
                      needle_start=starts[j], classes=np.array(plan.classes),
                      paths=np.array([e["path"] for e in plan.needles]))
            written.append(rec)
            write_record(rec, out / "records")
        partial.unlink(missing_ok=True)
    bar.close()
    return written


def build_parser() -> CommandLine:
    """The command line of ``aum-niah`` / ``python -m eval.niah`` (:class:`aum.cli.CommandLine`)."""
    p = CommandLine("aum-niah", __doc__)
    p.add_argument("checkpoint", help="a classifier checkpoint with its head (e.g. best.safetensors of eval.finetune)")
    p.add_argument("manifest", help="manifest of labelled clips (python -m eval.prepare; classes.txt beside it)")
    p.add_argument("--lengths", nargs="+", default=["5s", "30s", "1m", "10m"], help="input lengths: 5s 10m 1h 512f ...")
    p.add_argument("--positions", nargs="+", default=["0", "0.5", "1"],
                   help="needle positions in [0, 1] (or start, middle, end)")
    p.add_argument("--haystack", nargs="+", default=["zeros"], help="zeros, white, babble:DIR (speech clips)")
    p.add_argument("--snr", type=float, default=10.0, help="dB of the needle over a noise haystack (default 10)")
    p.add_argument("--modes", nargs="+", default=list(RUN_MODES), choices=RUN_MODES)
    p.add_argument("--benchmark", help="registered benchmark or YAML (default: the one the checkpoint records)")
    p.add_argument("--metric", choices=("accuracy", "mAP"), help="the score (default: the benchmark's)")
    p.add_argument("--split", help="split(s) the needles come from, comma-separated, or 'all' (default: the "
                                   "checkpoint's test fold, else 'test')")
    p.add_argument("--per-class", type=int, default=0, help="at most N needles per class (0: all)")
    p.add_argument("--limit", type=int, default=0, help="at most N needles (0: all)")
    p.add_argument("--classes", help="class list (default: the checkpoint's, else classes.txt beside the manifest)")
    p.add_argument("--out", default="runs/niah", help="output folder (records/, predictions/, tables/)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--window-frames", type=int, default=0, help="window mode: frames per window (0: training length)")
    p.add_argument("--hop-frames", type=int, default=0, help="window mode: hop (0: half a window)")
    p.add_argument("--pool", choices=POOLS, default="max", help="window mode: max of probabilities or mean of logits")
    p.add_argument("--batch-size", type=int, default=8, help="windows per encoder call")
    p.add_argument("--device", default="cpu", help="cpu, cuda, or auto")
    p.add_argument("--init", choices=INITS, help="how the checkpoint was initialised, for the records (default: "
                                                 "its fine-tuning record; 'official' for a released file)")
    p.add_argument("--name", default="", help="the model's name in records (default: its architecture, e.g. tiny)")
    return p


def plan_from_args(args, model) -> Plan:
    """The :class:`Plan` of parsed arguments and the loaded ``model``: benchmark, metric, classes, needles and init
    from the flags, the checkpoint's metadata and the manifest; every check before any work."""
    from eval.registry import load_benchmark
    meta = checkpoint_metadata(args.checkpoint)
    bench_name = args.benchmark or meta.get("benchmark")
    bench = load_benchmark(bench_name).benchmark if bench_name else None
    if bench is None and args.metric is None:
        raise UsageError(f"{args.checkpoint} records no benchmark: give --benchmark NAME or --metric accuracy|mAP")
    metric = args.metric or bench.metric
    classes = meta.get("classes") or None
    listed = manifest_classes(args.manifest) if not args.classes else \
        [c for c in Path(args.classes).read_text().splitlines() if c.strip()]
    if classes and listed and list(classes) != list(listed):
        log.warning("%s: the checkpoint's classes differ from the class list beside the manifest; using the "
                    "checkpoint's (its head's order)", args.checkpoint)
    classes = list(classes or listed or [])
    if not classes:
        raise ValueError(f"no class list: {args.checkpoint} records none and there is no classes.txt beside "
                         f"{args.manifest} (give --classes)")
    head = int(getattr(model.config, "num_classes", 0))
    if head != len(classes):
        raise ValueError(f"{args.checkpoint}: its head has {head} classes, the class list {len(classes)}"
                         + ("; the needle test needs a classifier with its head" if head == 0 else ""))
    fold = meta.get("fold")
    split = args.split or (f"fold{fold}" if fold else "test")
    entries = read_manifest(args.manifest)
    needles = select_needles(entries, split, args.per_class, args.limit, args.seed)
    check_entries(needles, classes, SimpleNamespace(name=bench.name if bench else "custom", num_classes=len(classes),
                                                     multi_label=metric == "mAP"))
    if any("hdf5_key" in e for e in needles):
        raise ValueError(f"{args.manifest}: HDF5 (EPIC) clips are not supported by the needle test")
    init = args.init or recorded_init(args.checkpoint) or (None if meta or _ours(args.checkpoint) else "official")
    if init is None:
        raise UsageError(f"cannot tell how {args.checkpoint} was initialised (no fine-tuning record beside it): "
                         f"give --init {'|'.join(INITS)}")
    if args.batch_size < 1 or args.per_class < 0 or args.limit < 0:
        raise UsageError("--batch-size must be >= 1, --per-class and --limit >= 0")
    return Plan(checkpoint=args.checkpoint, needles=needles, classes=classes,
                lengths=sorted({parse_length(s) for s in args.lengths}),
                positions=sorted({parse_position(s) for s in args.positions}),
                haystacks=list(dict.fromkeys(parse_haystack(s) for s in args.haystack)),
                modes=list(dict.fromkeys(args.modes)), out=Path(args.out), benchmark=bench.name if bench else "custom",
                metric=metric, multi_label=metric == "mAP", snr_db=args.snr, seed=args.seed,
                fold=fold if isinstance(fold, int) else None, init=init, model_name=args.name,
                window_frames=args.window_frames, hop_frames=args.hop_frames, pool=args.pool,
                batch_size=args.batch_size,
                selection={"split": split, "per_class": args.per_class, "limit": args.limit})


def _ours(path) -> bool:
    from aum.checkpoint.files import sniff_format
    return Path(path).is_file() and sniff_format(Path(path)) == "safetensors"


def _main(argv: list[str]) -> int:
    args = build_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for text in args.lengths:
        parse_length(text)
    for text in args.haystack:
        parse_haystack(text)
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    model = load_checkpoint(args.checkpoint, map_location=device)
    plan = plan_from_args(args, model)
    log.info("%d needles (%s), lengths %s, positions %s, haystacks %s, modes %s", len(plan.needles),
             plan.selection["split"], [format_length(n) for n in plan.lengths], plan.positions,
             [h.name for h in plan.haystacks], plan.modes)
    records = run(plan, model)
    from eval.results import records_frame, write_niah_tables
    tables = write_niah_tables(records_frame(plan.out / "records"), plan.out / "tables")
    print(tables["markdown"] if tables else "no niah records")
    print(f"{len(records)} new record(s) in {plan.out / 'records'}; table and plot in {plan.out / 'tables'}")
    return EXIT_OK


def main(argv=None) -> int:
    """Entry point of ``aum-niah`` / ``python -m eval.niah``: the exit status (0 done, 2 a usage or input error
    with one message, :func:`aum.cli.run_cli`)."""
    return run_cli("aum-niah", _main, argv)


if __name__ == "__main__":
    sys.exit(main())
