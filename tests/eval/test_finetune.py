"""Supervised fine-tuning: metrics, augmentations, sampling, data checks, the HDF5 loader, and a tiny end-to-end run
on a generated labelled task that selects on validation, writes the test score of the selected epoch as its record,
and resumes after an interruption."""
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import eval.finetune as ft
from aum.checkpoint import load_checkpoint
from aum.data.datasets import MAX_BAD_LOADS, UnusableDataError
from aum.audio.synth import write_clips
from eval.augment import mix_targets, mix_waves, noise_and_roll, spec_augment, time_warp
from eval.ft_data import (FinetuneDataset, balanced_weights, carve_validation, check_entries, make_splits,
                          read_hdf5_segment)
from eval.metrics import accuracy, mean_average_precision
from eval.prepare import PrepareError, prepare
from eval.records import ResultRecord, read_records, write_record
from eval.registry import load_benchmark

TASK = """benchmark: {name: synth7, num_classes: 7, target_frames: 64, preset: speechcommands,
            splits: [train, valid, test]}
recipe: {official: false, epochs: 3, lr: 2.0e-3, batch_size: 8, loss: ce, freqm: 8, timem: 8, mixup: 0.3,
         warmup_steps: 2, decay_start: 1, decay_every: 1, decay_factor: 0.5}
"""
FAST = ["model.preset=tiny", "model.depth=2", "run.device=cpu", "run.log_every=2"]


pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    root = tmp_path_factory.mktemp("task")
    write_clips(root / "clips", 56, duration=0.7, labelled=True)
    prepare("custom", root / "clips", root / "prep")
    (root / "task.yaml").write_text(TASK)
    return root


# ------------------------------------------------------------------------------------------------ metrics

def test_map_against_a_hand_computed_case():
    y = np.array([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 0]])
    s = np.array([[0.9, 0.2, 0.5], [0.8, 0.3, 0.1], [0.7, 0.9, 0.3], [0.1, 0.1, 0.2]])
    # class 0: hits at ranks 1 and 3 -> (1/1 + 2/3) / 2; class 1: hit at rank 2 -> 1/2; class 2 has no positive
    assert mean_average_precision(y, s) == pytest.approx(((1 + 2 / 3) / 2 + 0.5) / 2)
    assert accuracy(np.array([0, 1, 0]), s[:3]) == pytest.approx(1 / 3)
    assert accuracy(np.eye(3)[[0, 1, 1]], s[:3]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="mAP is undefined"):       # no class has a positive (was NaN)
        mean_average_precision(np.zeros((2, 2)), np.ones((2, 2)))


# ------------------------------------------------------------------------------------------------ augmentations

def test_mixup_specaugment_warp_and_noise_shapes():
    rng = np.random.default_rng(0)
    a, b = torch.randn(1000) + 3.0, torch.randn(600)
    m = mix_waves(a, b, 0.7)
    assert m.shape == a.shape and abs(float(m.mean())) < 1e-5
    expected = 0.7 * (a - a.mean()) + 0.3 * torch.nn.functional.pad(b - b.mean(), (0, 400))
    assert torch.allclose(m, expected - expected.mean(), atol=1e-6)          # second clip zero-padded, DC removed
    t = mix_targets(torch.tensor([1.0, 0, 0]), torch.tensor([0, 1.0, 1.0]), 0.7)
    assert torch.allclose(t, torch.tensor([0.7, 0.3, 0.3]))
    x = torch.randn(100, 128) + 5
    y = spec_augment(x, rng, freqm=48, timem=40, mask_value=0.0)
    assert y.shape == x.shape
    zero_cols, zero_rows = (y == 0).all(0), (y == 0).all(1)
    assert zero_cols.sum() < 48 and zero_rows.sum() < 40
    for mask in (zero_cols, zero_rows):                     # one contiguous stripe each
        idx = mask.nonzero().flatten()
        assert len(idx) == 0 or idx[-1] - idx[0] + 1 == len(idx)
    assert torch.equal(spec_augment(x, np.random.default_rng(1), 48, 40), spec_augment(x, np.random.default_rng(1), 48, 40))
    assert time_warp(x, rng, 5).shape == x.shape and torch.equal(time_warp(x, rng, 0), x)
    z = noise_and_roll(x, rng, 10)
    assert z.shape == x.shape and (z - torch.roll(x, 0, 0)).abs().max() < 20


