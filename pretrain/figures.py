"""A picture of what pretraining learns: input, masked input and reconstruction of one clip."""
from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import torch  # noqa: E402

from aum.atomic import atomic_write  # noqa: E402
from pretrain.masking import patchify, unpatchify  # noqa: E402


@torch.no_grad()
def reconstruction_panels(objective, fbank: torch.Tensor) -> dict[str, torch.Tensor]:
    """Run ``objective`` on one clip ``[1, frames, mel]``; return ``input``, ``masked`` and ``reconstruction``
    spectrograms ``[frames, mel]`` (masked patches shown as the clip's minimum; MAE predictions are mapped
    back from per-patch-normalised units with the true patch statistics, as MAE figures do)."""
    _, _, details = objective({"fbank": fbank})
    m, recon, stats = details["mask"], details["recon"].float(), details["target_norm"]
    if stats is not None:
        mean, var = stats
        recon = recon * (var + 1e-6).sqrt() + mean
    patch = objective.encoder.config.patch_size
    grid = objective.encoder.config.grid(fbank.shape[1], fbank.shape[2])
    patches = patchify(fbank.float(), patch)
    index = m.hidden.unsqueeze(-1).expand(-1, -1, patches.shape[-1])
    masked = patches.clone()
    masked.scatter_(1, index, torch.full_like(recon, float(fbank.min())))
    filled = patches.clone()
    filled.scatter_(1, index, recon)
    return {"input": unpatchify(patches, grid, patch)[0], "masked": unpatchify(masked, grid, patch)[0],
            "reconstruction": unpatchify(filled, grid, patch)[0]}


def save_reconstruction_png(objective, batch: dict, step: int, path: Path) -> Path:
    """Write a three-panel PNG (input / masked / reconstruction) of the batch's first clip to ``path``."""
    was_training = objective.training
    objective.eval()
    try:
        panels = reconstruction_panels(objective, batch["fbank"][:1])
    finally:
        objective.train(was_training)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, axes = plt.subplots(3, 1, figsize=(10, 6.5), sharex=True)
    lo, hi = float(panels["input"].min()), float(panels["input"].max())
    for ax, (title, spec) in zip(axes, panels.items()):
        ax.imshow(spec.T.cpu().numpy(), origin="lower", aspect="auto", cmap="magma", vmin=lo, vmax=hi)
        ax.set_title(title, fontsize=9, loc="left")
        ax.set_ylabel("mel bin")
    axes[-1].set_xlabel("frame (10 ms)")
    fig.suptitle(f"step {step}", fontsize=10)
    fig.tight_layout()
    try:
        atomic_write(path, lambda f: fig.savefig(f, dpi=80, format="png"))
    finally:
        plt.close(fig)
    return path
