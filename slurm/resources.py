"""What a sweep job asks the scheduler for, the defaults per job kind, and the check against a partition.

Resolution order (later wins): :data:`KIND_DEFAULTS` < the sweep file's ``resources.default`` <
``resources.<kind>`` < the stage's own ``resources``. :func:`check_partition` compares a request with what
``sinfo``/``scontrol show partition`` report, so a request no node can satisfy is an error before submission.
"""
from __future__ import annotations

import dataclasses
import re
import shutil
import subprocess
from dataclasses import dataclass, field

__all__ = ["Resources", "KIND_DEFAULTS", "resolve_resources", "parse_slurm_time", "partition_info",
           "check_partition", "check_local", "submitit_parameters", "slurm_available", "ResourceError"]


class ResourceError(ValueError):
    """A resource request that is malformed or that the target partition / machine cannot satisfy."""


@dataclass
class Resources:
    """One job's request. ``tasks_per_node`` ``None`` means one task per GPU for DDP kinds, else 1;
    ``signal_delay_s``: how long before the time limit SLURM sends the checkpoint-and-requeue signal;
    ``max_timeouts``: how many time-limit requeues a job gets (pre-emptions do not count); ``setup`` lines run
    in the batch script before the job (``module load ...``); ``additional`` holds extra ``#SBATCH`` options
    (``{"exclusive": True}``)."""

    partition: str | None = None
    time_min: int = 60
    nodes: int = 1
    gpus_per_node: int = 0
    tasks_per_node: int | None = None
    cpus_per_task: int = 1
    mem_gb: float | None = None
    constraint: str | None = None
    account: str | None = None
    qos: str | None = None
    signal_delay_s: int = 90
    max_timeouts: int = 3
    setup: list = field(default_factory=list)
    additional: dict = field(default_factory=dict)

    def tasks(self, ddp: bool) -> int:
        """Tasks per node: as given, else one per GPU for a DDP job (at least 1)."""
        if self.tasks_per_node is not None:
            return self.tasks_per_node
        return max(1, self.gpus_per_node) if ddp else 1


# Built-in requests per job kind (whether a kind runs DDP, one task per GPU, is in slurm.kinds).
KIND_DEFAULTS: dict[str, dict] = {
    "pretrain": {"time_min": 24 * 60, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32},
    "finetune": {"time_min": 12 * 60, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32},
    "probe": {"time_min": 2 * 60, "gpus_per_node": 1, "cpus_per_task": 8, "mem_gb": 32},
    "tables": {"time_min": 15, "gpus_per_node": 0, "cpus_per_task": 1, "mem_gb": 2},
}
FIELDS = [f.name for f in dataclasses.fields(Resources)]


def resolve_resources(kind: str, *layers: dict | None) -> Resources:
    """Resources of a job of ``kind``: :data:`KIND_DEFAULTS` updated by each mapping in ``layers`` in turn.
    Unknown keys and invalid values raise :class:`ResourceError` naming them."""
    values = dict(KIND_DEFAULTS.get(kind, {}))
    for layer in layers:
        for key, value in (layer or {}).items():
            if key not in FIELDS:
                raise ResourceError(f"unknown resource {key!r} (valid: {', '.join(FIELDS)})")
            values[key] = value
    if isinstance(values.get("time_min"), str):
        values["time_min"] = parse_slurm_time(values["time_min"])
    res = Resources(**values)
    for name in ("time_min", "nodes", "cpus_per_task", "signal_delay_s", "max_timeouts"):
        if not isinstance(getattr(res, name), int) or getattr(res, name) < 1:
            raise ResourceError(f"resource {name} must be a positive integer, got {getattr(res, name)!r}")
    if not isinstance(res.gpus_per_node, int) or res.gpus_per_node < 0:
        raise ResourceError(f"resource gpus_per_node must be an integer >= 0, got {res.gpus_per_node!r}")
    if res.tasks_per_node is not None and (not isinstance(res.tasks_per_node, int) or res.tasks_per_node < 1):
        raise ResourceError(f"resource tasks_per_node must be a positive integer, got {res.tasks_per_node!r}")
    if res.mem_gb is not None and (not isinstance(res.mem_gb, (int, float)) or res.mem_gb <= 0):
        raise ResourceError(f"resource mem_gb must be a positive number, got {res.mem_gb!r}")
    return res


