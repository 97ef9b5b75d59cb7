"""Tests for aum.train.engine / aum.train.distributed: schedule, decay groups, accumulation, checkpoints, exact resume after
SIGKILL, SIGTERM/SIGUSR1 stops, two-process DDP on the CPU, logging and hooks."""

import errno
import io
import json
import math
import os
import signal
import socket
import subprocess
import sys
import textwrap
import time
from collections import namedtuple
from pathlib import Path

import pytest
import torch
from torch import nn

import aum
from aum.data.samplers import ResumableBatchSampler
from aum.train.distributed import dist_env, move_to_device, rng_state, set_rng_state
from aum.train.config import EngineConfig
from aum.train.engine import Trainer
from aum.train.optim import default_param_groups, lr_at
from aum.train.state import latest_checkpoint, load_train_state
from aum.atomic import DiskFullError
from aum.train.state import write_train_state

ROOT = Path(__file__).resolve().parents[3]
LAUNCH_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT")


pytestmark = pytest.mark.usefixtures("single_process_env")


def clean_env(**extra):
    env = {k: v for k, v in os.environ.items() if k not in LAUNCH_VARS and not k.startswith("SLURM_")}
    env.update(PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1", GLOO_SOCKET_IFNAME="lo", **extra)
    return env


# ------------------------------------------------------------------------------------------- subprocess runs

SCRIPT = textwrap.dedent('''
    import json, os, random, signal, sys, time
    import numpy as np, torch
    from torch import nn
    from aum.train.distributed import cleanup_distributed
    from aum.train.config import EngineConfig
    from aum.train.engine import Trainer

    class Data(torch.utils.data.Dataset):
        def __init__(self, n=20):
            g = torch.Generator().manual_seed(123)
            self.x, self.y = torch.randn(n, 6, generator=g), torch.randn(n, 2, generator=g)
        def __len__(self):
            return len(self.x)
        def __getitem__(self, key):
            epoch, i = key
            noise = torch.randn(6, generator=torch.Generator().manual_seed(epoch * 1000 + i)) * 0.1
            return {"x": self.x[i] + noise, "y": self.y[i], "idx": i}

    args = json.loads(sys.argv[1])
    record, slow, dropout, jitter = args.pop("record"), args.pop("slow", 0.0), args.pop("dropout"), args.pop("jitter")
    rank = int(os.environ.get("RANK", 0))
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 16), nn.GELU(), nn.Dropout(dropout), nn.Linear(16, 2))

    def step_fn(model, batch):
        with open(f"{record}.{rank}", "a") as f:
            f.write(json.dumps(batch["idx"].tolist()) + "\\n")
        if slow:
            time.sleep(slow)
        scale = 1 + 0.01 * (np.random.rand() + random.random()) if jitter else 1.0   # numpy + python RNGs
        loss = ((model(batch["x"]) - batch["y"]) ** 2).mean() * scale
        return loss, {"scale": scale}

    handlers = lambda: [signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)]
    before = handlers()
    trainer = Trainer(model, Data(), EngineConfig(**args), step_fn, dataset_epoch_keys=True)
    res = trainer.fit()
    res["handlers_restored"] = before == handlers()
    torch.save(trainer.module.state_dict(), os.path.join(args["out_dir"], f"final.{rank}.pt"))
    cleanup_distributed()
    print("RESULT " + json.dumps(res), flush=True)
''')


def launch(tmp_path, name, env=None, **cfg):
    script = tmp_path / "run.py"
    if not script.exists():
        script.write_text(SCRIPT)
    args = {"out_dir": str(tmp_path / name), "record": str(tmp_path / f"{name}.idx"), "dropout": 0.3,
            "jitter": True, "deterministic": True, "seed": 3, "lr": 1e-2, "warmup_steps": 2, "log_every": 1,
            "batch_size": 2, **cfg}
    return subprocess.Popen([sys.executable, str(script), json.dumps(args)], cwd=tmp_path, env=env or clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc, timeout=120):
    out, err = proc.communicate(timeout=timeout)
    assert proc.returncode == 0, err[-3000:]
    line = [ln for ln in out.splitlines() if ln.startswith("RESULT ")][-1]
    return json.loads(line[len("RESULT "):])


def records(tmp_path, name, rank=0):
    path = tmp_path / f"{name}.idx.{rank}"
    return [json.loads(ln) for ln in path.read_text().splitlines()] if path.exists() else []


def wait_for(cond, proc, timeout=60):
    t0 = time.time()
    while not cond():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.time() - t0 < timeout, "timed out"
        time.sleep(0.01)


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.subprocess
def test_kill_and_resume_is_bit_exact_and_restores_the_data_position(tmp_path):
    cfg = {"max_steps": 6, "ckpt_every": 2, "grad_accum": 2}      # 20 items / batch 2 / accum 2: epoch = 5 steps
    straight = launch(tmp_path, "straight", **cfg)
    killed = launch(tmp_path, "resumed", slow=0.2, **cfg)
    pointer = tmp_path / "resumed" / "checkpoints" / "last"
    wait_for(lambda: pointer.exists() and pointer.read_text().strip() == "step_00000004.pt", killed)
    killed.kill()
    killed.wait()
    assert not (tmp_path / "resumed" / "checkpoints" / "step_00000006.pt").exists()
    seen_before_kill = records(tmp_path, "resumed")
    assert 8 <= len(seen_before_kill) <= 10                       # 4 steps x 2 micro-batches (+ step 5 started)
    res = finish(launch(tmp_path, "resumed", **cfg))
    ref = finish(straight)
    assert res["step"] == ref["step"] == 6 and res["stopped_by"] == "done"
    assert res["checkpoint"].endswith("step_00000006.pt")
    a = torch.load(tmp_path / "straight" / "final.0.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "final.0.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    seen = records(tmp_path, "resumed")
    assert seen[:8] + seen[len(seen_before_kill):] == records(tmp_path, "straight")
    assert len(seen) - len(seen_before_kill) == 4
    metrics = [json.loads(ln) for ln in (tmp_path / "resumed" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == [1, 2, 3, 4, 5, 6]     # lines of the killed step 5 were dropped


@pytest.mark.subprocess
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_stop_signal_checkpoints_the_current_step_and_returns_cleanly(tmp_path, sig):
    proc = launch(tmp_path, "term", slow=0.1, max_steps=100, ckpt_every=0, dropout=0.0)
    wait_for(lambda: len(records(tmp_path, "term")) >= 3, proc)
    proc.send_signal(sig)                                     # SIGINT: Ctrl-C, handled as SIGTERM
    res = finish(proc, timeout=60)
    assert res["stopped_by"] == "signal" and 3 <= res["step"] < 100 and res["handlers_restored"]
    path = Path(res["checkpoint"])
    assert path.name == f"step_{res['step']:08d}.pt" and latest_checkpoint(tmp_path / "term") == path
    ck = load_train_state(path)
    assert ck["step"] == res["step"] and ck["sampler"]["offset"] == res["step"] % 10
    assert len(records(tmp_path, "term")) == res["step"]


@pytest.mark.ddp
@pytest.mark.subprocess
def test_two_process_ddp_matches_one_process_with_the_global_batch(tmp_path):
    port = free_port()
    common = {"max_steps": 3, "dropout": 0.0, "jitter": False, "clip_grad": 0.5, "ckpt_every": 0, "grad_accum": 2}
    ranks = [launch(tmp_path, "ddp", env=clean_env(RANK=str(r), WORLD_SIZE="2", LOCAL_RANK=str(r),
                                                  MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port)),
                    batch_size=4, **common) for r in range(2)]
    single = launch(tmp_path, "single", batch_size=8, **common)
    results = [finish(p) for p in ranks]
    finish(single)
    assert [r["step"] for r in results] == [3, 3]
    one = torch.load(tmp_path / "single" / "final.0.pt", weights_only=True)
    for r in range(2):
        two = torch.load(tmp_path / "ddp" / f"final.{r}.pt", weights_only=True)
        for k in one:
            assert torch.allclose(one[k], two[k], rtol=0, atol=1e-6), k
    r0, r1, s = records(tmp_path, "ddp", 0), records(tmp_path, "ddp", 1), records(tmp_path, "single")
    assert len(s) == 6 and [sorted(a + b) for a, b in zip(r0, r1)] == [sorted(x) for x in s]   # no_sync path
    assert all(not set(a) & set(b) for a, b in zip(r0, r1))
    ck = load_train_state(tmp_path / "ddp" / "checkpoints" / "step_00000003.pt")
    assert len(ck["rng"]) == 2 and ck["engine"]["world_size"] == 2


# ------------------------------------------------------------------------------------------- in-process units

def test_lr_schedule_by_hand():
    c = EngineConfig(lr=1.0, min_lr=0.1, warmup_steps=4, max_steps=14)
    assert [lr_at(s, c) for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_at(4, c) == 1.0 and math.isclose(lr_at(14, c), 0.1) and math.isclose(lr_at(9, c), 0.55)
    assert all(lr_at(s, c) > lr_at(s + 1, c) for s in range(4, 14))
    c = EngineConfig(lr=1.0, warmup_steps=2, schedule="step", decay_start=5, decay_every=3, decay_factor=0.5)
    assert [lr_at(s, c) for s in range(12)] == [0.5, 1, 1, 1, 1, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25, 0.125]
    c = EngineConfig(lr=2.0, warmup_steps=0, schedule="constant")
    assert lr_at(0, c) == lr_at(999, c) == 2.0
    with pytest.raises(ValueError, match="schedule"):
        EngineConfig(schedule="linear")


def test_no_decay_groups_on_the_real_encoder():
    model = aum.create_model("tiny", depth=1, num_classes=3, mixer="v2")
    model.mask_token = nn.Parameter(torch.zeros(1, 1, 192))
    decay, exempt = default_param_groups(model, 0.05)
    assert decay["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    names = {id(p): n for n, p in model.named_parameters()}
    exempt_names = {names[id(p)] for p in exempt["params"]}
    decay_names = {names[id(p)] for p in decay["params"]}
    assert {"pos_embed.pos_embed", "cls_token", "mask_token", "layers.0.mixer.A_log", "layers.0.mixer.A_b_log",
            "layers.0.mixer.D", "layers.0.mixer.D_b", "head.bias", "norm_f.weight"} <= exempt_names
    assert {"patch_embed.proj.weight", "layers.0.mixer.in_proj.weight", "head.weight"} <= decay_names
    assert all(p.ndim >= 2 for p in decay["params"]) and len(decay_names | exempt_names) == len(names)


class Pairs(torch.utils.data.Dataset):
    def __init__(self, n=8, d=5):
        g = torch.Generator().manual_seed(7)
        self.x, self.y = torch.randn(n, d, generator=g), torch.randn(n, 1, generator=g)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


def mse_step(model, batch):
    x, y = batch
    return ((model(x) - y) ** 2).mean(), {}


def linear():
    torch.manual_seed(0)
    return nn.Linear(5, 1)


def test_grad_accumulation_2x4_equals_one_batch_of_8(tmp_path):
    finals = []
    for bs, accum in ((8, 1), (4, 2)):
        cfg = EngineConfig(out_dir=str(tmp_path / f"b{bs}"), max_steps=2, batch_size=bs, grad_accum=accum, lr=0.05,
                           warmup_steps=0, schedule="constant", ckpt_every=0, clip_grad=0.1)
        t = Trainer(linear(), Pairs(), cfg, mse_step)
        assert t.fit()["step"] == 2
        finals.append([p.detach().clone() for p in t.module.parameters()])
    start = [p.detach() for p in linear().parameters()]
    assert not torch.allclose(finals[0][0], start[0])
    assert all(torch.allclose(a, b, rtol=0, atol=1e-6) for a, b in zip(*finals))


def test_checkpoints_rotate_logs_hooks_and_a_finished_run_resumes_to_nothing(tmp_path):
    torch.manual_seed(0)
    model = aum.create_model("tiny", depth=1, num_classes=3, target_frames=32)
    data = [(torch.randn(32, 128), i % 3) for i in range(8)]
    calls, exports = [], []

    def step_fn(model, batch):
        x, y = batch
        return nn.functional.cross_entropy(model(x), y), {"acc": (model(x).argmax(1) == y).float().mean()}

    def visualise(model, batch, step, path):
        calls.append((step, path, model.training, torch.is_grad_enabled(), batch[0].shape))
        path.write_bytes(b"png")

    cfg = EngineConfig(out_dir=str(tmp_path / "run"), max_steps=7, batch_size=2, ckpt_every=2, keep_last=2,
                       log_every=1, image_every=3, warmup_steps=2, lr=1e-3)
    res = Trainer(model, data, cfg, step_fn, visualise=visualise,
                  export=lambda m, d: exports.append((d, m is model))).fit()
    ckdir = tmp_path / "run" / "checkpoints"
    assert res["step"] == 7 and res["stopped_by"] == "done" and res["checkpoint"] == str(ckdir / "step_00000007.pt")
    assert sorted(os.listdir(ckdir)) == ["last", "step_00000006.pt", "step_00000007.pt"]
    assert (ckdir / "last").read_text().strip() == "step_00000007.pt"
    for step in (6, 7):
        ck = load_train_state(ckdir / f"step_{step:08d}.pt")
        assert ck["step"] == step and ck["scheduler"]["last_epoch"] == step and ck["config"]["max_steps"] == 7
        assert ck["model"].keys() == model.state_dict().keys() and ck["optimizer"]["state"]
        assert ck["sampler"] == {"epoch": step // 4, "offset": step % 4, "batches_per_epoch": 4, "global_batch": 2}
    assert exports == [(tmp_path / "run", True)] * 4                  # after the saves of steps 2, 4, 6, 7
    assert [(c[0], c[1].name) for c in calls] == [(3, "step_00000003.png"), (6, "step_00000006.png")]
    assert all(not c[2] and not c[3] and c[4] == (2, 32, 128) for c in calls) and model.training
    assert (tmp_path / "run" / "images" / "step_00000006.png").exists()
    metrics = [json.loads(ln) for ln in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics] == list(range(1, 8))
    assert all(math.isclose(m["lr"], lr_at(m["step"] - 1, cfg)) for m in metrics)
    assert {"loss", "lr", "samples_per_s", "elapsed", "acc", "grad_norm"} <= metrics[0].keys()
    assert any(p.name.startswith("events.out.tfevents") for p in (tmp_path / "run" / "tb").iterdir())
    assert "checkpoint" in (tmp_path / "run" / "log.txt").read_text()
    again = Trainer(aum.create_model("tiny", depth=1, num_classes=3, target_frames=32), data, cfg, step_fn,
                    export=lambda m, d: exports.append((d, True)))
    res2 = again.fit()
    assert res2["step"] == 7 and res2["checkpoint"] == res["checkpoint"] and len(exports) == 5
    assert all(torch.equal(a, b) for a, b in zip(again.module.state_dict().values(), model.state_dict().values()))


def test_loader_workers_see_the_same_batches_as_the_main_process(tmp_path):
    class Keyed(Pairs):
        def __getitem__(self, key):
            epoch, i = key
            return self.x[i] * (1 + epoch), torch.tensor(i)

    seen = {}
    for workers in (0, 2):
        def step_fn(model, batch, log=seen.setdefault(workers, [])):
            log.append((batch[1].tolist(), batch[0].sum().item()))
            return model(batch[0]).pow(2).mean(), {}
        cfg = EngineConfig(out_dir=str(tmp_path / str(workers)), max_steps=5, batch_size=3, ckpt_every=0,
                           num_workers=workers)
        Trainer(linear(), Keyed(), cfg, step_fn, dataset_epoch_keys=True).fit()
    assert seen[0] == seen[2] and len(seen[0]) == 5


def test_non_finite_loss_names_the_step_and_saves_nothing_new(tmp_path):
    n = {"calls": 0}

    def step_fn(model, batch):
        n["calls"] += 1
        loss, m = mse_step(model, batch)
        return (loss * float("nan") if n["calls"] == 3 else loss), m

    cfg = EngineConfig(out_dir=str(tmp_path), max_steps=5, batch_size=2, ckpt_every=2)
    with pytest.raises(FloatingPointError, match="step 3"):
        Trainer(linear(), Pairs(), cfg, step_fn).fit()
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["last", "step_00000002.pt"]


def test_sigusr1_in_process_stops_after_the_step(tmp_path):
    before = signal.getsignal(signal.SIGUSR1)
    n = {"calls": 0}

    def step_fn(model, batch):
        n["calls"] += 1
        if n["calls"] == 2:
            os.kill(os.getpid(), signal.SIGUSR1)
        return mse_step(model, batch)

    res = Trainer(linear(), Pairs(), EngineConfig(out_dir=str(tmp_path), max_steps=50, batch_size=2,
                                                  ckpt_every=0), step_fn).fit()
    assert res["stopped_by"] == "signal" and res["step"] == 2 and n["calls"] == 2
    assert load_train_state(res["checkpoint"])["step"] == 2 and signal.getsignal(signal.SIGUSR1) is before


def test_sampler_splits_ranks_resumes_and_yields_epoch_keys():
    one = ResumableBatchSampler(21, 4, seed=5)
    ranks = [ResumableBatchSampler(21, 2, rank=r, world_size=2, seed=5) for r in range(2)]
    assert one.batches_per_epoch == ranks[0].batches_per_epoch == 5
    it1, it2 = iter(one), [iter(r) for r in ranks]
    seq = [next(it1) for _ in range(12)]
    for b in seq:
        parts = [next(i) for i in it2]
        assert sorted(parts[0] + parts[1]) == sorted(b) and not set(parts[0]) & set(parts[1])
    assert sorted(sum(seq[:5], [])) == sorted(set(sum(seq[:5], []))) and seq[:5] != seq[5:10]
    again = ResumableBatchSampler(21, 4, seed=5)
    again.set_position(*one.position_after(7))
    assert again.position_after(0) == (1, 2) and [next(iter(again)) for _ in range(1)] == [seq[7]]
    it = iter(again)
    assert [next(it) for _ in range(5)] == seq[7:12]
    keyed = ResumableBatchSampler(21, 4, seed=5, epoch_keys=True)
    k = iter(keyed)
    assert [next(k) for _ in range(6)][5] == [(1, i) for i in seq[5]]
    with pytest.raises(ValueError, match="smaller than one global batch"):
        ResumableBatchSampler(7, 4, world_size=2)


def test_dist_env_torchrun_slurm_and_batch_script(monkeypatch):
    monkeypatch.setattr("aum.train.distributed.shutil.which", lambda _: None)
    env = {"RANK": "3", "WORLD_SIZE": "8", "LOCAL_RANK": "1", "MASTER_ADDR": "n1", "MASTER_PORT": "1234",
           "SLURM_PROCID": "0"}
    assert dist_env(env) == {"launcher": "torchrun", "rank": 3, "world_size": 8, "local_rank": 1,
                             "master_addr": "n1", "master_port": 1234}
    slurm = {"SLURM_PROCID": "5", "SLURM_NTASKS": "8", "SLURM_STEP_NUM_TASKS": "8", "SLURM_LOCALID": "1",
             "SLURM_JOB_NODELIST": "gpu[07-09,12],cpu1", "SLURM_JOB_ID": "123456"}
    assert dist_env(slurm) == {"launcher": "slurm", "rank": 5, "world_size": 8, "local_rank": 1,
                               "master_addr": "gpu07", "master_port": 10000 + 123456 % 20000}
    assert dist_env({**slurm, "SLURM_JOB_NODELIST": "node1,node2", "MASTER_PORT": "999"})["master_addr"] == "node1"
    assert dist_env({**slurm, "MASTER_PORT": "999"})["master_port"] == 999
    batch_script = {"SLURM_PROCID": "0", "SLURM_NTASKS": "4", "SLURM_JOB_ID": "1"}
    assert dist_env(batch_script)["world_size"] == 1 and dist_env({})["launcher"] == "single"


def test_rng_snapshot_survives_weights_only_and_batches_move(tmp_path):
    import random

    import numpy as np
    snap = rng_state()
    torch.save(snap, tmp_path / "rng.pt")
    first = (torch.rand(3), np.random.rand(3), random.random())
    set_rng_state(torch.load(tmp_path / "rng.pt", weights_only=True))
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and (first[1] == again[1]).all() and first[2] == again[2]
    NT = namedtuple("NT", "a b")
    moved = move_to_device({"x": [torch.ones(1), (NT(torch.zeros(1), "s"),)], "n": 3}, torch.device("cpu"))
    assert isinstance(moved["x"][1][0], NT) and moved["x"][1][0].b == "s" and moved["n"] == 3


class _FillsUp(io.RawIOBase):
    """A writable stream that passes ``limit`` bytes on to ``inner``, then fails like a full disk."""

    def __init__(self, inner, limit):
        self.inner, self.left = inner, limit

    def writable(self):
        return True

    def write(self, b):
        if len(b) > self.left:
            raise OSError(errno.ENOSPC, "No space left on device")
        self.left -= len(b)
        return self.inner.write(b)


@pytest.mark.parametrize("how", ["torch_writer", "first_write", "path_writer_text"])
def test_disk_full_names_the_file_and_the_last_good_checkpoint_which_stays_intact(tmp_path, monkeypatch, how):
    real_save, saves = torch.save, []

    def save(obj, f, *a, **k):
        saves.append(obj["step"])
        if len(saves) < 2:                                   # the checkpoint of step 2 is written in full
            return real_save(obj, f, *a, **k)
        if how == "path_writer_text":                        # what torch.save(obj, "path") says on a full disk
            f.write(b"partial")
            raise RuntimeError("[enforce fail at inline_container.cc:783] . PytorchStreamWriter failed writing "
                               "file data/3: file write failed")
        # torch's own writer: an OSError on the first write passes through; later ones become its RuntimeError
        return real_save(obj, _FillsUp(f, 0 if how == "first_write" else 100), *a, **k)

    monkeypatch.setattr(torch, "save", save)
    cfg = EngineConfig(out_dir=str(tmp_path), max_steps=5, batch_size=2, ckpt_every=2)
    ckdir = tmp_path / "checkpoints"
    with pytest.raises(OSError) as err:
        Trainer(linear(), Pairs(), cfg, mse_step).fit()
    assert isinstance(err.value, DiskFullError) and err.value.errno == errno.ENOSPC and saves == [2, 4]
    assert str(err.value) == (f"no space left on device writing {ckdir / 'step_00000004.pt'}; "
                              f"the last good checkpoint is {ckdir / 'step_00000002.pt'}")
    assert sorted(os.listdir(ckdir)) == ["last", "step_00000002.pt"]          # no temporary file left behind
    assert load_train_state(ckdir / "step_00000002.pt")["step"] == 2
    assert latest_checkpoint(tmp_path) == ckdir / "step_00000002.pt"


def test_other_write_errors_pass_through_and_a_first_checkpoint_names_none(tmp_path, monkeypatch):
    def denied(obj, f, *a, **k):
        raise PermissionError(errno.EACCES, "Permission denied")

    monkeypatch.setattr(torch, "save", denied)
    with pytest.raises(PermissionError, match="Permission denied"):
        write_train_state(tmp_path, tmp_path / "step_00000001.pt", {"step": 1}, keep_last=0)
    monkeypatch.setattr(torch, "save", lambda obj, f: (_ for _ in ()).throw(OSError(errno.ENOSPC, "No space")))
    with pytest.raises(DiskFullError, match=r"step_00000001\.pt; the last good checkpoint is none"):
        write_train_state(tmp_path, tmp_path / "step_00000001.pt", {"step": 1}, keep_last=0)
    assert os.listdir(tmp_path) == []