def test_training_items_mix_labels_and_are_deterministic(task):
    bf = load_benchmark(str(task / "task.yaml"), ["recipe.mixup=1.0"])
    entries = [json.loads(ln) for ln in (task / "prep" / "manifest.jsonl").read_text().splitlines()]
    classes = (task / "prep" / "classes.txt").read_text().split()
    ds = FinetuneDataset(entries, classes, bf.benchmark, bf.recipe, seed=3)
    item = ds[(0, 5)]
    assert item["fbank"].shape == (64, 128) and item["target"].shape == (7,)
    assert item["target"].sum() == pytest.approx(1.0)
    nz = sorted(item["target"][item["target"] > 0].tolist())
    assert len(nz) == 2 and 0 < nz[0] < 0.5 < nz[1] < 1 or nz == [1.0]    # lambda ~ Beta(10, 10)
    assert torch.equal(ds[(0, 5)]["fbank"], item["fbank"]) and not torch.equal(ds[(1, 5)]["fbank"], item["fbank"])
    plain = FinetuneDataset(entries, classes, bf.benchmark, None)[5]             # evaluation: no augmentation
    assert plain["target"].tolist() == ds.target(5).tolist() and torch.equal(plain["fbank"], FinetuneDataset(
        entries, classes, bf.benchmark, None)[5]["fbank"])


def test_balanced_sampling_weights_and_draws(task):
    w = balanced_weights([[0], [0], [0], [1], [0, 1]], 2)
    assert w[0] == pytest.approx(1000 / 4.01) and w[4] == pytest.approx(1000 / 4.01 + 1000 / 2.01)
    bf = load_benchmark(str(task / "task.yaml"))
    entries = [json.loads(ln) for ln in (task / "prep" / "manifest.jsonl").read_text().splitlines()]
    classes = (task / "prep" / "classes.txt").read_text().split()
    ds = FinetuneDataset(entries, classes, bf.benchmark, bf.recipe, seed=0)
    ds.weights = np.where(np.arange(len(entries)) == 3, 1000.0, 1.0)
    drawn = [ds._position(0, i) for i in range(len(entries))]
    assert drawn.count(3) > len(entries) // 2
    assert [ds._position(0, i) for i in range(len(entries))] == drawn != [ds._position(1, i) for i in range(56)]


# ------------------------------------------------------------------------------------------------ data checks

def test_checks_and_splits_fail_before_training(task, tmp_path):
    bf = load_benchmark(str(task / "task.yaml"))
    entries = [json.loads(ln) for ln in (task / "prep" / "manifest.jsonl").read_text().splitlines()]
    classes = (task / "prep" / "classes.txt").read_text().split()
    check_entries(entries, classes, bf.benchmark)
    with pytest.raises(PrepareError, match="class list has 6 classes, the benchmark 7"):
        check_entries(entries, classes[:6], bf.benchmark)
    bad = [dict(e, labels=["dog"]) if i < 2 else e for i, e in enumerate(entries)]
    with pytest.raises(PrepareError, match=r"2 label\(s\) are not in the class list \(1 distinct, e.g. 'dog'\)"):
        check_entries(bad, classes, bf.benchmark)
    gone = [dict(e, path=str(tmp_path / f"x{i}.wav")) if i < 3 else e for i, e in enumerate(entries)]
    with pytest.raises(PrepareError, match="3 of 56 audio files are missing"):
        check_entries(gone, classes, bf.benchmark)
    with pytest.raises(PrepareError, match=r"split\(s\) \['valid'\] are empty"):
        make_splits([e for e in entries if e["split"] != "valid"], bf.benchmark)
    sp = make_splits(entries, bf.benchmark)
    assert sum(map(len, sp.values())) == 56 and all(sp.values())


