"""The GPU check and the scaling benchmark, run small on the CPU so the scripts cannot rot unseen."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.subprocess                      # every test runs a benchmark script in its own process


def _run(args, tmp_path):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin", "PYTHONPATH": str(ROOT),
                               "HOME": str(tmp_path)})


def test_cuda_check_cpu_smoke_compares_backends(tmp_path):
    out = tmp_path / "check.json"
    res = _run(["benchmarks/cuda_check.py", "--cpu-smoke", "--preset", "tiny", "--depth", "2", "--frames", "256",
                "--batch", "1", "--json", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr
    report = json.loads(out.read_text())
    assert report["ok"] is True and report["kernels"] == {"selective_scan": False, "causal_conv1d": False}
    assert report["ops"]["scan_out"] < 1e-5 and report["ops"]["conv_out"] < 1e-6      # reference vs torch
    assert report["model_float32"]["out"] < 1e-4
    assert {"time_torch", "time_reference"} <= set(report)


def test_scaling_writes_json_plot_and_ratios(tmp_path):
    res = _run(["benchmarks/scaling.py", "--multiples", "1", "2", "--frames", "64", "--modes", "forward",
                "--out", str(tmp_path / "scaling")], tmp_path)
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "scaling" / "scaling.json").read_text())
    assert (tmp_path / "scaling" / "scaling.png").stat().st_size > 0
    for model in ("aum", "ast"):
        for m in ("1", "2"):
            assert record["results"][model]["forward"][m]["seconds"] > 0
        assert record["summary"][f"{model}_forward"]["time_ratio"] > 0
    assert "time(2x)/time(1x)" in res.stdout and "aum_faster_from_forward" in res.stdout


def test_scan_speed_compares_fused_torch_and_reference(tmp_path):
    out = tmp_path / "scan.json"
    res = _run(["benchmarks/scan_speed.py", "--sizes", "tiny", "--batch", "1", "--length", "40", "--short", "9",
                "--repeats", "1", "--json", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr
    records = json.loads(out.read_text())["records"]
    assert [(r["length"], r["mode"]) for r in records] == [(40, "forward"), (40, "train"), (9, "forward"),
                                                           (9, "train")]
    from aum.ops import scan_fused
    backends = {"fused", "torch"} if scan_fused.library() is not None else {"torch"}  # fused needs a compiler
    assert set(records[0]["ms"]) == backends and set(records[2]["ms"]) == backends | {"reference"}
    assert all(ms > 0 for r in records for ms in r["ms"].values())
    assert "torch/fused" in res.stdout


def test_encoder_speed_measures_dass_beside_aum(tmp_path):
    out = tmp_path / "speed.json"
    res = _run(["benchmarks/encoder_speed.py", "--presets", "dass_tiny", "--backends", "torch", "--frames", "64",
                "--batch", "1", "--repeats", "1", "--json", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr
    records = json.loads(out.read_text())
    assert [(r["preset"], r["family"], r["mixer"], r["scan"]) for r in records] == [
        ("dass_tiny", "dass", "ss2d", "identity"), ("dass_tiny", "dass", "ss2d", "torch")]
    for r in records:
        assert r["full"]["seconds"] > 0 and r["train"]["seconds"] > 0 and r["train"]["peak_rss_mib"] > 0
        assert r["full"]["params_m"] == records[0]["full"]["params_m"] > 0
    assert records[0]["forward_over_identity"] == 1.0 and records[1]["forward_over_identity"] > 0
    bad = _run(["benchmarks/encoder_speed.py", "--presets", "dass_huge"], tmp_path)
    assert bad.returncode == 2 and "unknown AuM preset 'dass_huge'" in bad.stderr


def test_scaling_adds_a_dass_line(tmp_path):
    res = _run(["benchmarks/scaling.py", "--dass", "dass_tiny", "--backend", "torch", "--multiples", "1", "2",
                "--frames", "64", "--modes", "train", "--out", str(tmp_path / "scaling")], tmp_path)
    assert res.returncode == 0, res.stderr
    record = json.loads((tmp_path / "scaling" / "scaling.json").read_text())
    assert record["dass_preset"] == "dass_tiny" and record["scan_backend"] == "torch"
    assert set(record["results"]) == {"aum", "ast", "dass"}
    for m in ("1", "2"):
        assert record["results"]["dass"]["train"][m]["seconds"] > 0
        assert record["results"]["dass"]["forward"][m] == {"error": "not run"}
    assert record["summary"]["dass_train"]["time_ratio"] > 0 and "dass_faster_from_train" in record["summary"]
    assert (tmp_path / "scaling" / "scaling.png").stat().st_size > 0
    assert "dass train    2x (   128 frames,   1024 positions)" in res.stdout
    bad = _run(["benchmarks/scaling.py", "--dass", "small"], tmp_path)
    assert bad.returncode == 2 and "--dass 'small' is not a DASS preset" in bad.stderr


def test_dass_profile_splits_the_forward_by_stage_and_part(tmp_path):
    out = tmp_path / "profile.json"
    res = _run(["benchmarks/dass_profile.py", "--preset", "dass_tiny", "--frames", "128", "--batch", "1",
                "--repeats", "1", "--backends", "torch", "--json", str(out)], tmp_path)
    assert res.returncode == 0, res.stderr
    [record] = json.loads(out.read_text())
    sections = record["sections"]
    assert list(sections) == ["stem", "stage0", "stage1", "stage2", "stage3", "head"]
    assert record["shapes"]["stage0"] == {"height": 32, "width": 32, "positions": 1024, "scan_channels": 96,
                                          "blocks": 1}
    assert record["shapes"]["stage3"]["positions"] == 4 * 4
    for i in range(4):
        row = sections[f"stage{i}"]
        assert row["scan"] > 0 and row["mlp"] > 0 and row["proj"] > 0 and row["prep"] > 0
        assert row["total"] >= sum(v for p, v in row.items() if p != "total") - 1e-9
    assert sections["stage3"]["down"] == 0.0 and sections["stage0"]["down"] > 0     # no downsampling after the last
    assert sum(row["total"] for row in sections.values()) == pytest.approx(record["forward_seconds"], rel=1e-6)
    assert "selective scan, all stages:" in res.stdout and "% of the forward" in res.stdout
    bad = _run(["benchmarks/dass_profile.py", "--preset", "tiny"], tmp_path)
    assert bad.returncode == 2 and "is not a DASS preset" in bad.stderr
