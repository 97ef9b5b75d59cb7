"""The benchmark registry: every value against the tables of docs/models.md (features, recipes), the schedule
conversion against the official per-epoch MultiStepLR loop, and the checks on recipe files."""
import pytest
import torch

from aum.config import ConfigError
from aum.train.config import EngineConfig
from aum.train.optim import lr_at
from aum.audio.features import get_preset
from eval.registry import engine_settings, list_benchmarks, load_benchmark

# docs/models.md, features: classes, frames, mean / std, freqm / timem, mixup, metric (+ multi-label)
INPUT = {
    "audioset": (527, 1024, -4.2677393, 4.5689974, 48, 192, 0.5, "mAP", True),
    "audioset20k": (527, 1024, -4.2677393, 4.5689974, 48, 192, 0.5, "mAP", True),
    "vggsound": (309, 1024, -5.0767093, 4.4533687, 48, 192, 0.0, "accuracy", False),
    "voxceleb": (1251, 1024, -3.7614744, 4.2011642, 48, 192, 0.0, "accuracy", False),
    "speechcommands": (35, 128, -6.845978, 5.5654526, 48, 48, 0.6, "accuracy", False),
    "epic_sounds": (44, 1024, None, None, 48, 192, 0.0, "accuracy", False),
}
# docs/models.md, fine-tuning recipes: epochs, lr, batch, decay start / every / factor, warm-up steps, warm-up epochs, loss, sampling
RECIPES = {
    "audioset": (5, 1e-5, 12, 2, 1, 0.5, 1000, 0, "bce", "balanced"),
    "audioset20k": (25, 5e-5, 12, 10, 5, 0.5, 1000, 0, "bce", "uniform"),
    "vggsound": (20, 1e-5, 12, 5, 2, 0.75, 1000, 0, "bce", "uniform"),
    "voxceleb": (20, 1e-5, 12, 5, 2, 0.75, 1000, 0, "ce", "uniform"),
    "speechcommands": (30, 2.5e-4, 128, 5, 1, 0.85, 0, 0, "bce", "uniform"),
    "epic_sounds": (30, 1e-5, 12, None, None, None, 0, 2, "ce", "uniform"),
}


def test_all_benchmarks_are_registered():
    assert set(list_benchmarks()) == set(INPUT) | {"esc50", "esc10"}


@pytest.mark.parametrize("name", sorted(INPUT))
def test_input_pipeline_matches_reference(name):
    b, r = (bf := load_benchmark(name)).benchmark, bf.recipe
    classes, frames, mean, std, freqm, timem, mixup, metric, multi = INPUT[name]
    assert (b.num_classes, b.target_frames, b.metric, b.multi_label) == (classes, frames, metric, multi)
    preset = get_preset(b.preset)
    assert (preset.mean, preset.std) == (mean, std) and preset.target_frames == frames
    assert (r.freqm, r.timem, r.mixup) == (freqm, timem, mixup)
    assert b.sample_rate == (24000 if name == "epic_sounds" else 16000)
    assert (r.noise, r.roll) == ((True, 10) if name == "speechcommands" else (False, 0))
    n_masks = 2 if name == "epic_sounds" else 1
    assert (r.freq_masks, r.time_masks, r.time_warp) == (n_masks, n_masks, 5 if name == "epic_sounds" else 0)


@pytest.mark.parametrize("name", sorted(RECIPES))
def test_recipes_match_reference(name):
    r = load_benchmark(name).recipe
    epochs, lr, batch, start, every, factor, warm_steps, warm_epochs, loss, sampling = RECIPES[name]
    assert r.official and r.optimizer == "adam" and tuple(r.betas) == (0.95, 0.999) and r.weight_decay == 5e-7
    assert (r.epochs, r.lr, r.batch_size, r.warmup_steps, r.warmup_epochs) == (epochs, lr, batch, warm_steps,
                                                                                warm_epochs)
    assert (r.loss, r.sampling, r.mixup_alpha) == (loss, sampling, 10.0)
    if name == "epic_sounds":
        assert r.schedule == "multistep" and list(r.milestones) == [10, 20]
        assert list(r.milestone_factors) == [0.05, 0.01]
    else:
        assert (r.schedule, r.decay_start, r.decay_every, r.decay_factor) == ("step", start, every, factor)


