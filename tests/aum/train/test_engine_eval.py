"""The engine's evaluation hook and best-on-validation selection (aum.train.selection), and the multistep schedule."""
import json

import pytest
import torch
from torch import nn

from aum.train.config import EngineConfig
from aum.train.engine import Trainer
from aum.train.optim import lr_at
from aum.train.selection import BestKeeper, best_checkpoint, load_best



pytestmark = pytest.mark.usefixtures("single_process_env")


class Data(torch.utils.data.Dataset):
    def __init__(self, n=16):
        g = torch.Generator().manual_seed(5)
        self.x, self.y = torch.randn(n, 4, generator=g), torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


def make_model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.Dropout(0.3), nn.Linear(8, 1))


SCORES = {2: 0.3, 4: 0.9, 6: 0.5, 8: 0.9, 10: 0.7}     # step 4 wins (a tie later keeps the earlier step)


class Crash(RuntimeError):
    pass


def run(out_dir, evaluate=True, crash_at=None, **cfg):
    calls = {"n": 0}
    snapshots = {}

    def step_fn(model, batch):
        calls["n"] += 1
        if crash_at is not None and calls["n"] == crash_at:
            raise Crash("simulated kill")
        return ((model(batch["x"]) - batch["y"]) ** 2).mean(), {}

    def evaluate_fn(model, step):
        assert not model.training and not torch.is_grad_enabled()
        torch.rand(3)                                   # must not disturb the training RNG stream
        snapshots[step] = {k: v.clone() for k, v in model.state_dict().items()}
        return {"valid_score": SCORES[step], "valid_loss": 1.0 - SCORES[step]}

    config = EngineConfig(out_dir=str(out_dir), max_steps=10, batch_size=4, lr=1e-2, warmup_steps=0,
                          schedule="constant", ckpt_every=3, eval_every=2, select_metric="valid_score",
                          log_every=5, device="cpu", **cfg)
    trainer = Trainer(make_model(), Data(), config, step_fn, evaluate=evaluate_fn if evaluate else None)
    return trainer.fit(), trainer, snapshots


def test_multistep_schedule_and_validation():
    cfg = EngineConfig(lr=1.0, warmup_steps=2, schedule="multistep", milestones=(10, 20),
                       milestone_factors=(0.05, 0.01))
    assert [lr_at(s, cfg) for s in (0, 1, 2, 9, 10, 19, 20, 99)] == [0.5, 1.0, 1.0, 1.0, 0.05, 0.05, 0.01, 0.01]
    with pytest.raises(ValueError, match="milestones"):
        EngineConfig(schedule="multistep", milestones=(10,), milestone_factors=(0.5, 0.1))
    with pytest.raises(ValueError, match="select_mode"):
        EngineConfig(select_mode="best")


def test_evaluate_selects_best_weights_and_logs(tmp_path):
    summary, trainer, snaps = run(tmp_path / "a")
    assert summary["best"]["step"] == 4 and summary["best"]["score"] == 0.9
    assert sorted(snaps) == [2, 4, 6, 8, 10]                       # every eval_every steps + the last step
    best = load_best(tmp_path / "a")
    assert best["step"] == 4 and best["metrics"]["valid_loss"] == pytest.approx(0.1)
    for k, v in snaps[4].items():
        assert torch.equal(best["model"][k], v)
    assert [p.name for p in (tmp_path / "a" / "checkpoints").glob("best_step_*.pt")] == ["best_step_00000004.pt"]
    lines = [json.loads(ln) for ln in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    evals = [ln for ln in lines if ln.get("eval")]
    assert [e["step"] for e in evals] == [2, 4, 6, 8, 10]
    assert [e["best_step"] for e in evals] == [2, 4, 4, 4, 4]
    assert evals[0]["epoch"] == pytest.approx(0.5)                   # 4 batches per epoch
    # the hook's own RNG use and eval mode leave training unchanged
    _, plain, _ = run(tmp_path / "b", evaluate=False)
    for k, v in plain.module.state_dict().items():
        assert torch.equal(trainer.module.state_dict()[k], v)


def test_selection_survives_a_crash_and_resume(tmp_path):
    _, ref, ref_snaps = run(tmp_path / "ref")
    with pytest.raises(Crash):
        run(tmp_path / "x", crash_at=5)          # checkpoint at step 3, best written at step 4, killed in step 5
    ckdir = tmp_path / "x" / "checkpoints"
    assert (ckdir / "best_step_00000004.pt").is_file()
    summary, resumed, _ = run(tmp_path / "x")
    assert summary["best"]["step"] == 4
    best = load_best(tmp_path / "x")
    for k, v in ref_snaps[4].items():
        assert torch.allclose(best["model"][k], v, atol=1e-6)
    for k, v in ref.module.state_dict().items():
        assert torch.allclose(resumed.module.state_dict()[k], v, atol=1e-6)
    assert best_checkpoint(tmp_path / "x").name == "best_step_00000004.pt"
    assert len(list(ckdir.glob("best_step_*.pt"))) == 1


def test_best_keeper_drops_files_from_a_lost_future(tmp_path):
    model = nn.Linear(2, 1)
    keeper = BestKeeper(tmp_path, "acc", "max")
    keeper.update(2, {"acc": 0.5}, model)
    keeper.committed()
    state = keeper.state_dict()
    keeper.update(5, {"acc": 0.8}, model)                   # after the checkpoint: a future a resume replays
    assert (tmp_path / "best_step_00000002.pt").is_file()    # still named by the checkpoint: kept
    fresh = BestKeeper(tmp_path, "acc", "max")
    fresh.load_state_dict(state, resumed_step=3)
    assert fresh.step == 2 and fresh.score == 0.5
    assert not (tmp_path / "best_step_00000005.pt").exists()
    assert (tmp_path / "best").read_text().strip() == "best_step_00000002.pt"
    assert not fresh.update(6, {"acc": float("nan")}, model)
    with pytest.raises(KeyError, match="acc"):
        fresh.update(7, {"loss": 1.0}, model)
    low = BestKeeper(tmp_path / "min", "loss", "min")
    assert low.update(1, {"loss": 2.0}, model) and low.update(2, {"loss": 1.0}, model)
    assert not low.update(3, {"loss": 1.5}, model)