def test_check_without_a_class_list_bounds_the_label_count(task, tmp_path):
    from eval.ft_data import manifest_classes
    esc = load_benchmark("esc10").benchmark
    entries = [{"path": f"/a/{i}.wav", "labels": [f"c{i % 10}"]} for i in range(40)]
    check_entries(entries, None, esc, check_files=False)            # 10 labels: fine without a class list
    stray = entries + [{"path": "/a/x.wav", "labels": ["dgo"]}]
    with pytest.raises(PrepareError, match=r"esc10: the manifest has 11 distinct labels, the benchmark 10 classes "
                                           r"\(rarest: 'dgo' x1, 'c0' x4, 'c1' x4\)"):
        check_entries(stray, None, esc, check_files=False)
    assert manifest_classes(task / "prep" / "manifest.jsonl") == (task / "prep" / "classes.txt").read_text().split()
    assert manifest_classes(task / "prep") is None and manifest_classes(tmp_path / "m.jsonl") is None


def test_training_items_of_only_missing_files_stop_after_max_bad_loads(task, tmp_path):
    bf = load_benchmark(str(task / "task.yaml"))
    entries = [json.loads(ln) for ln in (task / "prep" / "manifest.jsonl").read_text().splitlines()]
    classes = (task / "prep" / "classes.txt").read_text().split()
    gone = [dict(e, path=str(tmp_path / f"x{i}.wav")) for i, e in enumerate(entries)]
    ds = FinetuneDataset(gone, classes, bf.benchmark, bf.recipe, bad_files_path=tmp_path / "bad_files.jsonl")
    assert all(ds[(0, i)] is None for i in range(MAX_BAD_LOADS))
    with pytest.raises(UnusableDataError, match=rf"first {MAX_BAD_LOADS} different clips tried \(of 56\)"):
        ds[(0, MAX_BAD_LOADS)]
    one_good = FinetuneDataset(gone[:10] + entries[10:11] + gone[11:], classes, bf.benchmark, None)
    assert sum(one_good[(epoch, i)] is not None for epoch in range(2) for i in range(56)) == 2


def test_carved_validation_keeps_groups_and_classes():
    entries = [{"path": f"/a/{i}.wav", "labels": [f"c{i % 4}"], "group": f"g{i // 2}"} for i in range(80)]
    train, valid = carve_validation(entries, 0.125, "group", stratify=True, salt="x")
    assert len(train) + len(valid) == 80 and {e["labels"][0] for e in valid} == {"c0", "c1", "c2", "c3"}
    assert not {e["group"] for e in train} & {e["group"] for e in valid}
    assert carve_validation(entries[::-1], 0.125, "group", True, "x")[1] == valid[::-1]   # order-independent
    esc = load_benchmark("esc10").benchmark
    folds = [dict(e, split=f"fold{i % 5 + 1}", fold=i % 5 + 1) for i, e in enumerate(entries)]
    sp = make_splits(folds, esc, fold=2)
    assert {e["fold"] for e in sp["test"]} == {2} and 2 not in {e["fold"] for e in sp["train"] + sp["valid"]}


def test_hdf5_segments(tmp_path, monkeypatch):
    h5py = pytest.importorskip("h5py")
    data = (np.sin(np.arange(48000) / 7) * 20000).astype(np.int16)
    with h5py.File(tmp_path / "a.hdf5", "w") as f:
        f.create_dataset("P01_01", data=data)
    seg = read_hdf5_segment(tmp_path / "a.hdf5", "P01_01", 100, 2500)
    assert seg.shape == (2400,) and torch.allclose(seg, torch.from_numpy(data[100:2500] / 32768.0).float())
    bench = load_benchmark("epic_sounds").benchmark
    entry = {"path": str(tmp_path / "a.hdf5"), "hdf5_key": "P01_01", "labels": ["water"], "start_sample": 0,
             "stop_sample": 24000, "start": 0.0, "stop": 1.0}
    item = FinetuneDataset([entry], ["water"] + [f"c{i}" for i in range(43)], bench)[0]
    assert item["fbank"].shape == (1024, 128) and torch.equal(item["fbank"][-1], item["fbank"][300])  # edge-padded
    monkeypatch.setitem(sys.modules, "h5py", None)
    with pytest.raises(ImportError, match="pip install h5py"):
        read_hdf5_segment(tmp_path / "a.hdf5", "P01_01", 0, 10)


