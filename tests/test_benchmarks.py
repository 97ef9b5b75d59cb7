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
