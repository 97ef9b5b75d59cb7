"""hear_api.setup_env from a checkout and from an installed distribution (no network, no venv builds).

The installed case is simulated by pointing ``setup_env.REPO_ROOT`` at a folder without ``pyproject.toml`` (what
site-packages looks like) and replacing the ``importlib.metadata`` lookup of the distribution."""
import ast
import os
import sysconfig
from pathlib import Path

import pytest

import aum
import eval as eval_pkg
import hear_api
from hear_api import setup_env

REAL_ROOT = setup_env.REPO_ROOT
FIRST_PARTY = {"aum", "pretrain", "eval", "hear_api", "slurm"}


@pytest.fixture
def installed(monkeypatch, tmp_path):
    """Installed layout: REPO_ROOT is a bare site-packages-like folder, the cache under tmp, fake metadata."""
    site = tmp_path / "site-packages"
    site.mkdir()
    monkeypatch.setattr(setup_env, "REPO_ROOT", site)
    monkeypatch.setenv("AUM_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("AUM_HEAR_VENV", raising=False)
    meta = {"version": "0.1.0", "requires": ["torch>=2.4", "numpy>=1.24", 'h5py>=3.8; extra == "epic"']}
    monkeypatch.setattr(setup_env, "_distribution_metadata", lambda: (meta["version"], list(meta["requires"])))
    return meta


@pytest.fixture
def checkout(monkeypatch):
    """The real checkout this test runs from, with no $AUM_HEAR_VENV."""
    monkeypatch.setattr(setup_env, "REPO_ROOT", REAL_ROOT)
    monkeypatch.delenv("AUM_HEAR_VENV", raising=False)


def _pythonpath(env: dict) -> list[str]:
    return env["PYTHONPATH"].split(os.pathsep)


# --- the installed distribution ------------------------------------------------------------------------------

def test_installed_default_venv_is_in_the_cache_root(installed, monkeypatch, tmp_path):
    assert setup_env.checkout_root() is None
    assert setup_env.default_venv() == tmp_path / "cache" / "hear-venv"
    monkeypatch.setenv("AUM_HEAR_VENV", str(tmp_path / "mine"))
    assert setup_env.default_venv() == tmp_path / "mine"
    monkeypatch.delenv("AUM_HEAR_VENV")
    monkeypatch.delenv("AUM_CACHE")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert setup_env.default_venv() == tmp_path / "home" / ".cache" / "aum" / "hear-venv"
    assert not str(setup_env.default_venv()).startswith(str(setup_env.REPO_ROOT))


def test_installed_fingerprint_follows_version_and_requirements(installed):
    first = setup_env.requirements_fingerprint()
    assert setup_env.requirements_fingerprint() == first
    installed["version"] = "0.2.0"
    second = setup_env.requirements_fingerprint()
    installed["requires"] = installed["requires"] + ["pandas>=2.0"]
    third = setup_env.requirements_fingerprint()
    assert len({first, second, third}) == 3


def test_installed_fingerprint_differs_from_the_checkout_one(installed, monkeypatch):
    inst = setup_env.requirements_fingerprint()
    monkeypatch.setattr(setup_env, "REPO_ROOT", REAL_ROOT)
    assert setup_env.requirements_fingerprint() != inst


def test_neither_checkout_nor_installed_says_so(monkeypatch, tmp_path):
    monkeypatch.setattr(setup_env, "REPO_ROOT", tmp_path)
    monkeypatch.setattr(setup_env, "DISTRIBUTION", "no-such-distribution-aum-test")
    with pytest.raises(RuntimeError, match="no-such-distribution-aum-test.*pip install"):
        setup_env.requirements_fingerprint()


def test_runtime_requirements_drop_extras_and_pin_torch(installed):
    installed["requires"] = ["torch>=2.4", "Torch_Audio>=1", "torchaudio>=2.4", "numpy>=1.24",
                             'tomli>=2; python_version < "3.11"', 'mamba-ssm>=2.2; extra == "cuda"',
                             "wheel ; extra=='test'"]
    assert setup_env.runtime_requirements() == [
        f"torch=={setup_env.TORCH_VERSION}", f"torchaudio=={setup_env.TORCH_VERSION}",
        "Torch_Audio>=1", "numpy>=1.24", 'tomli>=2; python_version < "3.11"']


def test_real_metadata_of_the_installed_project():
    version, requires = setup_env._distribution_metadata()
    assert version and any(setup_env._requirement_name(r) == "torch" for r in requires)
    reqs = setup_env.runtime_requirements()
    assert reqs[:2] == [f"torch=={setup_env.TORCH_VERSION}", f"torchaudio=={setup_env.TORCH_VERSION}"]
    assert not any("extra" in r for r in reqs) and "numpy" in {setup_env._requirement_name(r) for r in reqs}


def test_installed_hear_env_has_the_stub_and_an_overlay_not_site_packages(installed, tmp_path):
    env = setup_env.hear_env(predictions=True, base={"PYTHONPATH": "/elsewhere"})
    parts = _pythonpath(env)
    assert parts[0] == str(setup_env.TF_STUB) and (Path(parts[0]) / "tensorflow" / "__init__.py").is_file()
    overlay = Path(parts[1])
    assert overlay.parent == tmp_path / "cache" / "hear-overlay" and parts[2:] == ["/elsewhere"]
    assert env["TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD"] == "1"
    real = {"aum": Path(aum.__file__).parent, "eval": Path(eval_pkg.__file__).parent,
            "hear_api": Path(hear_api.__file__).parent}
    assert sorted(p.name for p in overlay.iterdir()) == sorted(real)
    for name, folder in real.items():
        link = overlay / name
        assert link.is_symlink() and link.resolve() == folder.resolve()
        assert (link / "__init__.py").is_file()
    site_dirs = {str(setup_env.REPO_ROOT), sysconfig.get_paths()["purelib"], sysconfig.get_paths()["platlib"]}
    assert not site_dirs & set(parts) and not any("site-packages" in p for p in parts)
    assert str(REAL_ROOT) not in parts                     # not the checkout either: only the linked packages


def test_overlay_is_reused_and_repairs_a_stale_link(installed, tmp_path):
    first = setup_env.overlay()
    (first / "aum").unlink()
    (first / "aum").symlink_to(tmp_path, target_is_directory=True)
    again = setup_env.overlay()
    assert again == first and (again / "aum").resolve() == Path(aum.__file__).parent.resolve()
    assert not [p for p in again.iterdir() if p.name.startswith(".")]


def test_overlay_packages_cover_what_hear_api_imports():
    """hear_api, and every first-party package it imports, import only first-party packages in the overlay."""
    seen = set()
    for pkg in setup_env.OVERLAY_PACKAGES:
        for path in (REAL_ROOT / pkg).rglob("*.py"):
            if "tf_stub" in path.parts:
                continue
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                    names = [node.module]
                else:
                    continue
                seen |= {n.split(".")[0] for n in names} & FIRST_PARTY
    assert seen == set(setup_env.OVERLAY_PACKAGES)


def _fake_build(monkeypatch, venv: Path) -> list:
    """Record setup()'s pip calls and smoke check instead of running them; ``venv`` gets a dummy python."""
    calls = []
    venv_python = setup_env.venv_python(venv)
    venv_python.parent.mkdir(parents=True)
    venv_python.write_text("")
    monkeypatch.setattr(setup_env, "_pip", lambda v, *args, **kw: calls.append(("pip", args)))
    monkeypatch.setattr(setup_env, "patch_heareval", lambda v: "patched")
    monkeypatch.setattr(setup_env.subprocess, "run", lambda cmd, **kw: calls.append(("run", cmd, kw)))
    return calls


def test_installed_setup_installs_the_requirements_not_the_site_packages(installed, monkeypatch, tmp_path):
    venv = setup_env.default_venv()
    calls = _fake_build(monkeypatch, venv)
    assert setup_env.setup() == venv and setup_env.is_ready(venv)
    pips = [c[1] for c in calls if c[0] == "pip"]
    assert pips[-1] == tuple(setup_env.runtime_requirements())
    assert not any("-e" in args or str(setup_env.REPO_ROOT) in args for args in pips)
    (smoke,) = [c for c in calls if c[0] == "run"]
    assert smoke[2]["cwd"] == str(venv)                   # `-c` puts the working folder on sys.path
    assert Path(_pythonpath(smoke[2]["env"])[1]).parent == tmp_path / "cache" / "hear-overlay"
    installed["version"] = "9.9"
    assert not setup_env.is_ready(venv)                   # a new release rebuilds


# --- the checkout --------------------------------------------------------------------------------------------

def test_checkout_behaviour_is_unchanged(checkout, tmp_path):
    assert setup_env.checkout_root() == REAL_ROOT and (REAL_ROOT / "pyproject.toml").is_file()
    assert setup_env.default_venv() == REAL_ROOT / ".venv-hear"
    parts = _pythonpath(setup_env.hear_env(base={}))
    assert parts == [str(setup_env.TF_STUB), str(REAL_ROOT)]


def test_checkout_setup_installs_the_repository_editable(checkout, monkeypatch, tmp_path):
    calls = _fake_build(monkeypatch, tmp_path / "venv")
    setup_env.setup(tmp_path / "venv")
    pips = [c[1] for c in calls if c[0] == "pip"]
    assert pips[-1] == ("-e", str(REAL_ROOT))
    (smoke,) = [c for c in calls if c[0] == "run"]
    assert smoke[2]["cwd"] == str(REAL_ROOT)


@pytest.mark.parametrize("toml", [True, False])
def test_checkout_detection_and_its_fingerprint(monkeypatch, tmp_path, toml):
    if not toml:
        monkeypatch.setattr(setup_env, "tomllib", None)       # the Python 3.10 fallback
    monkeypatch.setattr(setup_env, "REPO_ROOT", tmp_path)
    pyproject = tmp_path / "pyproject.toml"
    pyproject.write_text('[project]\nname = "audio-mamba"\ndependencies = ["torch>=2.4"]\n')
    assert setup_env.checkout_root() == tmp_path
    first = setup_env.requirements_fingerprint()
    pyproject.write_text('[project]\nname = "audio-mamba"\ndependencies = ["torch>=2.5"]\n')
    assert setup_env.requirements_fingerprint() != first
    pyproject.write_text('[project]\nname = "someone-else"\n')
    assert setup_env.checkout_root() is None