# ------------------------------------------------------------------------------------------------ end to end

def _evals(out):
    return [json.loads(ln) for ln in (Path(out) / "metrics.jsonl").read_text().splitlines() if '"eval"' in ln]


@pytest.mark.slow
def test_finetune_end_to_end_selects_on_valid_and_resumes(task, tmp_path, monkeypatch):
    ref = ft.run([str(task / "task.yaml"), str(task / "prep" / "manifest.jsonl"), "--init", "scratch", *FAST,
                   f"run.out={tmp_path / 'ref'}"])[0]
    evals = _evals(tmp_path / "ref")
    assert [e["step"] for e in evals] == [5, 10, 15]                    # 45 train clips / 8 = 5 steps per epoch
    scores = [e["valid_accuracy"] for e in evals]
    assert ref.extra["best_step"] == evals[int(np.argmax(scores))]["step"]
    assert (ref.mode, ref.init, ref.model, ref.fold, ref.metric) == ("finetune", "scratch", "tiny-d2", None, "accuracy")
    # the record holds the TEST score of the selected weights
    model = load_checkpoint(tmp_path / "ref" / "best.safetensors")
    cfg = ft.load_finetune_config(str(task / "task.yaml"), FAST)
    entries = [json.loads(ln) for ln in (task / "prep" / "manifest.jsonl").read_text().splitlines()]
    classes = (task / "prep" / "classes.txt").read_text().split()
    test = FinetuneDataset(make_splits(entries, cfg.benchmark)["test"], classes, cfg.benchmark)
    s, t, _ = ft.predict(model, test, 16)
    assert ref.value == pytest.approx(accuracy(t, s))
    assert read_records(tmp_path / "ref" / "records")[0].value == ref.value

    calls = {"n": 0}
    real_loss = ft.loss_fn

    def dying_loss(kind, logits, target):
        calls["n"] += 1
        if calls["n"] == 8:                                          # step 8: after the epoch-1 checkpoint
            raise KeyboardInterrupt
        return real_loss(kind, logits, target)

    args = [str(task / "task.yaml"), str(task / "prep" / "manifest.jsonl"), "--init", "scratch", *FAST,
            f"run.out={tmp_path / 'x'}"]
    monkeypatch.setattr(ft, "loss_fn", dying_loss)
    with pytest.raises(KeyboardInterrupt):
        ft.run(args)
    assert (tmp_path / "x" / "checkpoints" / "step_00000005.pt").is_file()
    monkeypatch.setattr(ft, "loss_fn", real_loss)
    again = ft.run(args)[0]
    assert again.extra["resumed"] and again.extra["best_step"] == ref.extra["best_step"]
    assert again.value == pytest.approx(ref.value)
    assert [e["valid_accuracy"] for e in _evals(tmp_path / "x")] == pytest.approx(scores, abs=1e-6)
    assert [e["valid_loss"] for e in _evals(tmp_path / "x")] == pytest.approx([e["valid_loss"] for e in evals],
                                                                                rel=1e-5)   # same trajectory


