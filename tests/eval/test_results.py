"""Results tables from hand-made records: exact mean/std/n, missing cells, Markdown/CSV/LaTeX/PNG files."""

import math

import pandas as pd
import pytest

from eval import results
from eval.records import ResultRecord, write_record


def _rec(benchmark, mode, init, model, value, seed=0, fold=None, metric="accuracy"):
    return ResultRecord(benchmark=benchmark, mode=mode, init=init, model=model, metric=metric, value=value,
                        seed=seed, fold=fold, code_version="test")


@pytest.fixture
def folder(tmp_path):
    recs = [_rec("esc10", "probe", "scratch", "tiny", v, fold=k) for k, v in zip(range(1, 6), [.5, .6, .7, .8, .9])]
    recs.append(_rec("esc10", "probe", "scratch", "tiny", 0.123, fold="mean"))          # summary: ignored
    recs += [_rec("esc10", "finetune", "ssl", "base", v, seed=s) for s, v in enumerate([.80, .82, .84])]
    recs.append(_rec("speech_commands", "finetune", "scratch", "base", 0.9))
    recs += [_rec("esc50", "finetune", "official", "base", v, seed=s, fold=f)               # seeds x folds
             for (s, f), v in zip([(0, 1), (0, 2), (1, 1), (1, 2)], [.6, .8, .8, 1.0])]
    recs.append(_rec("audioset20k", "probe", "ssl", "small", 0.25, metric="mAP"))
    for r in recs:
        write_record(r, tmp_path / "records" / r.mode)
    return tmp_path / "records"


def _cell(summary, **keys):
    sel = summary
    for k, v in keys.items():
        sel = sel[sel[k] == v]
    assert len(sel) == 1, sel
    return sel.iloc[0]


def test_summary_statistics_are_exact(folder):
    summary = results.summarise(results.records_frame(folder))
    folds = _cell(summary, mode="probe", benchmark="esc10")
    assert folds["mean"] == pytest.approx(0.7) and folds["std"] == pytest.approx(math.sqrt(0.025))
    assert folds["n"] == 5 and folds["over"] == "folds"
    seeds = _cell(summary, mode="finetune", benchmark="esc10")
    assert seeds["mean"] == pytest.approx(0.82) and seeds["std"] == pytest.approx(0.02) and seeds["n"] == 3
    assert seeds["over"] == "seeds"
    both = _cell(summary, benchmark="esc50")                   # fold means 0.7 and 0.9, then over 2 seeds
    assert both["mean"] == pytest.approx(0.8) and both["std"] == pytest.approx(math.sqrt(0.02)) and both["n"] == 2
    one = _cell(summary, benchmark="speech_commands")
    assert one["n"] == 1 and math.isnan(one["std"]) and one["over"] == "runs"


def test_tables_show_missing_cells(folder):
    summary = results.summarise(results.records_frame(folder))
    table = results.wide_table(summary, "finetune")
    assert list(table.columns) == ["metric", "scratch", "imagenet", "ssl", "official"]
    assert list(table.index) == ["esc10", "esc50", "speech_commands"]
    assert table.loc["esc10", "ssl"] == "82.00 ± 2.00 (n=3)"
    assert table.loc["speech_commands", "scratch"] == "90.00 (n=1)"
    assert table.loc["esc50", "official"] == "80.00 ± 14.14 (n=2)"
    assert (table.loc["esc10", ["scratch", "imagenet", "official"]] == "-").all()
    assert table.loc["esc10", "metric"] == "accuracy"
    probe = results.wide_table(summary, "probe", benchmarks=["esc50"])
    assert list(probe.index) == ["audioset20k (small)", "esc10 (tiny)", "esc50"]
    assert probe.loc["esc10 (tiny)", "scratch"] == "70.00 ± 15.81 (n=5)"
    assert (probe.loc["esc50"] == "-").all()
    assert probe.loc["audioset20k (small)", "metric"] == "mAP"


def test_files_written(folder, tmp_path, capsys):
    out = tmp_path / "tables"
    assert results.main([str(folder), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "### finetune" in printed and "### probe" in printed and "| esc10 | accuracy | - | - |" in printed
    for mode in ("finetune", "probe"):
        for ext in ("md", "csv", "tex", "png"):
            assert (out / f"{mode}.{ext}").stat().st_size > 0
        assert (out / f"{mode}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not (out / "hear.md").exists()
    csv = pd.read_csv(out / "finetune.csv", index_col=0, keep_default_na=False)
    assert csv.loc["esc10", "ssl"] == "82.00 ± 2.00 (n=3)" and csv.loc["esc10", "imagenet"] == "-"
    tex = (out / "finetune.tex").read_text()
    assert r"\toprule" in tex and r"speech\_commands" in tex and r"82.00 $\pm$ 2.00 (n=3)" in tex
    assert "& - &" in tex and r"\end{tabular}" in tex
    summary = pd.read_csv(out / "summary.csv")
    assert len(summary) == 5 and set(summary.columns) >= {"mode", "benchmark", "init", "mean", "std", "n"}


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "none").mkdir()
    assert results.main([str(tmp_path / "none")]) == 1
    assert "no result records" in capsys.readouterr().out
