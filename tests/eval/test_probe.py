"""Linear probes: embedding cache (hits, keys), C chosen without the test fold, multi-label, ESC-10 end to end."""

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch

from aum.checkpoint import save_checkpoint
from aum.models import create_model
from eval import probe
from eval.embeddings import Encoder, cache_path, get_embeddings, weights_hash
from eval.linear import TorchLinearProbe, evaluate, fit_probe, make_probe, select_regularisation
from eval.records import read_records

SR = 16000
TINY = {"depth": 2}           # tiny width (D=192), 2 blocks: fast enough for unit tests
ESC10 = Path(__file__).resolve().parents[3] / "shared" / "data" / "esc10"


def _tones(freqs, seconds=0.7, seed=0):
    rng = np.random.default_rng(seed)
    t = np.arange(int(seconds * SR)) / SR
    wave = sum(np.sin(2 * np.pi * f * t + rng.uniform(0, 6.28)) for f in freqs) / max(1, len(freqs))
    return (0.5 * wave + 0.05 * rng.standard_normal(t.size)).astype(np.float32)


def _dataset(folder: Path, n_per_class=6, multilabel=False, folds=3, seconds=0.7):
    """Tone clips (class = tone frequency; multi-label: a set of tones) and a JSON-lines manifest."""
    freqs = {"low": 300.0, "mid": 1200.0, "high": 4000.0}
    rows, rng = [], np.random.default_rng(1)
    (folder / "audio").mkdir(parents=True, exist_ok=True)
    for i in range(n_per_class * len(freqs)):
        if multilabel:
            labels = [c for c in freqs if rng.random() < 0.5] or ["mid"]
        else:
            labels = [list(freqs)[i % len(freqs)]]
        path = folder / "audio" / f"clip{i:03d}.wav"
        sf.write(path, _tones([freqs[c] for c in labels], seconds, seed=i), SR)
        split = ("train", "train", "valid", "test")[i % 4]
        rows.append({"path": f"audio/{path.name}", "labels": labels, "fold": i % folds + 1, "split": split})
    manifest = folder / "manifest.jsonl"
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return manifest, rows


def test_cache_hit_does_not_reencode(tmp_path):
    manifest, _ = _dataset(tmp_path / "data", n_per_class=3, seconds=0.35)
    entries = probe.load_entries(manifest, "toy")
    enc = Encoder.random("tiny", seed=0, **TINY)
    kw = dict(cache_dir=tmp_path / "cache", preset="audioset", target_frames=32, batch_size=4)
    first, hit1 = get_embeddings(enc, "toy", "all", entries, **kw)
    calls = enc.calls
    assert not hit1 and calls == 3 and first.mean.shape == (9, 192) and first.cls.shape == (9, 192)
    second, hit2 = get_embeddings(enc, "toy", "all", entries, **kw)
    assert hit2 and enc.calls == calls
    np.testing.assert_array_equal(first.features("both"), second.features("both"))
    assert cache_path(kw["cache_dir"], enc.key, "toy", "all").is_file()
    # a checkpoint on a cache hit is never even loaded
    ckpt = save_checkpoint(enc.model, tmp_path / "enc.safetensors")
    from_file = Encoder.from_checkpoint(ckpt)
    get_embeddings(from_file, "toy", "all", entries, **kw)
    again = Encoder.from_checkpoint(ckpt)
    _, hit = get_embeddings(again, "toy", "all", entries, **kw)
    assert hit and again.calls == 0 and again.model_ is None
    # other entries or another layer: not the same cache
    _, hit = get_embeddings(enc, "toy", "all", entries[:-1], **kw)
    assert not hit
    _, hit = get_embeddings(enc, "toy", "all", entries, layer=1, **kw)
    assert not hit


