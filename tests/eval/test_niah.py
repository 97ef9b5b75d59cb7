"""The needle-in-a-haystack evaluation (eval.niah): window pooling against a hand loop, the constant-haystack
shortcut, class-balanced needle sets, records per cell, resuming, clear errors, and a short end-to-end run of both
encoder families and both run modes on generated audio with its table and plot."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from aum.audio.synth import harmonic, write_clips
from aum.checkpoint import save_checkpoint
from aum.models.registry import create_model
from eval import niah
from eval.haystack import window_scores
from eval.prepare import prepare
from eval.prepare.common import read_classes
from eval.records import ResultRecord, read_records
from eval.results import niah_summary, niah_table, records_frame

pytestmark = pytest.mark.usefixtures("one_thread")     # tests/conftest.py
FAST = ["--lengths", "0.7s", "3s", "--metric", "accuracy", "--split", "all", "--limit", "3", "--init", "scratch"]


@pytest.fixture(scope="module")
def task(tmp_path_factory):
    """Generated labelled clips (1 s, 7 classes), speech-like clips for babble, and a tiny classifier of each
    family with its head (64 training frames), saved as fine-tuning saves them."""
    root = tmp_path_factory.mktemp("niah")
    write_clips(root / "clips", 14, duration=1.0, labelled=True)
    prepare("custom", root / "clips", root / "prep")
    classes = read_classes(root / "prep" / "classes.txt")
    (root / "speech").mkdir()
    for i in range(4):
        t = np.arange(9600) / 16000.0
        word = harmonic(np.random.default_rng(i), 0.6, f0=120 + 25 * i) * np.sin(np.pi * 4 * t / 0.6) ** 2
        sf.write(root / "speech" / f"w{i}.wav", (0.3 * np.concatenate([word, np.zeros(3200)])).astype(np.float32),
                 16000)
    for name, kw in (("tiny", {"depth": 2}), ("dass_tiny", {})):
        torch.manual_seed(0)
        model = create_model(name, num_classes=len(classes), target_frames=64, **kw)
        save_checkpoint(model, root / f"{name}.safetensors", metadata={"classes": classes},
                        feature_preset="audioset", feature_source="test")
    save_checkpoint(create_model("tiny", depth=1, target_frames=64), root / "headless.safetensors",
                    feature_preset="audioset")
    return root


class Probe(torch.nn.Module):
    """Logits of a window: the mean of its first ``C`` mel bins over its frames (a model whose answer is known)."""

    def __init__(self, classes: int = 3):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(4.0))
        self.classes, self.calls = classes, 0

    def forward(self, x):
        self.calls += x.shape[0]
        return self.scale * x[..., :self.classes].mean(dim=1)


def test_window_pooling_matches_a_hand_loop_and_the_zeros_shortcut_changes_nothing():
    torch.manual_seed(0)
    x = torch.zeros(300, 8)
    x[130:170, 1] = 2.0                                           # the needle lights class 1
    x[:, 2] += 0.1
    model = Probe()
    starts = list(range(0, 300 - 64, 32)) + [300 - 64]
    logits = torch.stack([model(x[s:s + 64][None])[0] for s in starts])
    want_max = torch.softmax(logits, -1).max(0).values
    want_mean = torch.softmax(logits.mean(0), -1)
    got, n = window_scores(model, x, 64, 32, False, "max", batch_size=3)
    assert n == len(starts) and torch.allclose(got, want_max)
    assert torch.allclose(window_scores(model, x, 64, 32, False, "mean")[0], want_mean)
    assert int(got.argmax()) == 1                                 # max pooling finds the needle's class
    assert int(window_scores(model, x, 64, 32, True, "max")[0].argmax()) == 1    # sigmoid, multi-label
    zeros = torch.zeros(300, 8)
    zeros[130:170, 1] = 2.0
    model.calls, cache = 0, {}
    fast, _ = window_scores(model, zeros, 64, 32, False, "max", needle=(130, 170), constant=True, cache=cache)
    assert torch.allclose(fast, window_scores(Probe(), zeros, 64, 32, False, "max")[0])
    over = [s for s in starts if s + 64 > 130 and s < 170]
    assert over == [96, 128, 160] and model.calls == len(over) + 1   # the windows over the needle, one zeros window


def test_the_positions_of_a_needle_share_its_haystack_windows():
    from eval.haystack import insert_needle
    torch.manual_seed(1)
    hay, needle = torch.randn(400, 8), torch.randn(40, 8) + 1.0
    model, cache, plain = Probe(), {}, 0
    for position in (0.0, 0.5, 1.0):
        x, s = insert_needle(hay, needle, position)
        want, n = window_scores(Probe(), x, 64, 32, False, "max")
        plain += n
        got, _ = window_scores(model, x, 64, 32, False, "max", needle=(s, s + 40), cache=cache)
        assert torch.allclose(got, want)                          # the same answer as without the cache
    assert model.calls < 0.8 * plain                              # but fewer windows run
    assert window_scores(Probe(), torch.ones(40, 8), 64, 32, False)[1] == 1     # short: one padded window


def test_needle_sets_are_class_balanced_and_fixed_by_the_seed():
    entries = [{"path": f"/a/{c}{i}.wav", "labels": [c], "split": "fold5" if i < 6 else "fold1"}
               for c in "abc" for i in range(8)]
    two = niah.select_needles(entries, "fold5", per_class=2, seed=0)
    assert [e["labels"][0] for e in two] == ["a", "a", "b", "b", "c", "c"]
    assert all(e["split"] == "fold5" for e in two)
    assert two == niah.select_needles(entries, "fold5", per_class=2, seed=0)
    assert two != niah.select_needles(entries, "fold5", per_class=2, seed=1)
    assert len(niah.select_needles(entries, "all", limit=5)) == 5
    with pytest.raises(ValueError, match="no clip .* split 'test'"):
        niah.select_needles(entries, "test")


def test_niah_records_name_their_cell_and_need_it():
    extra = {"haystack": "babble-x", "snr_db": 10.0, "length_frames": 60000, "position": 0.5, "run_mode": "window"}
    rec = ResultRecord("esc10", "niah", "scratch", "tiny", "accuracy", 0.5, fold=5, extra=extra, code_version="t")
    assert rec.filename() == "esc10_niah_scratch_tiny_seed0_fold5_babble-x_snr10_60000f_pos0.5_window.json"
    other = ResultRecord("esc10", "niah", "scratch", "tiny", "accuracy", 0.5, fold=5, code_version="t",
                         extra={**extra, "haystack": "zeros", "snr_db": None, "position": 1.0})
    assert other.filename() == "esc10_niah_scratch_tiny_seed0_fold5_zeros_60000f_pos1_window.json"
    with pytest.raises(ValueError, match="niah record needs"):
        ResultRecord("esc10", "niah", "scratch", "tiny", "accuracy", 0.5, extra={"haystack": "zeros"})


@pytest.mark.slow
def test_both_families_both_modes_end_to_end_with_table_plot_and_resume(task, tmp_path, capsys):
    out = tmp_path / "out"
    babble = f"babble:{task / 'speech'}"
    for name in ("tiny", "dass_tiny"):
        assert niah.main([str(task / f"{name}.safetensors"), str(task / "prep" / "manifest.jsonl"), *FAST,
                          "--haystack", "zeros", babble, "--out", str(out)]) == 0
    records = read_records(out / "records")
    assert len(records) == 2 * 2 * 2 * 3 * 2                      # models x lengths x haystacks x positions x modes
    assert {r.model for r in records} == {"tiny-d2", "dass_tiny"} and {r.mode for r in records} == {"niah"}
    assert all(r.extra["n_needles"] == 3 and 0.0 <= r.value <= 1.0 for r in records)
    hays = {r.extra["haystack"] for r in records}
    assert hays == {"zeros", "babble-speech"}
    assert all((r.extra["snr_db"] == 10.0) == (r.extra["haystack"] != "zeros") for r in records)
    # each record's value is the accuracy of its saved per-clip scores, and the needle sat where it was asked
    rec = next(r for r in records if r.extra["length_frames"] == 300 and r.extra["position"] == 1.0)
    pred = np.load(out / "predictions" / rec.filename().replace(".json", ".npz"))
    assert rec.value == pytest.approx(np.mean(pred["scores"].argmax(1) == pred["targets"].argmax(1)))
    assert (pred["needle_start"] == 300 - 64).all()               # 64-frame needles flush with the end
    table = (out / "tables" / "niah.md").read_text()
    assert "| tiny-d2 | zeros | start | whole | accuracy |" in table and "| 0.7s | 3s |" in table
    assert (out / "tables" / "niah.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "### niah" in capsys.readouterr().out
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    assert niah.main([str(task / "tiny.safetensors"), str(task / "prep" / "manifest.jsonl"), *FAST,
                      "--haystack", "zeros", babble, "--out", str(out)]) == 0     # every cell there: nothing redone
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "records").glob("*.json")}
    # the same cells from a different needle set are refused, not mixed in
    assert niah.main([str(task / "tiny.safetensors"), str(task / "prep" / "manifest.jsonl"), *FAST[:-4],
                      "--limit", "4", "--init", "scratch", "--haystack", "zeros", "--out", str(out)]) == 2
    assert "another checkpoint, needle set or settings" in capsys.readouterr().err


def test_an_interrupted_group_resumes_after_its_last_needle(task, tmp_path, monkeypatch):
    args = [str(task / "tiny.safetensors"), str(task / "prep" / "manifest.jsonl"), *FAST, "--lengths", "0.7s",
            "--positions", "0.5", "--modes", "whole", "--haystack", "white"]
    assert niah.main(args + ["--out", str(tmp_path / "once")]) == 0
    real, calls = niah.whole_scores, []

    def dies_on_the_third(model, x, multi_label):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(model, x, multi_label)

    monkeypatch.setattr(niah, "whole_scores", dies_on_the_third)
    assert niah.main(args + ["--out", str(tmp_path / "twice")]) == 130
    assert list((tmp_path / "twice" / "partial").glob("*.npz")) and not list((tmp_path / "twice").glob("records/*"))
    calls.clear()
    monkeypatch.setattr(niah, "whole_scores", lambda *a: (calls.append(1), real(*a))[1])
    assert niah.main(args + ["--out", str(tmp_path / "twice")]) == 0
    assert len(calls) == 1                                        # two needles were kept, the third one run
    a, b = (json.loads(next((tmp_path / d / "records").glob("*.json")).read_text()) for d in ("once", "twice"))
    assert a["value"] == b["value"] and a["extra"]["settings_key"] == b["extra"]["settings_key"]
    for d in ("once", "twice"):
        assert not list((tmp_path / d / "partial").glob("*.npz"))
    pa, pb = (np.load(next((tmp_path / d / "predictions").glob("*.npz")))["scores"] for d in ("once", "twice"))
    assert np.allclose(pa, pb, atol=1e-6)


def test_clear_errors_exit_2(task, tmp_path, capsys):
    manifest = str(task / "prep" / "manifest.jsonl")
    cases = [
        ([str(task / "headless.safetensors"), manifest, *FAST], "head has 0 classes"),
        ([str(task / "tiny.safetensors"), manifest, *FAST, "--lengths", "0.5s"], "longer than the length"),
        ([str(task / "tiny.safetensors"), manifest, *FAST, "--haystack", "pink"], "unknown haystack"),
        ([str(task / "tiny.safetensors"), manifest, *FAST, "--lengths", "5x"], "cannot read length"),
        ([str(task / "tiny.safetensors"), manifest, "--split", "all"], "records no benchmark"),
        ([str(task / "tiny.safetensors"), manifest, *FAST, "--split", "nope"], "no clip of the manifest"),
        ([str(task / "tiny.safetensors"), manifest, *FAST, "--haystack", f"babble:{tmp_path}/none"], "none"),
    ]
    for argv, message in cases:
        assert niah.main(argv + ["--out", str(tmp_path / "out")]) == 2, argv
        assert message in capsys.readouterr().err


def test_the_niah_table_has_lengths_as_columns(tmp_path):
    from eval.records import write_record
    for model, value in (("tiny", 0.5), ("dass_tiny", 0.25)):
        for length, pos, mode in ((500, 0.0, "whole"), (60000, 0.0, "whole"), (60000, 1.0, "window")):
            write_record(ResultRecord("esc10", "niah", "scratch", model, "accuracy", value * length / 60000 + 0.1,
                                      fold=5, code_version="t",
                                      extra={"haystack": "zeros", "snr_db": None, "length_frames": length,
                                             "position": pos, "run_mode": mode}), tmp_path)
    table = niah_table(niah_summary(records_frame(tmp_path)))
    assert list(table.columns) == ["haystack", "position", "mode", "metric", "5s", "10m"]
    assert list(table.index) == ["dass_tiny", "dass_tiny", "tiny", "tiny"]
    assert table.iloc[2].tolist() == ["zeros", "start", "whole", "accuracy", "10.4", "60.0"]
    assert table.iloc[3].tolist() == ["zeros", "end", "window", "accuracy", "-", "60.0"]
