"""Multi-process plumbing of the training engine: launch (torchrun/SLURM), per-rank seeds, RNG snapshots, batches on devices.

A job is started either by ``torchrun`` (``RANK``/``WORLD_SIZE``/``LOCAL_RANK``/``MASTER_ADDR``/``MASTER_PORT``)
or by ``srun`` (``SLURM_PROCID``/``SLURM_NTASKS``/``SLURM_LOCALID``; the rendezvous address is the first host of
the step's node list). :func:`init_distributed` reads either, starts the process group (NCCL on GPUs, gloo on the
CPU) and returns a :class:`DistInfo`; a plain ``python train.py`` is a world of one and starts no group.

RNG snapshots (:func:`rng_state` / :func:`set_rng_state`) hold only tensors, ints, floats and lists, so a
checkpoint that stores them still loads with ``torch.load(weights_only=True)``. :func:`move_to_device`
places a batch (the sampler that splits the data over the ranks is :class:`aum.data.samplers.ResumableBatchSampler`).
"""
from __future__ import annotations

import logging
import os
import random
import re
import shutil
import subprocess
from dataclasses import dataclass
from typing import Any, Mapping

import numpy as np
import torch
import torch.distributed as dist

log = logging.getLogger(__name__)

__all__ = ["DistInfo", "dist_env", "init_distributed", "is_main", "get_rank", "get_world_size", "barrier",
           "cleanup_distributed", "seed_everything", "rng_state", "set_rng_state", "move_to_device"]


