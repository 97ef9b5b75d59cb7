"""Tests for aum.config: schema defaults < YAML < overrides, helpful key errors, atomic save (the command-line
split into a config file and overrides: tests/test_cli.py)."""

from dataclasses import dataclass, field
from typing import Optional

import pytest
from omegaconf import MISSING, OmegaConf

from aum.config import ConfigError, load_config, save_config, to_dataclass


@dataclass
class OptimCfg:
    lr: float = 1e-3
    weight_decay: float = 0.05
    betas: list = field(default_factory=lambda: [0.9, 0.95])


@dataclass
class DataCfg:
    root: Optional[str] = None
    crop_frames: int = 1024


@dataclass
class TrainCfg:
    max_steps: int = 100
    batch_size: int = 8
    name: str = "run"
    amp: bool = False
    optim: OptimCfg = field(default_factory=OptimCfg)
    data: DataCfg = field(default_factory=DataCfg)
    extra: dict = field(default_factory=dict)


def _yaml(tmp_path, text, name="run.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


def test_defaults_only():
    cfg = load_config(TrainCfg)
    assert cfg.max_steps == 100 and cfg.optim.lr == 1e-3 and cfg.data.root is None


def test_merge_order_defaults_yaml_overrides(tmp_path):
    p = _yaml(tmp_path, "max_steps: 5\nbatch_size: 4\noptim:\n  lr: 0.01\n")
    cfg = load_config(TrainCfg, p, ["max_steps=7", "optim.weight_decay=0.1", "data.root=/x", "amp=true"])
    assert cfg.max_steps == 7            # override beats YAML
    assert cfg.batch_size == 4           # YAML beats default
    assert cfg.optim.lr == 0.01 and cfg.optim.weight_decay == 0.1 and cfg.optim.betas == [0.9, 0.95]
    assert cfg.data.root == "/x" and cfg.amp is True and cfg.name == "run"
    cfg = load_config(TrainCfg, None, ["optim.lr=3e-4", "optim.betas=[0.8,0.9]", "extra.anything=1"])
    assert cfg.optim.lr == pytest.approx(3e-4) and cfg.optim.betas == [0.8, 0.9] and cfg.extra.anything == 1


def test_unknown_key_in_override_suggests_and_lists():
    with pytest.raises(ConfigError) as ei:
        load_config(TrainCfg, None, ["max_step=3"])
    msg = str(ei.value)
    assert "max_step" in msg and "did you mean 'max_steps'" in msg
    for k in ("max_steps", "batch_size", "optim", "data"):
        assert k in msg
    assert isinstance(ei.value, ValueError)


def test_unknown_nested_key_in_yaml(tmp_path):
    p = _yaml(tmp_path, "optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError) as ei:
        load_config(TrainCfg, p)
    msg = str(ei.value)
    assert "optim.lrr" in msg and "did you mean 'optim.lr'" in msg and "weight_decay" in msg and str(p) in msg


def test_wrong_type_names_key(tmp_path):
    with pytest.raises(ConfigError, match="max_steps"):
        load_config(TrainCfg, None, ["max_steps=abc"])
    with pytest.raises(ConfigError, match="optim"):
        load_config(TrainCfg, None, ["optim=3"])
    with pytest.raises(ConfigError, match="batch_size"):
        load_config(TrainCfg, _yaml(tmp_path, "batch_size: lots\n"))


def test_malformed_inputs(tmp_path):
    with pytest.raises(ConfigError, match="key=value"):
        load_config(TrainCfg, None, ["max_steps"])
    with pytest.raises(ConfigError, match="mapping"):
        load_config(TrainCfg, _yaml(tmp_path, "- 1\n- 2\n"))
    with pytest.raises(FileNotFoundError):
        load_config(TrainCfg, tmp_path / "nope.yaml")
    assert load_config(TrainCfg, _yaml(tmp_path, "", "empty.yaml")).max_steps == 100


def test_missing_mandatory_value():
    @dataclass
    class Need:
        root: str = MISSING
        n: int = 1

    with pytest.raises(ConfigError, match="root"):
        load_config(Need)
    assert load_config(Need, None, ["root=/data"]).root == "/data"


def test_save_round_trip_and_to_dataclass(tmp_path):
    cfg = load_config(TrainCfg, None, ["max_steps=9", "optim.lr=0.5", "name=${optim.lr}"])
    out = save_config(cfg, tmp_path / "sub" / "config.yaml")
    assert out.exists() and [p.name for p in out.parent.iterdir()] == ["config.yaml"]  # no temp left over
    text = out.read_text()
    assert "max_steps: 9" in text and "${" not in text  # resolved
    back = load_config(TrainCfg, out)
    assert back.max_steps == 9 and back.optim.lr == 0.5 and back.name == "0.5"
    obj = to_dataclass(back, TrainCfg)
    assert isinstance(obj, TrainCfg) and isinstance(obj.optim, OptimCfg) and obj.optim.lr == 0.5
    assert OmegaConf.is_config(back) and not OmegaConf.is_config(obj)
    save_config(obj, tmp_path / "again.yaml")  # dataclass instances save too
    assert load_config(TrainCfg, tmp_path / "again.yaml").max_steps == 9
