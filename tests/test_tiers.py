"""The test tiers: the markers `make test-fast` leaves out are registered, and an unmarked test cannot start a
Python process (the guard in tests/conftest.py), while other programs still run."""
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_the_fast_tier_leaves_out_only_registered_marks(pytestconfig):
    registered = {line.split(":")[0] for line in pytestconfig.getini("markers")}
    fast = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith("FAST :="))
    left_out = set(fast.split("not (")[1].rstrip(")").split(" or "))
    assert left_out == {"hear_env", "slurm", "ddp", "real_audio", "subprocess", "slow"} and left_out <= registered
    assert "--strict-markers" in pytestconfig.getini("addopts")


def test_an_unmarked_test_cannot_start_python_but_can_run_other_programs(tmp_path):
    with pytest.raises(AssertionError, match="mark it @pytest.mark.subprocess"):
        subprocess.run([sys.executable, "-c", "pass"], check=True)
    with pytest.raises(AssertionError, match="starts a Python process"):
        subprocess.run(f"{sys.executable} -c pass", shell=True, check=True)
    with pytest.raises(AssertionError, match="starts a Python process"):
        subprocess.run([str(Path(sys.executable).parent / "aum-encode"), "--help"], check=True)
    assert subprocess.run(["true"], check=True).returncode == 0


@pytest.mark.subprocess
def test_a_marked_test_can_start_python():
    res = subprocess.run([sys.executable, "-c", "print(6 * 7)"], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "42"
