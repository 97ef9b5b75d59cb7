"""The benchmark registry: what each benchmark is and how the official recipes fine-tune on it.

One YAML file per benchmark under ``eval/recipes/<name>.yaml`` with two sections, typed and checked by
:class:`BenchmarkSpec` and :class:`Recipe` (an unknown key or a wrong type is an error naming it)::

    benchmark: {name, num_classes, multi_label, metric, sample_rate, target_frames, preset, splits, folds, ...}
    recipe:    {epochs, lr, batch_size, betas, weight_decay, decay_start/every/factor, warmup, loss, sampling,
                freqm, timem, mixup, noise, roll, ...}

Recipe epochs are converted to optimizer steps by :func:`engine_settings`. A YAML file of the same form anywhere
else works too (``load_benchmark("my_task.yaml")``), which is how new tasks are added. Where we deliberately
differ from the official recipes is listed in one place: ``eval/recipes/README.md``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import MISSING

from aum.config import ConfigError, load_config, to_dataclass
from aum.audio.features import get_preset

RECIPE_DIR = Path(__file__).resolve().parent / "recipes"
METRICS = ("accuracy", "mAP")
LOSSES = ("bce", "ce")
SAMPLINGS = ("uniform", "balanced")
SCHEDULES = ("step", "multistep", "constant")
CROPS = ("start", "random", "window")
MASK_STYLES = ("torchaudio", "epic")

__all__ = ["BenchmarkSpec", "Recipe", "BenchmarkFile", "list_benchmarks", "recipe_path", "load_benchmark",
           "get_benchmark", "check_benchmark", "engine_settings", "recipe_dict", "RECIPE_DIR"]


@dataclass
class BenchmarkSpec:
    """Facts of one benchmark and of its input pipeline.

    ``splits``: the manifest split names its preparer writes (``train``/``valid``/``test``, or ``fold1``..``foldK``
    when ``folds = K``: fold *i* is then the test set of run *i*). Without a ``valid`` split a validation set of
    ``valid_fraction`` of the training clips is carved out (whole ``valid_group`` groups, per class when
    ``valid_stratify``). ``train_crop``: ``start`` takes the first ``target_frames`` (AST/AuM), ``random`` a random
    window of ``target_frames``, ``window`` a random window of ``train_window_s`` seconds and its first
    ``target_frames`` (EPIC-Sounds: 10 s); evaluation always takes the start.
    """

    name: str = MISSING
    title: str = ""
    num_classes: int = MISSING
    multi_label: bool = False
    metric: str = "accuracy"
    sample_rate: int = 16000
    target_frames: int = 1024
    preset: str = "audioset"
    splits: list[str] = field(default_factory=lambda: ["train", "valid", "test"])
    folds: int = 0
    valid_fraction: float = 0.0
    valid_group: str = "group"
    valid_stratify: bool = False
    train_crop: str = "start"
    train_window_s: float = 10.0
    prepare: str = ""
    source: str = ""

    @property
    def multilabel(self) -> bool:
        """Alias of ``multi_label`` (the spelling :mod:`eval.probe` reads)."""
        return self.multi_label


@dataclass
class Recipe:
    """A fine-tuning recipe in epochs (see :func:`engine_settings`). ``official`` marks the values of the AuM
    scripts (docs/models.md, "Fine-tuning recipes"); ``notes`` says where the rest come from. ``mask_style`` picks how the
    ``freqm`` / ``timem`` masks are drawn: ``torchaudio`` (AST/AuM, :func:`eval.augment.spec_augment`) or ``epic``
    (the EPIC-Sounds code, :func:`eval.augment.epic_spec_augment`, about half as wide)."""

    official: bool = True
    optimizer: str = "adam"
    betas: tuple[float, float] = (0.95, 0.999)
    weight_decay: float = 5e-7
    epochs: int = MISSING
    lr: float = MISSING
    batch_size: int = MISSING
    schedule: str = "step"
    decay_start: int = 0
    decay_every: int = 1
    decay_factor: float = 1.0
    milestones: list[int] = field(default_factory=list)
    milestone_factors: list[float] = field(default_factory=list)
    warmup_steps: int = 0
    warmup_epochs: int = 0
    loss: str = "bce"
    sampling: str = "uniform"
    freqm: int = 0
    timem: int = 0
    freq_masks: int = 1
    time_masks: int = 1
    time_warp: int = 0
    mask_style: str = "torchaudio"
    mixup: float = 0.0
    mixup_alpha: float = 10.0
    noise: bool = False
    roll: int = 0
    notes: str = ""


@dataclass
class BenchmarkFile:
    """The content of one recipe YAML file."""

    benchmark: BenchmarkSpec = field(default_factory=BenchmarkSpec)
    recipe: Recipe = field(default_factory=Recipe)


def list_benchmarks() -> list[str]:
    """Names of the registered benchmarks (the YAML files under ``eval/recipes``)."""
    return sorted(p.stem for p in RECIPE_DIR.glob("*.yaml"))


def recipe_path(name: str) -> Path:
    """The YAML file of benchmark ``name`` (a registered name, or a path to a YAML file)."""
    if name.endswith((".yaml", ".yml")) or "/" in name:
        if not Path(name).is_file():
            raise FileNotFoundError(f"benchmark file {name} not found")
        return Path(name)
    path = RECIPE_DIR / f"{name}.yaml"
    if not path.is_file():
        raise KeyError(f"unknown benchmark {name!r}; registered: {', '.join(list_benchmarks())} "
                       f"(or give a YAML file)")
    return path


def _one_of(value, allowed, what: str) -> None:
    if value not in allowed:
        raise ConfigError(f"{what} must be one of {allowed}, got {value!r}")


def check_benchmark(bf: BenchmarkFile) -> BenchmarkFile:
    """Check the values that types alone cannot; returns ``bf``. Raises :class:`aum.config.ConfigError`."""
    b, r = bf.benchmark, bf.recipe
    _one_of(b.metric, METRICS, "benchmark.metric")
    _one_of(b.train_crop, CROPS, "benchmark.train_crop")
    _one_of(r.mask_style, MASK_STYLES, "recipe.mask_style")
    if b.train_crop == "window" and not b.train_window_s > 0:
        raise ConfigError(f"benchmark.train_window_s must be > 0 with train_crop=window, got {b.train_window_s}")
    _one_of(r.loss, LOSSES, "recipe.loss")
    _one_of(r.sampling, SAMPLINGS, "recipe.sampling")
    _one_of(r.schedule, SCHEDULES, "recipe.schedule")
    _one_of(r.optimizer, ("adam", "adamw"), "recipe.optimizer")
    get_preset(b.preset)
    if b.num_classes < 2:
        raise ConfigError(f"benchmark.num_classes must be >= 2, got {b.num_classes}")
    if b.multi_label and r.loss != "bce":
        raise ConfigError("a multi-label benchmark needs recipe.loss=bce")
    if b.folds:
        if list(b.splits) != [f"fold{k}" for k in range(1, b.folds + 1)]:
            raise ConfigError(f"benchmark.splits must be fold1..fold{b.folds} for a {b.folds}-fold benchmark")
    elif "train" not in b.splits or "test" not in b.splits:
        raise ConfigError(f"benchmark.splits must hold train and test (and valid), got {list(b.splits)}")
    if (b.folds or "valid" not in b.splits) and not 0 < b.valid_fraction < 1:
        raise ConfigError("without a valid split, benchmark.valid_fraction must be in (0, 1)")
    if len(r.milestones) != len(r.milestone_factors):
        raise ConfigError("recipe.milestones and recipe.milestone_factors must have the same length")
    if not 0 <= r.mixup <= 1:
        raise ConfigError(f"recipe.mixup is a probability, got {r.mixup}")
    for name in ("epochs", "batch_size", "decay_every", "freq_masks", "time_masks"):
        if getattr(r, name) < 1:
            raise ConfigError(f"recipe.{name} must be >= 1, got {getattr(r, name)}")
    return bf


def load_benchmark(name: str, overrides=()) -> BenchmarkFile:
    """The checked :class:`BenchmarkFile` of ``name`` (registered name or YAML path) with ``key=value``
    ``overrides`` (e.g. ``recipe.lr=1e-4``) applied."""
    cfg = load_config(BenchmarkFile, recipe_path(name), overrides)
    return check_benchmark(to_dataclass(cfg, BenchmarkFile))


def get_benchmark(name: str) -> BenchmarkSpec:
    """The :class:`BenchmarkSpec` of a registered benchmark (or YAML file); ``KeyError`` for an unknown name."""
    return load_benchmark(name).benchmark


def engine_settings(recipe: Recipe, steps_per_epoch: int) -> dict:
    """:class:`aum.train.engine.EngineConfig` fields of ``recipe`` for an epoch of ``steps_per_epoch`` optimizer steps.

    Matches the official loop (``MultiStepLR(range(decay_start, 1000, decay_every))`` stepped after each epoch):
    0-based epoch ``e >= decay_start`` runs at ``lr * decay_factor ** (1 + (e - decay_start) // decay_every)``;
    ``multistep`` milestones are 0-based epochs too. Warm-up is ``warmup_steps + warmup_epochs * steps_per_epoch``
    linear steps. No gradient clipping; weight decay on every parameter (as the official Adam).
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    spe = steps_per_epoch
    out = {"optimizer": recipe.optimizer, "lr": recipe.lr, "betas": tuple(recipe.betas),
           "weight_decay": recipe.weight_decay, "max_steps": recipe.epochs * spe, "clip_grad": None,
           "warmup_steps": recipe.warmup_steps + recipe.warmup_epochs * spe, "schedule": recipe.schedule}
    if recipe.schedule == "step":
        out.update(decay_start=recipe.decay_start * spe, decay_every=recipe.decay_every * spe,
                   decay_factor=recipe.decay_factor)
    elif recipe.schedule == "multistep":
        out.update(milestones=tuple(m * spe for m in recipe.milestones),
                   milestone_factors=tuple(recipe.milestone_factors))
    return out


def recipe_dict(bf: BenchmarkFile) -> dict:
    """Plain-dict form of a benchmark file (for records and logs)."""
    return dataclasses.asdict(bf)