def test_cache_key_follows_the_weights(tmp_path):
    a, b = Encoder.random("tiny", seed=0, **TINY), Encoder.random("tiny", seed=0, **TINY)
    assert a.key == b.key and a.key != Encoder.random("tiny", seed=1, **TINY).key
    model = create_model("tiny", **TINY)
    path = tmp_path / "m.safetensors"
    save_checkpoint(model, path)
    key1, h1 = Encoder.from_checkpoint(path).key, weights_hash(model)
    with torch.no_grad():
        model.norm_f.weight[0] += 1e-3
    save_checkpoint(model, path)
    assert Encoder.from_checkpoint(path).key != key1 and weights_hash(model) != h1
    assert Encoder.from_checkpoint(path, depth=1).key != Encoder.from_checkpoint(path).key


def test_cache_follows_replaced_and_restored_files(tmp_path):
    manifest, _ = _dataset(tmp_path / "data", n_per_class=2, seconds=0.35)
    entries = probe.load_entries(manifest, "toy")
    enc = Encoder.random("tiny", seed=0, **TINY)
    kw = dict(cache_dir=tmp_path / "cache", preset="audioset", target_frames=32, batch_size=8)
    missing = Path(entries[2]["path"])
    kept = missing.read_bytes()
    missing.unlink()
    first, hit = get_embeddings(enc, "toy", "all", entries, **kw)
    assert not hit and first.index.tolist() == [0, 1, 3, 4, 5]            # the missing clip is skipped
    missing.write_bytes(kept)                                               # restored: embedded on the next run
    second, hit = get_embeddings(enc, "toy", "all", entries, **kw)
    assert not hit and second.index.tolist() == [0, 1, 2, 3, 4, 5]
    np.testing.assert_allclose(second.mean[[0, 1, 3, 4, 5]], first.mean, rtol=1e-5, atol=1e-6)
    _, hit = get_embeddings(enc, "toy", "all", entries, **kw)
    assert hit
    replaced = Path(entries[4]["path"])                                     # other audio, same path and mtime
    stat = replaced.stat()
    sf.write(replaced, _tones([2500.0], 0.5, seed=99), SR)
    os.utime(replaced, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    third, hit = get_embeddings(enc, "toy", "all", entries, **kw)
    assert not hit and not np.allclose(third.mean[4], second.mean[4], atol=1e-4)
    np.testing.assert_allclose(third.mean[:4], second.mean[:4], rtol=1e-5, atol=1e-6)
    same_size = Path(entries[5]["path"])                                    # same size, only the mtime moves
    os.utime(same_size, ns=(stat.st_atime_ns, same_size.stat().st_mtime_ns + 10**9))
    _, hit = get_embeddings(enc, "toy", "all", entries, **kw)
    assert not hit


def test_probe_rejects_labels_outside_the_benchmark_like_finetune(tmp_path, capsys):
    from eval.ft_data import check_entries, load_manifest
    from eval.prepare import PrepareError
    manifest, rows = _dataset(tmp_path / "data", n_per_class=2, seconds=0.35)
    (manifest.parent / "classes.txt").write_text("high\nlow\nmid\n")
    rows[1]["labels"] = ["extra"]
    manifest.write_text("".join(json.dumps(r) + "\n" for r in rows))
    message = r"1 label\(s\) are not in the class list \(1 distinct, e.g. 'extra'\)"
    entries, classes = load_manifest(manifest)                              # what eval.finetune checks ...
    with pytest.raises(PrepareError, match=message):
        check_entries(entries, classes, probe.benchmark_info("toy", num_classes=3))
    info = probe.benchmark_info("toy", folds=3)
    with pytest.raises(PrepareError, match=message):                        # ... and eval.probe, the same way
        probe.check_labels(info, probe.load_entries(manifest, "toy"), manifest)
    base = ["--random", "tiny", "--depth", "2", "--frames", "32", "--out", str(tmp_path / "out"),
            "--cache", str(tmp_path / "cache"), "--folds", "3"]
    assert probe.main(["toy", str(manifest)] + base) == 2
    assert "toy: 1 label(s) are not in the class list" in capsys.readouterr().err
    assert not (tmp_path / "cache").exists()                                # rejected before any extraction
    pack = tmp_path / "pack"                                                # ESC-10 pack with an 11th label
    pack.mkdir()
    (pack / "meta.csv").write_text("filename,label,fold\n" + "".join(
        f"audio/{i}.flac,{'dgo' if i == 0 else f'c{i % 10}'},{i % 5 + 1}\n" for i in range(41)))
    assert probe.main(["esc10", str(pack)] + base) == 2
    assert "esc10: the manifest has 11 distinct labels, the benchmark 10 classes (rarest: 'dgo' x1" in \
        capsys.readouterr().err


def test_c_is_chosen_without_the_test_fold(monkeypatch):
    rng = np.random.default_rng(0)
    n, folds = 60, np.arange(60) % 5 + 1
    y = rng.integers(0, 3, n)
    X = np.column_stack([np.arange(n), rng.standard_normal((n, 4)) + y[:, None]])   # column 0: the row id
    entries = [{"path": f"x{i}", "fold": int(folds[i])} for i in range(n)]
    seen, scored = [], []
    real_select, real_eval = probe.select_regularisation, probe.evaluate
    monkeypatch.setattr(probe, "select_regularisation",
                        lambda X, *a, **k: seen.append(set(X[:, 0].astype(int))) or real_select(X, *a, **k))
    monkeypatch.setattr(probe, "evaluate",
                        lambda p, X, *a, **k: scored.append(set(X[:, 0].astype(int))) or real_eval(p, X, *a, **k))
    info = probe.ProbeBenchmark("toy", folds=5)
    results = probe.probe_scores(X, y, info, entries, np.arange(n), grid=(0.01, 1.0))
    assert [r["fold"] for r in results] == [1, 2, 3, 4, 5] and len(seen) == 5
    for k, rows_seen, rows_scored in zip(range(1, 6), seen, scored):
        test_rows = set(np.flatnonzero(folds == k))
        assert rows_seen.isdisjoint(test_rows) and rows_seen | test_rows == set(range(n))
        assert rows_scored == test_rows
    assert all(r["value"] > 0.6 for r in results)


def test_inner_selection_uses_leave_one_training_fold_out():
    from eval.linear import inner_splits
    groups = np.array([1, 1, 2, 2, 4, 4, 4])
    splits = inner_splits(groups=groups)
    assert len(splits) == 3
    for fit, score in splits:
        assert len(set(groups[score])) == 1 and set(groups[fit]).isdisjoint(groups[score])


def _multilabel_problem(n=300, d=16, k=4, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    Y = (X @ rng.standard_normal((d, k)) > 0.8).astype(int)
    return X, Y


@pytest.mark.parametrize("classifier", ["sklearn", "torch"])
def test_multilabel_probe(classifier):
    X, Y = _multilabel_problem()
    tr, va, te = slice(0, 150), slice(150, 200), slice(200, 300)
    C, curve = select_regularisation(X[:200], Y[:200], [(np.arange(150), np.arange(150, 200))], (0.01, 1.0),
                                     multilabel=True, classifier=classifier)
    fitted = fit_probe(X[:200], Y[:200], C, True, classifier)
    mAP = evaluate(fitted, X[te], Y[te], multilabel=True)
    assert set(curve) == {0.01, 1.0} and mAP > 0.85, (mAP, Y[te].mean(0))
    assert evaluate(fit_probe(X[tr], Y[tr], C, True, classifier), X[va], Y[va], True) > 0.8


def test_torch_probe_matches_sklearn_objective():
    X, Y = _multilabel_problem(n=200, d=6, k=3)
    X = (X - X.mean(0)) / X.std(0)
    ours = TorchLinearProbe(C=0.5).fit(X, Y)
    ref = make_probe(0.5, True).fit(X, Y)[-1]
    ref_logits = np.column_stack([e.decision_function(X) for e in ref.estimators_])
    np.testing.assert_allclose(ours.decision_function(X), ref_logits, rtol=1e-3, atol=2e-3)


def test_cli_multilabel_end_to_end(tmp_path, capsys):
    manifest, rows = _dataset(tmp_path / "data", n_per_class=8, multilabel=True, seconds=0.35)
    out = tmp_path / "out"
    argv = ["audioset20k", str(manifest), "--random", "tiny", "--depth", "2", "--frames", "32",
            "--out", str(out), "--cache", str(tmp_path / "cache"), "--c-grid", "0.1,1", "--embedding", "both"]
    assert probe.main(argv) == 0
    recs = read_records(out)
    assert len(recs) == 1 and recs[0].metric == "mAP" and recs[0].fold is None and recs[0].mode == "probe"
    assert recs[0].init == "scratch" and recs[0].model == "tiny-d2" and 0 <= recs[0].value <= 1
    assert recs[0].extra["n_train"] == 18 and recs[0].extra["n_test"] == 6
    assert "mAP" in capsys.readouterr().out
    assert probe.main(argv + ["--classifier", "torch"]) == 0      # second run: every split from the cache
    assert all(read_records(out)[0].extra["cache_hit"].values())


def test_entries_from_esc_layouts(tmp_path):
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "meta.csv").write_text("filename,label,fold\naudio/a.flac,dog,1\naudio/b.flac,rain,2\n")
    e = probe.load_entries(tmp_path / "pack", "esc10")
    assert e[0] == {"path": str(tmp_path / "pack" / "audio" / "a.flac"), "labels": ["dog"], "fold": 1,
                    "split": "fold1"}
    (tmp_path / "esc50" / "meta").mkdir(parents=True)
    (tmp_path / "esc50" / "meta" / "esc50.csv").write_text(
        "filename,fold,target,category,esc10,src_file,take\n1-1-A-0.wav,1,0,dog,True,1,A\n"
        "1-2-A-1.wav,1,1,rooster,False,2,A\n")
    assert [x["labels"] for x in probe.load_entries(tmp_path / "esc50", "esc10")] == [["dog"]]
    assert len(probe.load_entries(tmp_path / "esc50", "esc50")) == 2
    assert probe.load_entries(tmp_path / "esc50", "esc50")[1]["path"].endswith("esc50/audio/1-2-A-1.wav")


def test_probe_and_finetune_report_the_same_map_with_an_absent_class(caplog):
    """One mAP: the probe's score (eval.linear.evaluate) and fine-tuning's (eval.finetune.evaluate_split) are the
    same function's numbers, with a class that has no positive among the test rows left out of the mean."""
    from sklearn.metrics import average_precision_score

    from eval.finetune import evaluate_split, load_finetune_config
    from eval.metrics import mean_average_precision
    rng = np.random.default_rng(0)
    X = rng.standard_normal((60, 5))
    Y = (X[:, :4] + 0.8 * rng.standard_normal((60, 4)) > 0.3).astype(np.int64)
    train, test = np.arange(40), np.arange(40, 60)
    Y[test, 3] = 0                                                     # class 3: no positive in the test rows
    assert Y[train].any(axis=0).all() and not Y[train].all(axis=0).any()   # every class trainable
    fitted = fit_probe(X[train], Y[train], 1.0, True, "torch")
    scaler, linear = fitted[0], fitted[-1]
    head = torch.nn.Linear(5, 4, dtype=torch.float64)                  # the fitted probe as a fine-tuned model
    with torch.no_grad():
        head.weight.copy_(torch.from_numpy(linear.coef_ / scaler.scale_))
        head.bias.copy_(torch.from_numpy(linear.intercept_ - (linear.coef_ / scaler.scale_) @ scaler.mean_))

    class Model(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.head = head

        def forward(self, fbank):
            return self.head(fbank)

    clips = [{"fbank": torch.from_numpy(X[i]), "target": torch.from_numpy(Y[i].astype(np.float32))} for i in test]
    cfg = load_finetune_config("audioset20k")
    with caplog.at_level("WARNING", logger="eval.metrics"):
        probe_map = evaluate(fitted, X[test], Y[test], True)
        finetune_map = evaluate_split(Model(), clips, cfg, 8, "test")["test_mAP"]
    present = [average_precision_score(Y[test, c], fitted.predict_proba(X[test])[:, c]) for c in range(3)]
    assert probe_map == pytest.approx(float(np.mean(present)), abs=1e-12)
    assert finetune_map == pytest.approx(probe_map, abs=1e-9)
    assert sum("1 of 4 classes have no positive" in r.getMessage() for r in caplog.records) == 2
    with pytest.raises(ValueError, match="mAP is undefined"):
        mean_average_precision(np.zeros((3, 4)), np.ones((3, 4)))


def test_benchmark_properties_from_the_registry():
    esc = probe.benchmark_info("esc10")
    assert (esc.folds, esc.multilabel, esc.metric, esc.target_frames) == (5, False, "accuracy", 512)
    assert probe.benchmark_info("audioset20k").multilabel and probe.benchmark_info("audioset20k").metric == "mAP"
    assert probe.benchmark_info("speechcommands", target_frames=64).target_frames == 64
    odd = probe.benchmark_info("my_task", multilabel=True, folds=None)
    assert odd.name == "my_task" and odd.multilabel and odd.folds is None
    assert probe._fold_of({"split": "fold3"}) == 3 and probe._fold_of({"fold": 2, "split": "fold2"}) == 2


def test_single_label_rejects_several_labels():
    with pytest.raises(ValueError, match="several labels"):
        probe.encode_labels([{"path": "a", "labels": ["x", "y"]}], multilabel=False)


# Real evidence: ESC-10 (400 real clips, 5 folds) from the raw pack with a randomly initialised tiny encoder.
# Depth 12 instead of the real 24 halves the extraction (the bulk of the time): about 95 s end to end on 2 shared
# CPU cores with one torch thread. Measured (mean embedding, 5 folds, accuracy): depth 12 seed 0 0.6425 +- 0.0577,
# seed 1 0.6625 +- 0.0442; depth 24 seed 0 0.6500 +- 0.0265. Chance is 0.10; the floor leaves ~14 points margin.
ESC10_DEPTH = 12
ESC10_FLOOR = 0.50


@pytest.mark.real_audio
@pytest.mark.slow
@pytest.mark.skipif(not (ESC10 / "meta.csv").is_file(), reason=f"ESC-10 pack not found at {ESC10}")
def test_esc10_random_tiny_probe_end_to_end(tmp_path, capsys):
    t0 = time.perf_counter()
    out = tmp_path / "out"
    argv = ["esc10", os.path.relpath(ESC10), "--random", "tiny", "--depth", str(ESC10_DEPTH), "--seed", "0",
            "--out", str(out), "--cache", str(tmp_path / "cache"), "--batch-size", "16", "--threads", "1"]
    threads = torch.get_num_threads()
    try:
        assert probe.main(argv) == 0
    finally:
        torch.set_num_threads(threads)
    text = capsys.readouterr().out
    recs = {r.fold: r for r in read_records(out)}
    assert sorted(k for k in recs if k != "mean") == [1, 2, 3, 4, 5]
    assert all(r.extra["n_test"] == 80 and r.extra["n_train"] == 320 for k, r in recs.items() if k != "mean")
    mean, std = recs["mean"].value, recs["mean"].extra["std"]
    with capsys.disabled():
        print(f"\nESC-10 5-fold probe, random tiny depth {ESC10_DEPTH}: accuracy {mean:.4f} +- {std:.4f}; "
              f"{recs[1].extra['clips_per_s_total']:.2f} clips/s; {time.perf_counter() - t0:.0f} s in all")
    assert "+-" in text and mean > ESC10_FLOOR
