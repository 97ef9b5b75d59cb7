"""Masked-spectrogram pretraining: masks, objectives, the end-to-end run and its outputs."""
import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torch.nn.functional as F
from safetensors.torch import load_file

from aum.checkpoint import load_checkpoint
from aum.models import create_model
from pretrain.masking import STRATEGIES, make_mask, n_masked, patchify, unpatchify
from pretrain.objectives import MAEObjective, SSASTObjective
from pretrain.run import main as pretrain_main
from pretrain.run import run as pretrain_run

REPO = Path(__file__).resolve().parents[2]


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("grid,ratio", [((8, 64), 400 / 512), ((8, 8), 0.75), ((8, 13), 0.5)])
def test_masks_hide_exactly_the_requested_count(strategy, grid, ratio):
    g = torch.Generator().manual_seed(0)
    m = make_mask(4, grid, ratio, strategy, generator=g)
    n = grid[0] * grid[1]
    k = n_masked(n, ratio)
    assert m.mask.shape == (4, n) and m.keep.shape == (4, n - k) and m.hidden.shape == (4, k)
    assert (m.mask.sum(1) == k).all()
    for row in range(4):
        assert torch.equal(m.mask[row].nonzero().squeeze(1), m.hidden[row])
        assert torch.equal(torch.sort(torch.cat([m.keep[row], m.hidden[row]])).values, torch.arange(n))
        assert (m.keep[row].diff() > 0).all()                       # visible tokens keep their order
    if grid == (8, 64) and strategy == "random":
        assert k == 400


def test_structured_masks_have_their_structure():
    g = torch.Generator().manual_seed(1)
    grid = (8, 64)
    time_mask = make_mask(3, grid, 0.5, "time", span=4, generator=g).mask.view(3, 8, 64)
    full_columns = time_mask.all(dim=1).sum(1)                       # columns masked at every frequency
    assert (full_columns >= 31).all()                                # 256 of 512 = 32 columns, last maybe partial
    freq_mask = make_mask(3, grid, 0.5, "frequency", span=2, generator=g).mask.view(3, 8, 64)
    assert (freq_mask.all(dim=2).sum(1) == 4).all()                  # 4 whole frequency rows
    cluster = make_mask(3, grid, 0.5, "cluster", generator=g).mask.view(3, 1, 8, 64).float()
    blocks = F.avg_pool2d(cluster, 3, stride=1)                      # some 3x3 squares fully masked
    assert (blocks == 1).flatten(1).any(1).all()
    rand = make_mask(200, grid, 0.5, "random", generator=g).mask.float().mean(0)
    assert rand.min() > 0.3 and rand.max() < 0.7                     # unstructured: every patch alike


def test_patchify_matches_the_encoder_token_order():
    torch.manual_seed(0)
    enc = create_model("tiny", depth=1).double()
    fbank = torch.randn(2, 80, 128, dtype=torch.float64)
    tokens = enc.patch_embed(fbank.unsqueeze(1).transpose(2, 3))
    w = enc.patch_embed.proj.weight.reshape(192, -1)                 # [D, 16*16] over (freq, time)
    expected = patchify(fbank) @ w.T + enc.patch_embed.proj.bias
    torch.testing.assert_close(tokens, expected)
    torch.testing.assert_close(unpatchify(patchify(fbank), (8, 5)), fbank)


@pytest.mark.parametrize("objective_cls", [SSASTObjective, MAEObjective])
def test_objectives_forward_backward_reach_every_parameter(objective_cls):
    torch.manual_seed(0)
    obj = objective_cls(create_model("tiny", depth=2, target_frames=64))
    loss, metrics, details = obj({"fbank": torch.randn(3, 64, 128)})
    assert torch.isfinite(loss) and loss.ndim == 0 and "mse" in metrics
    loss.backward()
    for name, p in obj.named_parameters():
        assert p.grad is not None and p.grad.abs().sum() > 0, name
    assert details["recon"].shape == (3, details["mask"].hidden.shape[1], 256)


def test_mae_encoder_sees_only_visible_patches():
    torch.manual_seed(0)
    obj = MAEObjective(create_model("tiny", depth=1, target_frames=128), mask_ratio=0.75)
    seen = []
    obj.encoder.layers[0].register_forward_hook(lambda mod, inp, out: seen.append(inp[0].shape[1]))
    obj({"fbank": torch.randn(2, 128, 128)})
    assert seen == [64 - 48 + 1]                                     # 16 visible patches + the class token