@dataclass(frozen=True)
class DistInfo:
    """This process's place in the job: global ``rank``, ``world_size``, ``local_rank`` on its node and the
    ``device`` it trains on."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        """Whether this is rank 0 (the one that logs and writes checkpoints)."""
        return self.rank == 0


def _first_host(nodelist: str) -> str | None:
    """First host name of a SLURM node list (``gpu[03-05,9],cpu1`` -> ``gpu03``) without ``scontrol``."""
    m = re.match(r"\s*([^,\[\s]+)(?:\[([^\]]+)\])?", nodelist or "")
    if not m:
        return None
    prefix, ranges = m.group(1), m.group(2)
    return prefix + ranges.split(",")[0].split("-")[0] if ranges else prefix


def _slurm_master_addr(env: Mapping[str, str]) -> str:
    nodelist = env.get("SLURM_STEP_NODELIST") or env.get("SLURM_JOB_NODELIST") or env.get("SLURM_NODELIST")
    if nodelist and shutil.which("scontrol"):
        try:
            out = subprocess.run(["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True,
                                 timeout=30, check=True).stdout.split()
            if out:
                return out[0]
        except (OSError, subprocess.SubprocessError) as err:
            log.warning("scontrol show hostnames %s failed (%s); parsing the node list", nodelist, err)
    if nodelist and (host := _first_host(nodelist)):
        return host
    return env.get("SLURM_LAUNCH_NODE_IPADDR") or "127.0.0.1"


def dist_env(environ: Mapping[str, str] | None = None) -> dict:
    """How this process was launched, from the environment (``os.environ`` by default).

    Returns ``{"launcher": "torchrun"|"slurm"|"single", "rank", "world_size", "local_rank", "master_addr",
    "master_port"}``. torchrun's variables win over SLURM's. Under SLURM only an ``srun`` step counts (it sets
    ``SLURM_STEP_NUM_TASKS``): the batch script itself also carries ``SLURM_NTASKS`` but is one process.
    ``MASTER_ADDR``/``MASTER_PORT`` from the environment are kept; otherwise the address is the first host of the
    node list (``scontrol show hostnames`` when it exists, else ``SLURM_LAUNCH_NODE_IPADDR`` or 127.0.0.1) and
    the port ``10000 + SLURM_JOB_ID % 20000``.
    """
    env = os.environ if environ is None else environ
    if "RANK" in env and "WORLD_SIZE" in env:
        return {"launcher": "torchrun", "rank": int(env["RANK"]), "world_size": int(env["WORLD_SIZE"]),
                "local_rank": int(env.get("LOCAL_RANK", 0)), "master_addr": env.get("MASTER_ADDR", "127.0.0.1"),
                "master_port": int(env.get("MASTER_PORT", 29500))}
    if "SLURM_PROCID" in env and ("SLURM_STEP_NUM_TASKS" in env or "SLURM_STEP_ID" in env):
        world = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
        port = env.get("MASTER_PORT")
        if port is None:
            port = 10000 + int(re.sub(r"\D", "", env.get("SLURM_JOB_ID", "")) or 0) % 20000
        return {"launcher": "slurm", "rank": int(env["SLURM_PROCID"]), "world_size": world,
                "local_rank": int(env.get("SLURM_LOCALID", 0)),
                "master_addr": env.get("MASTER_ADDR") or (_slurm_master_addr(env) if world > 1 else "127.0.0.1"),
                "master_port": int(port)}
    if int(env.get("SLURM_NTASKS", 1) or 1) > 1:
        log.warning("SLURM_NTASKS=%s but no srun step: running as a single process (launch with srun for DDP)",
                    env["SLURM_NTASKS"])
    return {"launcher": "single", "rank": 0, "world_size": 1, "local_rank": 0, "master_addr": "127.0.0.1",
            "master_port": 29500}


def _resolve_device(device: str, local_rank: int) -> torch.device:
    if device == "auto":
        return torch.device("cuda", local_rank) if torch.cuda.is_available() else torch.device("cpu")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is None:
        dev = torch.device("cuda", local_rank)
    return dev


def init_distributed(device: str = "auto") -> DistInfo:
    """Start the process group if this is a multi-process job and say where this process trains.

    Idempotent: with a group already running it only reports it. ``device="auto"`` means ``cuda:LOCAL_RANK``
    when CUDA exists, else the CPU; the backend is NCCL for CUDA devices and gloo otherwise.
    """
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", rank)))
        dev = _resolve_device(device, local)
        if dev.type == "cuda":
            torch.cuda.set_device(dev)
        return DistInfo(rank, world, local, dev)
    env = dist_env()
    dev = _resolve_device(device, env["local_rank"])
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    if env["world_size"] > 1:
        if not dist.is_available():
            raise RuntimeError("a multi-process launch needs torch.distributed, which this torch build lacks")
        os.environ.setdefault("MASTER_ADDR", str(env["master_addr"]))
        os.environ.setdefault("MASTER_PORT", str(env["master_port"]))
        backend = "nccl" if dev.type == "cuda" else "gloo"
        kwargs = {"device_id": dev} if dev.type == "cuda" else {}
        dist.init_process_group(backend, init_method="env://", rank=env["rank"], world_size=env["world_size"],
                                **kwargs)
        log.info("process group up: %s rank %d/%d (local %d) via %s on %s:%s", backend, env["rank"],
                 env["world_size"], env["local_rank"], env["launcher"], os.environ["MASTER_ADDR"],
                 os.environ["MASTER_PORT"])
    return DistInfo(env["rank"], env["world_size"], env["local_rank"], dev)


def get_rank() -> int:
    """Global rank (0 without a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def get_world_size() -> int:
    """Number of processes (1 without a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this process is rank 0 (always true without a process group)."""
    return get_rank() == 0


def barrier() -> None:
    """Wait for all ranks (no-op without a process group)."""
    if get_world_size() > 1:
        dist.barrier()


def cleanup_distributed() -> None:
    """Tear the process group down if one is running."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and every CUDA device), numpy and python ``random``. The engine calls it with
    ``seed + rank``."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict:
    """A snapshot of this process's RNGs (torch CPU, current CUDA device, numpy, python) as plain data."""
    version, state, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state() if torch.cuda.is_available() and torch.cuda.is_initialized()
            else None,
            "numpy": {"kind": str(kind), "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
                      "pos": int(pos), "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
            "python": {"version": int(version), "state": list(state), "gauss": gauss}}


def set_rng_state(state: dict) -> None:
    """Restore a snapshot taken by :func:`rng_state`."""
    torch.set_rng_state(state["torch"])
    if state.get("cuda") is not None and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])
    n = state["numpy"]
    np.random.set_state((n["kind"], n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    p = state["python"]
    random.setstate((p["version"], tuple(p["state"]), p["gauss"]))


def move_to_device(batch: Any, device: torch.device, non_blocking: bool = False) -> Any:
    """``batch`` with every tensor inside (nested dicts, lists, tuples, namedtuples) moved to ``device``."""
    if torch.is_tensor(batch):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, dict):
        return type(batch)((k, move_to_device(v, device, non_blocking)) for k, v in batch.items())
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move_to_device(v, device, non_blocking) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move_to_device(v, device, non_blocking) for v in batch)
    return batch
