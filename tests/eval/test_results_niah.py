"""aum-results with needle-in-a-haystack records: their own table and plot, the other tables exactly as without them."""
import pandas as pd

from eval import results
from eval.records import ResultRecord, write_record


def _niah(model, length, position, mode, value, seed=0, haystack="zeros", snr=None):
    return ResultRecord("esc10", "niah", "scratch", model, "accuracy", value, seed=seed, fold=5, code_version="t",
                        extra={"haystack": haystack, "snr_db": snr, "length_frames": length, "position": position,
                               "run_mode": mode})


def test_niah_records_get_their_own_table_and_leave_the_others_unchanged(tmp_path, capsys):
    plain, mixed = tmp_path / "plain", tmp_path / "mixed"
    for folder in (plain, mixed):
        for s, v in enumerate([0.80, 0.82, 0.84]):
            write_record(ResultRecord("esc10", "finetune", "scratch", "tiny", "accuracy", v, seed=s, fold=5,
                                      code_version="t"), folder)
    for rec in [_niah("tiny", 500, 0.0, "whole", v, seed=s) for s, v in enumerate([0.5, 0.7])] + \
               [_niah("tiny", 60000, 0.0, "whole", 0.1), _niah("tiny", 60000, 1.0, "window", 0.3),
                _niah("dass_tiny", 500, 0.5, "whole", 0.6, haystack="babble-audio", snr=10.0)]:
        write_record(rec, mixed)
    assert results.main([str(plain), "--out", str(tmp_path / "t_plain")]) == 0
    assert results.main([str(mixed), "--out", str(tmp_path / "t_mixed")]) == 0
    printed = capsys.readouterr().out
    for name in ("finetune.md", "finetune.csv", "finetune.tex", "summary.csv"):
        assert (tmp_path / "t_plain" / name).read_text() == (tmp_path / "t_mixed" / name).read_text()
    assert not (tmp_path / "t_plain" / "niah.md").exists()
    md = (tmp_path / "t_mixed" / "niah.md").read_text()
    assert "### niah" in printed and md in printed
    assert "| model | haystack | position | mode | metric | 5s | 10m |" in md
    assert "| tiny | zeros | start | whole | accuracy | 60.0 ± 14.1 (n=2) | 10.0 |" in md      # two seeds at 5 s
    assert "| tiny | zeros | end | window | accuracy | - | 30.0 |" in md
    assert "| dass_tiny | babble-audio@10dB | middle | whole | accuracy | 60.0 | - |" in md
    assert (tmp_path / "t_mixed" / "niah.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    long = pd.read_csv(tmp_path / "t_mixed" / "niah_summary.csv")
    assert len(long) == 4 and set(long["length_frames"]) == {500, 60000}