def test_ssast_infonce_is_clip_internal_and_uses_weight_ten():
    torch.manual_seed(0)
    obj = SSASTObjective(create_model("tiny", depth=1, target_frames=64))
    torch.manual_seed(5)
    loss, metrics, _ = obj({"fbank": torch.randn(2, 64, 128)})
    assert loss.item() == pytest.approx(metrics["nce"] + 10.0 * metrics["mse"], rel=1e-5)
    assert 0.0 <= metrics["nce_acc"] <= 1.0


def _run(tmp_path, *overrides):
    out = tmp_path / "run"
    summary = pretrain_run([f"engine.out_dir={out}", "model.depth=2", "data.crop_frames=128",
                             "engine.batch_size=8", "engine.log_every=1", "engine.device=cpu", *overrides])
    return out, summary


def _losses(out):
    return [json.loads(line)["loss"] for line in (out / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_pretraining_loss_falls_and_the_encoder_loads_alone(tmp_path):
    out, summary = _run(tmp_path, "engine.max_steps=40", "engine.lr=1e-3", "engine.warmup_steps=5",
                        "engine.ckpt_every=20", "engine.image_every=20", "mask.strategy=cluster")
    losses = _losses(out)
    assert len(losses) == 40
    assert np.mean(losses[-5:]) < 0.8 * np.mean(losses[:5]), losses
    encoder = load_checkpoint(out / "encoder.safetensors")          # no decoder / heads needed
    assert encoder.config.depth == 2 and encoder.config.num_classes == 0
    keys = set(encoder.state_dict())
    assert not any(k.startswith(("disc_head", "gen_head", "decoder", "mask_token")) for k in keys)
    assert (out / "config.yaml").exists() and sorted(p.name for p in (out / "images").glob("*.png"))
    assert (out / "tb").is_dir()


@pytest.mark.slow
def test_mae_pretraining_runs_end_to_end(tmp_path):
    out, _ = _run(tmp_path, "objective.name=mae", "engine.max_steps=6", "mask.strategy=time")
    assert len(_losses(out)) == 6
    assert load_checkpoint(out / "encoder.safetensors").config.mixer == "v1"


def _write_folder(folder, n_good=6):
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(n_good):
        sf.write(folder / f"good_{i}.wav", (0.1 * rng.standard_normal(16000 * 2)).astype("float32"), 16000)
    (folder / "corrupt.wav").write_bytes(b"RIFF this is not audio at all" * 10)
    sf.write(folder / "empty.flac", np.zeros(0, dtype="float32"), 16000)
    return folder


@pytest.mark.slow
def test_bad_files_are_skipped_counted_and_reported(tmp_path):
    data = _write_folder(tmp_path / "audio")
    out, summary = _run(tmp_path, f"data.source={data}", "engine.max_steps=4", "engine.batch_size=4")
    assert len(_losses(out)) == 4
    bad = [json.loads(line) for line in (out / "bad_files.jsonl").read_text().splitlines()]
    names = {b["path"].rsplit("/", 1)[-1] for b in bad}
    assert names == {"corrupt.wav", "empty.flac"}
    assert "corrupt.wav" in summary["bad_files"] and "empty.flac" in summary["bad_files"]


def test_folder_without_audio_is_an_error_before_training(tmp_path):
    (tmp_path / "nothing").mkdir()
    (tmp_path / "nothing" / "notes.txt").write_text("no audio here")
    with pytest.raises(ValueError, match="nothing"):
        _run(tmp_path, f"data.source={tmp_path / 'nothing'}", "engine.max_steps=2")
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_mistyped_key_lists_the_valid_ones(tmp_path):
    with pytest.raises(ValueError, match="crop_frames"):
        _run(tmp_path, "data.crop_frame=64")


def test_a_dass_preset_is_refused_naming_the_option(tmp_path, capsys):
    """The objectives need AuM internals (patch grid, embed()): a DASS preset fails the config check, exit 2."""
    assert pretrain_main(["model.preset=dass_tiny", f"engine.out_dir={tmp_path / 'r'}"]) == 2
    err = capsys.readouterr().err
    assert "model.preset 'dass_tiny' is a DASS preset, but pretraining (its objectives use the AuM patch grid and " \
           "embed()) builds only AuM encoders: one of base, small, tiny" in err
    assert not (tmp_path / "r").exists()


# ------------------------------------------------------------------ the real command: seeding, resume, config.yaml

TINY = ["model.depth=2", "data.crop_frames=128", "data.synth_clips=64", "engine.batch_size=4", "engine.max_steps=8",
        "engine.ckpt_every=2", "engine.log_every=1", "engine.warmup_steps=1", "engine.device=cpu",
        "engine.deterministic=true", "engine.seed=3"]


def _command(out, *extra):
    """``python -m pretrain`` with the tiny settings, as a child process (nothing seeded by the test)."""
    return subprocess.Popen([sys.executable, "-m", "pretrain", *TINY, f"engine.out_dir={out}", *extra],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(proc, timeout=300):
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err


def _encoder(out):
    return load_file(str(out / "encoder.safetensors"))


def _same_encoder(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def _wait_until(cond, proc, timeout=240):
    t0 = time.monotonic()
    while not cond():
        assert proc.poll() is None, proc.communicate()[1][-3000:]
        assert time.monotonic() - t0 < timeout, "timed out"
        time.sleep(0.01)


@pytest.fixture(scope="module")
def reference_run(tmp_path_factory):
    """One fresh run of the tiny command: its folder."""
    out = tmp_path_factory.mktemp("pretrain_ref") / "run"
    rc, _, err = _finish(_command(out))
    assert rc == 0, err[-3000:]
    return out


@pytest.mark.subprocess                   # reference_run: the real `python -m pretrain`
def test_same_command_gives_the_same_encoder_and_a_killed_run_resumes_to_it(reference_run, tmp_path):
    rc, stdout, err = _finish(_command(tmp_path / "again"))
    assert rc == 0, err[-3000:]
    assert "pretraining done at step 8" in stdout
    assert _losses(tmp_path / "again") == _losses(reference_run)          # the step-1 loss too
    assert _same_encoder(_encoder(tmp_path / "again"), _encoder(reference_run))

    killed = _command(tmp_path / "killed")
    pointer = tmp_path / "killed" / "checkpoints" / "last"
    _wait_until(lambda: pointer.exists() and pointer.read_text().strip() == "step_00000002.pt", killed)
    killed.kill()                                                          # SIGKILL: no final checkpoint
    killed.communicate()
    assert not (tmp_path / "killed" / "checkpoints" / "step_00000008.pt").exists()
    rc, _, err = _finish(_command(tmp_path / "killed"))
    assert rc == 0, err[-3000:]
    assert "resumed from" in (tmp_path / "killed" / "log.txt").read_text()
    assert _losses(tmp_path / "killed") == _losses(reference_run)
    assert _same_encoder(_encoder(tmp_path / "killed"), _encoder(reference_run))


@pytest.mark.subprocess
def test_ctrl_c_writes_a_checkpoint_exits_3_and_the_rerun_resumes(reference_run, tmp_path):
    out = tmp_path / "int"
    proc = _command(out)
    _wait_until(lambda: (out / "metrics.jsonl").exists() and len(_losses(out)) >= 1, proc)
    proc.send_signal(signal.SIGINT)
    rc, _, err = _finish(proc)
    assert rc == 3, err[-3000:]
    assert "stopped by a signal" in err and "run the same command again to resume" in err and "Traceback" not in err
    step = int(re.search(r"stopped by a signal at step (\d+)", err).group(1))
    assert 1 <= step < 8
    assert (out / "checkpoints" / "last").read_text().strip() == f"step_{step:08d}.pt"
    rc, _, err = _finish(_command(out))
    assert rc == 0, err[-3000:]
    assert _same_encoder(_encoder(out), _encoder(reference_run))


@pytest.mark.subprocess
def test_a_failed_start_leaves_the_run_config_alone(reference_run, tmp_path):
    before = (reference_run / "config.yaml").read_text()
    for bad in (["engine.optimizer=sgd"], ["data.source=/nonexistent/audio"], ["objective.name=byol"]):
        with pytest.raises((ValueError, OSError)):
            pretrain_run([*TINY, f"engine.out_dir={reference_run}", *bad])
        assert (reference_run / "config.yaml").read_text() == before, bad
    with pytest.raises(ValueError, match=r"has checkpoints of a different config.*engine\.lr: 0\.0002 in the run, "
                                         r"0\.001 now.*model\.depth: 2 in the run, 3 now"):
        pretrain_run([*TINY, f"engine.out_dir={reference_run}", "engine.lr=1e-3", "model.depth=3"])
    assert (reference_run / "config.yaml").read_text() == before
    fresh = tmp_path / "fresh"                                   # no checkpoints: a failed start writes nothing
    with pytest.raises(ValueError):
        pretrain_run([*TINY, f"engine.out_dir={fresh}", "engine.optimizer=sgd"])
    assert not (fresh / "config.yaml").exists()


def test_main_returns_exit_statuses(tmp_path, capsys):
    assert pretrain_main(["--help"]) == 0
    assert pretrain_main(["engine.typo=1"]) == 2
    err = capsys.readouterr().err
    assert "unknown config key 'engine.typo'" in err and "Valid keys under engine" in err
    assert pretrain_main([*TINY, f"engine.out_dir={tmp_path / 'r'}", "engine.max_steps=1"]) == 0