def test_esc_recipes_are_ours_and_k_fold():
    for name, classes in (("esc50", 50), ("esc10", 10)):
        bf = load_benchmark(name)
        assert not bf.recipe.official and "ours" in bf.recipe.notes
        assert bf.benchmark.folds == 5 and bf.benchmark.num_classes == classes
        assert bf.benchmark.splits == [f"fold{k}" for k in range(1, 6)] and 0 < bf.benchmark.valid_fraction < 1
        assert bf.benchmark.target_frames == 512 and bf.recipe.loss == "ce"


@pytest.mark.parametrize("name", ["vggsound", "speechcommands", "audioset20k"])
def test_step_schedule_matches_the_official_epoch_loop(name):
    """The official loop: MultiStepLR(range(start, 1000, every), gamma) stepped after every epoch, and a linear
    warm-up over the first 1000 steps. After warm-up every step must get the same lr from our engine."""
    r = load_benchmark(name).recipe
    spe = 100
    cfg = EngineConfig(**engine_settings(r, spe), min_lr=0.0)
    opt = torch.optim.Adam([torch.nn.Parameter(torch.zeros(1))], lr=r.lr)
    sched = torch.optim.lr_scheduler.MultiStepLR(opt, list(range(r.decay_start, 1000, r.decay_every)),
                                                 gamma=r.decay_factor)
    checked = set()
    for epoch in range(r.epochs):
        official = opt.param_groups[0]["lr"]
        for s in range(epoch * spe, (epoch + 1) * spe):
            if s >= cfg.warmup_steps:
                assert lr_at(s, cfg) == pytest.approx(official, rel=1e-9), (epoch, s)
                checked.add(official)
        opt.step()
        sched.step()
    assert len(checked) >= 3                                        # several decay levels were compared
    assert cfg.max_steps == r.epochs * spe and cfg.clip_grad is None and cfg.optimizer == "adam"


def test_epic_schedule_and_warmup_epochs():
    cfg = EngineConfig(**engine_settings(load_benchmark("epic_sounds").recipe, 10))
    assert cfg.warmup_steps == 20
    assert [lr_at(s, cfg) / 1e-5 for s in (0, 19, 99, 100, 199, 200, 299)] == pytest.approx(
        [0.05, 1.0, 1.0, 0.05, 0.05, 0.01, 0.01])


def test_overrides_and_errors(tmp_path):
    assert load_benchmark("esc10", ["recipe.lr=3e-4", "recipe.epochs=2"]).recipe.lr == 3e-4
    with pytest.raises(ConfigError, match="recipe.lrr"):
        load_benchmark("esc10", ["recipe.lrr=1"])
    with pytest.raises(ConfigError, match="recipe.loss must be one of"):
        load_benchmark("esc10", ["recipe.loss=focal"])
    with pytest.raises(ConfigError, match="multi-label benchmark needs recipe.loss=bce"):
        load_benchmark("audioset", ["recipe.loss=ce"])
    with pytest.raises(KeyError, match="unknown feature preset"):
        load_benchmark("esc10", ["benchmark.preset=esc"])
    with pytest.raises(KeyError, match="unknown benchmark 'esc100'"):
        load_benchmark("esc100")
    own = tmp_path / "task.yaml"
    own.write_text("benchmark: {name: task, num_classes: 3, target_frames: 128, splits: [train, valid, test]}\n"
                   "recipe: {epochs: 2, lr: 1.0e-3, batch_size: 4, official: false}\n")
    bf = load_benchmark(str(own))
    assert bf.benchmark.name == "task" and bf.recipe.loss == "bce" and bf.recipe.schedule == "step"
    own.write_text("benchmark: {name: task, num_classes: 3, splits: [train, test]}\n"
                   "recipe: {epochs: 2, lr: 1.0e-3, batch_size: 4}\n")
    with pytest.raises(ConfigError, match="valid_fraction"):
        load_benchmark(str(own))
    own.write_text("benchmark: {name: task}\nrecipe: {epochs: 2, lr: 1.0e-3, batch_size: 4}\n")
    with pytest.raises(ConfigError, match="num_classes"):
        load_benchmark(str(own))