def parse_slurm_time(text: str) -> int | None:
    """Minutes in a SLURM time string (``infinite``/``UNLIMITED`` -> ``None``; ``30`` = 30 min; ``MM:SS``;
    ``HH:MM:SS``; ``D-HH[:MM[:SS]]``); seconds round up."""
    text = str(text).strip()
    if text.lower() in ("infinite", "unlimited", "none", "n/a"):
        return None
    m = re.fullmatch(r"(?:(\d+)-)?(\d+)(?::(\d+))?(?::(\d+))?", text)
    if not m:
        raise ResourceError(f"cannot read time {text!r} (SLURM format: minutes, HH:MM:SS or D-HH:MM:SS)")
    days, a, b, c = (int(g) if g else None for g in m.groups())
    if days is not None:        # D-HH, D-HH:MM, D-HH:MM:SS
        h, mi, s = a, b or 0, c or 0
    elif c is not None:         # HH:MM:SS
        h, mi, s = a, b, c
    elif b is not None:         # MM:SS
        h, mi, s = 0, a, b
    else:                       # minutes
        h, mi, s = 0, a, 0
    return (days or 0) * 1440 + h * 60 + mi + (1 if s else 0)


def _run(cmd: list[str]) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=30, check=True).stdout
    except FileNotFoundError as e:
        raise ResourceError(f"{cmd[0]} not found: is SLURM installed here?") from e
    except subprocess.CalledProcessError as e:
        raise ResourceError(f"{' '.join(cmd)} failed: {(e.stderr or e.stdout).strip()}") from e
    except subprocess.TimeoutExpired as e:
        raise ResourceError(f"{' '.join(cmd)} timed out: is slurmctld running?") from e


def _gpus(gres: str) -> int:
    """GPUs per node in a ``sinfo %G`` string such as ``gpu:a100:8(S:0-1),shard:4``."""
    total = 0
    for item in gres.split(","):
        parts = re.sub(r"\(.*?\)", "", item).split(":")
        if parts[0] == "gpu":
            total += int(parts[-1]) if parts[-1].isdigit() else 1
    return total


def partition_info(partition: str | None) -> dict:
    """What ``partition`` (the default partition when ``None``) offers: ``{"name", "groups": [{"nodes",
    "cpus", "mem_mb", "gpus", "features"}], "max_time_min", "max_nodes", "state", "allow_accounts",
    "allow_qos"}`` from ``sinfo`` and ``scontrol show partition``."""
    if partition is None:
        for line in _run(["sinfo", "-h", "-o", "%P"]).split():
            if line.endswith("*"):
                partition = line[:-1]
                break
        if partition is None:
            raise ResourceError("no partition given and the cluster has no default partition")
    out = _run(["sinfo", "-h", "-p", partition, "-o", "%D|%c|%m|%G|%f|%l|%a"]).strip()
    if not out:
        raise ResourceError(f"partition {partition!r} does not exist (sinfo lists: "
                            f"{' '.join(_run(['sinfo', '-h', '-o', '%P']).split())})")
    groups, max_time, avail = [], None, "up"
    for line in out.splitlines():
        n, cpus, mem, gres, feats, limit, avail = line.split("|")
        groups.append({"nodes": int(n), "cpus": int(re.sub(r"\D", "", cpus) or 0),
                       "mem_mb": int(re.sub(r"\D", "", mem) or 0), "gpus": _gpus(gres),
                       "features": set() if feats in ("(null)", "") else set(feats.split(","))})
        max_time = parse_slurm_time(limit)
    info = {"name": partition, "groups": groups, "max_time_min": max_time, "max_nodes": None, "state": avail,
            "allow_accounts": None, "allow_qos": None}
    show = dict(re.findall(r"(\w+)=(\S+)", _run(["scontrol", "show", "partition", partition])))
    if show.get("MaxNodes", "UNLIMITED").isdigit():
        info["max_nodes"] = int(show["MaxNodes"])
    for key, name in (("AllowAccounts", "allow_accounts"), ("AllowQos", "allow_qos")):
        if show.get(key, "ALL") != "ALL":
            info[name] = set(show[key].split(","))
    info["state"] = show.get("State", avail).lower()
    return info


def _features_ok(constraint: str | None, features: set) -> bool | None:
    """Whether a node with ``features`` meets ``constraint`` (``a``, ``a&b``, ``a|b``); ``None`` when the
    expression is beyond this simple reader (counts, brackets), i.e. not checked."""
    if not constraint:
        return True
    if re.search(r"[\[\]*()]", constraint):
        return None
    return any(all(f in features for f in term.split("&")) for term in constraint.split("|"))


