"""Masked-spectrogram self-supervised pretraining of an AuM encoder.

    python -m pretrain                                   # built-in default: tiny AuM, SSAST, generated audio
    python -m pretrain data.source=/data/unlabelled objective.name=mae engine.out_dir=runs/mae
    python -m pretrain my_run.yaml engine.max_steps=20000

Writes into ``engine.out_dir``: ``config.yaml`` (resolved), ``checkpoints/`` (resumable training state),
``encoder.safetensors`` (the encoder alone, loadable with ``aum.checkpoint.load_checkpoint``; refreshed at
every checkpoint), ``metrics.jsonl``, ``tb/`` (TensorBoard), ``images/`` (input / masked / reconstruction),
``bad_files.jsonl`` (audio that could not be used, with reasons) and ``log.txt``.

``config.yaml`` is written once the config, the data source and the model have been checked; a folder that
already holds checkpoints of a different config is refused (naming the differing keys). Exit status: 0 done,
2 a usage / config / data error (``--debug`` shows its traceback), 3 stopped by a signal (SIGTERM, SIGUSR1,
Ctrl-C) after writing a checkpoint: the run is resumable, run the same command again to continue it.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch

from aum.checkpoint import save_checkpoint
from aum.cli import EXIT_OK, CommandLine, RunStopped, run_cli, save_run_config, stopped_message
from aum.config import load_config, to_dataclass
from aum.data.datasets import AudioClipDataset, SynthAudioDataset, collate_skip_bad, format_bad_file_report, read_manifest, \
    scan_audio
from aum.train.engine import Trainer
from aum.models import create_model
from pretrain.config import PretrainConfig, check_config
from pretrain.figures import save_reconstruction_png
from pretrain.objectives import OBJECTIVES

log = logging.getLogger("pretrain")
MANIFEST_SUFFIXES = (".csv", ".jsonl", ".json")


def build_dataset(cfg: PretrainConfig, out_dir: Path):
    """The unlabelled training set of ``cfg.data``; a folder without audio is an error here, before training."""
    d = cfg.data
    if d.source == "synth":
        return SynthAudioDataset(d.synth_clips, crop_frames=d.crop_frames, preset=d.preset, seed=cfg.engine.seed)
    source = Path(d.source)
    if not source.exists():
        raise FileNotFoundError(f"data.source {source} does not exist (use 'synth', a folder or a manifest)")
    entries = read_manifest(source) if source.suffix.lower() in MANIFEST_SUFFIXES else scan_audio(source)
    return AudioClipDataset(entries, crop_frames=d.crop_frames, preset=d.preset, seed=cfg.engine.seed,
                            bad_files_path=out_dir / "bad_files.jsonl")


def build_objective(cfg: PretrainConfig) -> torch.nn.Module:
    """Encoder (headless, its position grid sized to the training crops) wrapped in the chosen objective."""
    m, o, k = cfg.model, cfg.objective, cfg.mask
    overrides = {key: val for key, val in (("depth", m.depth), ("embed_dim", m.embed_dim)) if val is not None}
    encoder = create_model(m.preset, mixer=m.mixer, cls_position=m.cls_position, num_classes=0,
                           target_frames=cfg.data.crop_frames, **overrides)
    if o.name not in OBJECTIVES:
        raise ValueError(f"unknown objective {o.name!r}; choose one of {sorted(OBJECTIVES)}")
    mask = {"mask_strategy": k.strategy, "mask_span": k.span, "mask_cluster": k.cluster}
    if k.ratio is not None:
        mask["mask_ratio"] = k.ratio
    if o.name == "ssast":
        return OBJECTIVES["ssast"](encoder, gen_weight=o.gen_weight, disc_weight=o.disc_weight, **mask)
    return OBJECTIVES["mae"](encoder, decoder_dim=o.decoder_dim, decoder_depth=o.decoder_depth,
                             norm_pix=o.norm_pix, **mask)


def step_fn(model, batch):
    """One training micro-step for the engine: ``(loss, metrics)``."""
    loss, metrics, _ = model(batch)
    return loss, metrics


def export_encoder(objective, folder: Path, cfg: PretrainConfig, step: int | None = None) -> Path:
    """Write the encoder alone (no decoder, no heads) as ``folder/encoder.safetensors``, recording its feature
    preset ``cfg.data.preset`` with the source ``pretrain:<engine.out_dir>``."""
    meta = {"objective": cfg.objective.name, "mask_strategy": cfg.mask.strategy, "data": cfg.data.source}
    if step is not None:
        meta["step"] = step
    return save_checkpoint(objective.encoder, Path(folder) / "encoder.safetensors", metadata=meta,
                           feature_preset=cfg.data.preset, feature_source=f"pretrain:{cfg.engine.out_dir}")


#: Keys that may change when a run with checkpoints is started again (they do not change what is trained).
RESUMABLE_CHANGES = tuple(f"engine.{k}" for k in (
    "out_dir", "max_steps", "resume", "log_every", "ckpt_every", "keep_last", "image_every", "num_workers",
    "device"))


def pretrain(cfg: PretrainConfig) -> dict:
    """Run (or resume) pretraining as configured; returns the engine's summary plus the encoder path.

    The data source, the objective and the encoder are built first; only then is ``config.yaml`` written
    (:func:`aum.cli.save_run_config`: a folder with checkpoints of another config is refused). The encoder and
    objective are initialised from ``engine.seed`` alone, so the same command gives the same weights."""
    check_config(cfg)                                  # the values aum-sweep checks before submitting
    out_dir = Path(cfg.engine.out_dir)
    dataset = build_dataset(cfg, out_dir)
    with torch.random.fork_rng(devices=[]):           # initial weights depend on the seed only
        torch.manual_seed(cfg.engine.seed)
        objective = build_objective(cfg)
    save_run_config(cfg, out_dir, cfg.engine.resume, RESUMABLE_CHANGES, "engine.resume")
    trainer = Trainer(
        objective, dataset, cfg.engine, step_fn, collate_fn=collate_skip_bad,
        visualise=lambda model, batch, step, path: save_reconstruction_png(model, batch, step, path),
        export=lambda model, folder: export_encoder(model, out_dir, cfg),
        dataset_epoch_keys=True)
    summary = trainer.fit()
    summary["encoder"] = str(out_dir / "encoder.safetensors")
    bad = out_dir / "bad_files.jsonl"
    if bad.exists():
        report = format_bad_file_report(bad)
        log.warning(report)
        summary["bad_files"] = report
    return summary


def build_parser() -> CommandLine:
    """The command line of ``python -m pretrain``: an optional ``CONFIG.yaml`` (or ``--config FILE``), then
    ``key=value`` overrides of :class:`pretrain.config.PretrainConfig` (:class:`aum.cli.CommandLine`)."""
    return CommandLine("python -m pretrain", __doc__, config=PretrainConfig, config_file=True)


def check_args(args) -> PretrainConfig:
    """The config a parsed command line (:func:`build_parser`) pretrains with: the schema's defaults < its
    ``CONFIG.yaml`` < its overrides, checked (:func:`pretrain.config.check_config`) without building anything."""
    cfg = to_dataclass(load_config(PretrainConfig, args.config, args.overrides), PretrainConfig)
    check_config(cfg)
    return cfg


def run(argv=None) -> dict:
    """Parse the command line (:func:`build_parser`; ``sys.argv[1:]`` when None), pretrain and print where the
    encoder is; returns :func:`pretrain`'s summary. ``--help`` exits 0 (``SystemExit``); errors propagate
    (:func:`main` reports them)."""
    args = build_parser().parse(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    summary = pretrain(check_args(args))
    if summary.get("stopped_by") != "signal":
        print(f"pretraining done at step {summary.get('step')}; encoder: {summary['encoder']}")
    return summary


def main(argv=None) -> int:
    """Command-line entry point (``aum-pretrain``, ``python -m pretrain``); returns the exit status: 0 done,
    2 a usage / config / data error (one message; ``--debug`` adds the traceback), 3 stopped by a signal
    (SIGTERM, SIGUSR1, Ctrl-C) after a checkpoint: rerunning the same command resumes (see :mod:`aum.cli`)."""

    def body(words: list[str]) -> int:
        summary = run(words)
        if summary.get("stopped_by") == "signal":
            raise RunStopped(stopped_message("aum-pretrain", words, f"pretraining stopped by a signal at step "
                                             f"{summary.get('step')} (checkpoint {summary.get('checkpoint')})"))
        return EXIT_OK

    return run_cli("aum-pretrain", body, argv)