def test_finetune_from_a_checkpoint_on_one_fold(task, tmp_path):
    rows = [ln.split(",") for ln in (task / "clips" / "meta.csv").read_text().splitlines()[1:]]
    root = tmp_path / "folds"
    root.mkdir()
    (root / "meta.csv").write_text("filename,label,fold\n" + "".join(
        f"{task / 'clips' / r[0]},{r[1]},{i % 5 + 1}\n" for i, r in enumerate(rows)))
    prepare("custom", root, tmp_path / "prep", audio="/")
    (tmp_path / "k.yaml").write_text(TASK.replace("splits: [train, valid, test]", "splits: [fold1, fold2, fold3, "
                                     "fold4, fold5], folds: 5, valid_fraction: 0.2, valid_stratify: true"))
    encoder = tmp_path / "enc.safetensors"
    from aum.checkpoint import save_checkpoint
    from aum.models import create_model
    save_checkpoint(create_model("tiny", depth=2, num_classes=3, target_frames=128), encoder,
                    feature_preset="voxceleb", feature_source="pretrain:runs/vox")
    rec = ft.run([str(tmp_path / "k.yaml"), str(tmp_path / "prep" / "manifest.jsonl"), "--init", "ssl", str(encoder),
                   *FAST, "run.fold=4", "run.max_steps=3", f"run.out={tmp_path / 'o'}", "run.model_name=ssast-tiny"])[0]
    assert rec.fold == 4 and rec.init == "ssl" and rec.extra["n_test"] == 11 and rec.model == "ssast-tiny"
    assert any("position embedding resized" in n for n in rec.extra["load_notes"])
    assert any("head of 3 classes dropped" in n for n in rec.extra["load_notes"])
    assert "init checkpoint trained with feature preset 'voxceleb'; fine-tuning feeds 'speechcommands' " \
        "(benchmark.preset)" in rec.extra["load_notes"]
    best = load_checkpoint(tmp_path / "o" / "fold4" / "best.safetensors")     # says how it was fine-tuned
    assert best.feature_preset.name == "speechcommands" and best.feature_preset_source == "finetune:synth7"
    assert best.feature_preset.target_frames == 64
    with pytest.raises(SystemExit, match="needs a checkpoint"):
        ft.build_parser().parse(["esc10", "m.jsonl", "--init", "aum"])


def test_an_unknown_model_preset_over_a_checkpoint_names_the_valid_presets(tmp_path):
    from aum.checkpoint import save_checkpoint
    from aum.models import create_model
    with pytest.raises(ValueError, match=r"model\.preset.*base, small, tiny.*'huge'"):   # refused with the config
        ft.load_finetune_config("speechcommands", ["model.preset=huge"])
    path = save_checkpoint(create_model("tiny", embed_dim=32, depth=1), tmp_path / "ssl.safetensors")
    cfg = ft.load_finetune_config("speechcommands")
    cfg.model.preset = "huge"                                    # a config built without load_finetune_config
    with pytest.raises(KeyError) as err:
        ft.build_model(cfg, "ssl", str(path))
    assert str(err.value) == "unknown AuM preset 'huge'; valid presets: base, small, tiny"


def test_build_model_from_vision_mamba_weights(tmp_path, vim_state_dict):
    sd = vim_state_dict
    torch.save({"model": sd}, tmp_path / "vim_s_midclstok.pth")
    model, report = ft.build_model(ft.load_finetune_config("speechcommands"), "imagenet",
                                   str(tmp_path / "vim_s_midclstok.pth"))
    c = model.config
    assert (c.mixer, c.embed_dim, c.depth, c.cls_position, c.num_classes) == ("v2", 32, 2, "middle", 35)
    assert model.pos_embed.grid == (8, 8) and report.kind == "vim" and ft.model_name(c.to_dict()) == "D32-d2"
    assert torch.equal(model.layers[1].mixer.A_log, sd["layers.1.mixer.A_log"])
    with pytest.raises(ValueError, match="run.fold applies to k-fold benchmarks"):
        ft.finetune(ft.load_finetune_config("speechcommands", ["run.fold=2"]), tmp_path / "m.jsonl")


def test_main_exit_statuses_and_a_run_config_kept_until_the_start_is_checked(task, tmp_path, monkeypatch, capsys):
    base = [str(task / "task.yaml"), str(task / "prep" / "manifest.jsonl"), "--init", "scratch", *FAST,
            "run.max_steps=2"]
    run_dir = tmp_path / "r"
    assert ft.main([*base, f"run.out={run_dir}"]) == 0
    before = (run_dir / "config.yaml").read_text()
    capsys.readouterr()
    assert ft.main([*base, f"run.out={run_dir}", "recipe.lr=0.5"]) == 2       # checkpoints of another config
    err = capsys.readouterr().err
    assert "has checkpoints of a different config" in err and "recipe.lr: 0.002 in the run, 0.5 now" in err
    assert "Traceback" not in err and (run_dir / "config.yaml").read_text() == before
    fresh = tmp_path / "fresh"                                                  # checked before anything is written
    assert ft.main([*base, f"run.out={fresh}", "recipe.batch_size=1000"]) == 2
    assert "fewer than one batch" in capsys.readouterr().err and not (fresh / "config.yaml").exists()
    monkeypatch.setattr(ft, "run_one", lambda *a, **k: ("signal", None))        # as when SIGTERM / Ctrl-C stopped it
    assert ft.main([*base, f"run.out={run_dir}"]) == 3
    err = capsys.readouterr().err
    assert "fine-tuning synth7 stopped by a signal" in err and "run the same command again to resume" in err