def check_partition(res: Resources, info: dict, ddp: bool, what: str) -> None:
    """Raise :class:`ResourceError` naming ``what`` (the job) when partition ``info`` (:func:`partition_info`)
    cannot run ``res``: time over the limit, more nodes than it has, or no node with the CPUs, memory, GPUs or
    features one node of the job needs; an account or QoS it does not allow."""
    name = info["name"]
    if info["state"] not in ("up",):
        raise ResourceError(f"{what}: partition {name} is {info['state']}")
    if info["max_time_min"] is not None and res.time_min > info["max_time_min"]:
        raise ResourceError(f"{what}: time_min={res.time_min} is over partition {name}'s limit of "
                            f"{info['max_time_min']} min")
    if info["max_nodes"] is not None and res.nodes > info["max_nodes"]:
        raise ResourceError(f"{what}: nodes={res.nodes} is over partition {name}'s MaxNodes={info['max_nodes']}")
    cpus = res.cpus_per_task * res.tasks(ddp)
    mem_mb = int(res.mem_gb * 1024) if res.mem_gb else 0
    fits = [g for g in info["groups"] if g["cpus"] >= cpus and g["mem_mb"] >= mem_mb
            and g["gpus"] >= res.gpus_per_node and _features_ok(res.constraint, g["features"]) is not False]
    if sum(g["nodes"] for g in fits) < res.nodes:
        best = {k: max(g[k] for g in info["groups"]) for k in ("cpus", "mem_mb", "gpus")}
        feats = sorted(set().union(*(g["features"] for g in info["groups"])))
        raise ResourceError(
            f"{what}: partition {name} cannot satisfy {res.nodes} node(s) x ({cpus} CPUs, {mem_mb} MB, "
            f"{res.gpus_per_node} GPUs{', constraint ' + res.constraint if res.constraint else ''}); its nodes "
            f"have at most {best['cpus']} CPUs, {best['mem_mb']} MB, {best['gpus']} GPUs, features "
            f"{feats or 'none'} ({sum(g['nodes'] for g in info['groups'])} node(s))")
    if res.account and info["allow_accounts"] is not None and res.account not in info["allow_accounts"]:
        raise ResourceError(f"{what}: partition {name} does not allow account {res.account!r}")
    if res.qos and info["allow_qos"] is not None and res.qos not in info["allow_qos"]:
        raise ResourceError(f"{what}: partition {name} does not allow QoS {res.qos!r}")


def check_local(res: Resources, ddp: bool, what: str, gpus_available: int | None = None) -> None:
    """Raise :class:`ResourceError` when the local executor (this machine, one node) cannot run ``res``."""
    if res.nodes != 1:
        raise ResourceError(f"{what}: the local executor runs on one node, but nodes={res.nodes}")
    if gpus_available is None:
        import torch
        gpus_available = torch.cuda.device_count() if torch.cuda.is_available() else 0
    if res.gpus_per_node > gpus_available:
        raise ResourceError(f"{what}: gpus_per_node={res.gpus_per_node} but this machine has {gpus_available}")


def submitit_parameters(res: Resources, ddp: bool, name: str, dependency: str | None = None) -> dict:
    """Keyword arguments of ``AutoExecutor.update_parameters`` for ``res`` (SLURM ones prefixed ``slurm_``;
    the local executor uses the generic ones and ignores the rest)."""
    params = {"name": name, "timeout_min": int(res.time_min), "nodes": res.nodes,
              "tasks_per_node": res.tasks(ddp), "cpus_per_task": res.cpus_per_task,
              "slurm_signal_delay_s": res.signal_delay_s}
    if res.gpus_per_node:
        params["gpus_per_node"] = res.gpus_per_node
    if res.mem_gb:
        params["mem_gb"] = res.mem_gb
    for key in ("partition", "constraint", "account", "qos"):
        if getattr(res, key):
            params[f"slurm_{key}"] = getattr(res, key)
    if res.setup:
        params["slurm_setup"] = list(res.setup)
    extra = {"requeue": True, **res.additional}
    if dependency:
        extra.update({"dependency": dependency, "kill-on-invalid-dep": "yes"})
    if extra:
        params["slurm_additional_parameters"] = extra
    return params


def slurm_available() -> bool:
    """Whether SLURM's client commands exist and the controller answers (``sinfo`` succeeds)."""
    if not (shutil.which("sbatch") and shutil.which("sinfo") and shutil.which("srun")):
        return False
    try:
        subprocess.run(["sinfo", "-h", "-o", "%P"], capture_output=True, timeout=15, check=True)
        return True
    except (OSError, subprocess.SubprocessError):
        return False
