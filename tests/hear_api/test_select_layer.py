"""hear_api.select_layer: the per-layer scores (against sklearn run by hand), the choice, the command line on
generated audio with a corrupt file (skipped and named), and its errors."""
import json

import numpy as np
import pytest
import soundfile as sf
import torch

from aum import create_model
from aum.checkpoint import save_checkpoint
from aum.audio.synth import noise_burst, tone
from hear_api.select_layer import best_layer, main, score_layers


def test_scores_follow_the_separable_layer_and_match_sklearn():
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    y = np.repeat(["a", "b", "c"], 10)
    noise = rng.normal(size=(30, 6))
    signal = noise + 4.0 * (y[:, None] == np.array(["a", "b", "c"])[None])[:, :3].repeat(2, axis=1)
    scores = score_layers({1: noise, 2: signal}, list(y), folds=5)
    assert scores[2]["mean"] == 1.0 and scores[1]["mean"] < 0.7 and best_layer(scores) == 2
    acc = []                                                     # fold 1 of layer 1, by hand
    for tr, te in StratifiedKFold(5, shuffle=True, random_state=0).split(y, y):
        sc = StandardScaler().fit(noise[tr])
        clf = LogisticRegression(C=1.0, max_iter=3000).fit(sc.transform(noise[tr]), y[tr])
        acc.append((clf.predict(sc.transform(noise[te])) == y[te]).mean())
    assert scores[1]["folds"] == pytest.approx(np.round(acc, 4).tolist())
    assert best_layer({4: {"mean": 0.5}, 8: {"mean": 0.5}, 2: {"mean": 0.4}}) == 8      # ties: deeper


def test_too_few_clips_per_class_is_an_error():
    with pytest.raises(ValueError, match="at least 2 classes with >= 5 clips"):
        score_layers({1: np.zeros((6, 2))}, ["a"] * 3 + ["b"] * 3, folds=5)


def test_command_line_on_generated_audio(tmp_path, capsys):
    torch.manual_seed(0)
    ckpt = tmp_path / "enc.safetensors"
    save_checkpoint(create_model("tiny", depth=2), ckpt)
    rng = np.random.default_rng(0)
    rows = []
    for i in range(10):
        for label, make in (("tone", tone), ("noise", noise_burst)):
            path = tmp_path / f"{label}{i}.wav"
            sf.write(path, make(rng, 0.5, 16000).astype(np.float32), 16000)
            rows.append(f"{path},{label}")
    (tmp_path / "broken.wav").write_bytes(b"RIFF not audio")
    rows.append(f"{tmp_path / 'broken.wav'},tone")
    (tmp_path / "m.csv").write_text("path,label\n" + "\n".join(rows) + "\n")
    out = tmp_path / "scores.json"
    assert main([str(ckpt), str(tmp_path / "m.csv"), "--layers", "1,2", "--threads", "1", "--out", str(out),
                 "--model-options", '{"scene": "mean+max", "pad_to_window": false}']) == 0
    res = json.loads(out.read_text())
    assert res["clips"] == 20 and res["skipped"][0][0].endswith("broken.wav") and res["best"] in (1, 2)
    assert set(res["scores"]) == {"1", "2"} and res["scores"][str(res["best"])]["mean"] >= 0.9
    printed = capsys.readouterr()
    assert "<- best" in printed.out and "broken.wav" in printed.err
    with pytest.raises(SystemExit):
        main([str(ckpt), str(tmp_path / "m.csv"), "--model-options", '{"layer": 2}'])