def test_dass_fine_tunes_from_random_and_from_a_checkpoint_and_is_named_in_the_tables(task, tmp_path):
    from aum.checkpoint import save_checkpoint
    from aum.models import DASS, create_model
    import pandas as pd

    from eval.results import records_frame, summarise, wide_table
    base = [str(task / "task.yaml"), str(task / "prep" / "manifest.jsonl"), "run.device=cpu", "run.max_steps=2",
            "run.max_eval_clips=8"]
    rec = ft.run([base[0], base[1], "--random", "dass_tiny", *base[2:], f"run.out={tmp_path / 'random'}"])[0]
    assert rec.model == "dass_tiny" and rec.init == "scratch" and 0 <= rec.value <= 1
    best = load_checkpoint(rec.checkpoint)                          # our file rebuilds the fine-tuned DASS
    assert isinstance(best, DASS) and best.config.num_classes == 7 and best.feature_preset.name == "speechcommands"
    init = save_checkpoint(create_model("dass_tiny", num_classes=3), tmp_path / "dass3.safetensors")
    rec = ft.run([base[0], base[1], "--init", "aum", str(init), *base[2:], "run.max_steps=1",
                  f"run.out={tmp_path / 'init'}"])[0]
    assert rec.model == "dass_tiny" and rec.init == "official"
    assert any("head of 3 classes dropped: the model has 7 classes" in n for n in rec.extra["load_notes"])
    assert "init checkpoint trained with feature preset 'audioset'; fine-tuning feeds 'speechcommands' " \
        "(benchmark.preset)" in rec.extra["load_notes"]
    aum_rec = ResultRecord(benchmark="synth7", mode="finetune", init="scratch", model="tiny-d2", metric="accuracy",
                           value=0.5, seed=0, code_version="test")
    write_record(aum_rec, tmp_path / "random" / "records")
    frame = pd.concat([records_frame(tmp_path / run / "records") for run in ("random", "init")])
    summary = summarise(frame)                                       # aum-results: a row per model, no special case
    assert set(summary["model"]) == {"dass_tiny", "tiny-d2"}
    table = wide_table(summary, "finetune")
    assert {"synth7 (dass_tiny)", "synth7 (tiny-d2)"} <= set(table.index)
    assert table.loc["synth7 (dass_tiny)", "official"] != "-" and table.loc["synth7 (dass_tiny)", "scratch"] != "-"


def test_dass_model_options_are_checked_with_the_config(tmp_path):
    cfg = ft.load_finetune_config("speechcommands", ["model.preset=dass_tiny"])
    model, _ = ft.build_model(cfg, "scratch", None)
    assert model.family == "dass" and model.config.num_classes == 35 and model.config.target_frames == 128
    with pytest.raises(ValueError, match=r"model\.depth is an AuM option; model\.preset 'dass_tiny' is a DASS"):
        ft.load_finetune_config("speechcommands", ["model.preset=dass_tiny", "model.depth=2"])
    from aum.checkpoint import save_checkpoint
    from aum.models import create_model
    path = save_checkpoint(create_model("dass_tiny"), tmp_path / "d.safetensors")
    for overrides, message in ((["model.preset=tiny"], r"model\.preset 'tiny' is of the 'aum' family, but the init "
                                                       r"checkpoint .*d\.safetensors holds a 'dass' encoder"),
                               (["model.mixer=v2"], r"model\.mixer is an AuM option; the encoder to fine-tune is "
                                                    r"'dass'")):
        with pytest.raises(ValueError, match=message):
            ft.build_model(ft.load_finetune_config("speechcommands", overrides), "ssl", str(path))
    with pytest.raises(SystemExit, match="--random dass_tiny sets model.preset"):
        ft.check_args(ft.build_parser().parse(["speechcommands", "m.jsonl", "--random", "dass_tiny",
                                               "model.preset=tiny"]))
