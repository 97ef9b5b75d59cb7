"""``aum-sweep status SWEEP_DIR``: each job's state and log, from the done markers, ``squeue`` and
``scontrol show job`` (no accounting database needed), or submitit's result files; and building the tables."""
from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

from slurm.jobs import JOB_FILE, is_done, read_done
from slurm.kinds import entry_point
from slurm.state import read_state

__all__ = ["squeue_states", "scontrol_state", "last_error", "failure_reason", "trace_exception", "job_states",
           "format_status", "build_tables", "wait_sweep", "TERMINAL"]

TERMINAL = ("DONE", "COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL", "PREEMPTED",
            "BOOT_FAIL", "DEADLINE", "LOST")


def squeue_states() -> dict[str, tuple[str, str]]:
    """``{job_id: (state, reason)}`` for every job SLURM still lists (pending, running, requeued, ...)."""
    if not shutil.which("squeue"):
        return {}
    try:
        out = subprocess.run(["squeue", "-h", "-o", "%i|%T|%r"], capture_output=True, text=True, timeout=30,
                             check=True).stdout
    except (OSError, subprocess.SubprocessError):
        return {}
    rows = (line.split("|") for line in out.splitlines() if line.count("|") == 2)
    return {jid: (st, reason) for jid, st, reason in rows}


def scontrol_state(job_id: str) -> str | None:
    """``JobState`` of a job SLURM still remembers (``MinJobAge`` after it ended), else ``None``."""
    if not shutil.which("scontrol"):
        return None
    try:
        out = subprocess.run(["scontrol", "show", "job", str(job_id)], capture_output=True, text=True,
                             timeout=30).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.search(r"JobState=(\S+)", out)
    return m.group(1) if m else None


def _result_state(log: str | None) -> str | None:
    """``COMPLETED``/``FAILED`` from submitit's result pickle next to the log, else ``None``."""
    if not log:
        return None
    path = Path(log.replace("_log.out", "_result.pkl"))
    if not path.is_file():
        return None
    try:
        from submitit.core.utils import pickle_load
        outcome = pickle_load(path)[0]
    except Exception:  # noqa: BLE001 - a half-written or foreign pickle
        return None
    return "COMPLETED" if outcome == "success" else "FAILED"


def trace_exception(trace: str) -> str:
    """The final exception of a formatted traceback as one line (``module.SomeError: message``, a message of
    several lines joined), or ``""`` when there is none."""
    lines = str(trace).rstrip().splitlines()
    frames = [i for i, line in enumerate(lines) if re.match(r'^\s+File "', line)]
    rest = lines[frames[-1] + 1:] if frames else lines
    while rest and rest[0].startswith("    "):       # the frame's source line and its ^^^ markers
        rest = rest[1:]
    return " ".join(line.strip() for line in rest if line.strip())


def failure_reason(log: str | None, limit: int = 500) -> str:
    """Why a job failed, in one line: the exception it raised (from submitit's result file next to ``log``:
    the message, not a pointer to the log), else the last exception line of its stderr log, else ``""``."""
    if not log:
        return ""
    path = Path(log.replace("_log.out", "_result.pkl"))
    reason = ""
    if path.is_file():
        try:
            from submitit.core.utils import pickle_load
            outcome, value = pickle_load(path)[:2]
            reason = trace_exception(value) if outcome == "error" else ""
        except Exception:  # noqa: BLE001 - a half-written or foreign pickle
            reason = ""
    return (reason or last_error(log))[:limit]


def last_error(log: str | None) -> str:
    """The last exception line (``SomeError: message``) of a job's stderr log next to ``log``, or ``""``."""
    if not log:
        return ""
    try:
        with open(log.replace("_log.out", "_log.err"), "rb") as fh:
            fh.seek(0, 2)
            fh.seek(max(0, fh.tell() - 20000))
            lines = fh.read().decode(errors="replace").splitlines()
    except OSError:
        return ""
    pattern = re.compile(r"^(?:\[rank\d+\]:\s*)?([\w.]+(?:Error|Exception|Interrupted|Exit)\b:?.*)$")
    hits = [m.group(1) for m in map(pattern.match, lines) if m]
    return hits[-1][:300] if hits else ""


def _pid_alive(pid) -> bool:
    try:
        os.kill(int(pid), 0)
        return True
    except (OSError, TypeError, ValueError):
        return False


def job_states(state: dict) -> dict[str, dict]:
    """For each job of a sweep state (:func:`slurm.launch.read_state`): ``{"state", "job_id", "log",
    "reason", "kind"}``. ``DONE`` means the done marker (and records / encoder) exists."""
    queued = squeue_states() if state.get("executor") == "slurm" else {}
    out = {}
    for name, entry in state["jobs"].items():
        spec, jid, log = entry["spec"], entry.get("job_id"), entry.get("log")
        reason = entry.get("error", "")
        if jid is not None and str(jid) in queued:
            st, reason = queued[str(jid)]
        elif _finished(spec, state, entry):
            st = "DONE"
        elif jid is None:
            st = {"cancelled": "CANCELLED", "failed": "FAILED"}.get(entry.get("status"), "NOT SUBMITTED")
        elif entry.get("executor", state.get("executor")) == "slurm":
            st = scontrol_state(jid) or _result_state(log) or "UNKNOWN"
        elif entry.get("status") == "running" and _pid_alive(jid):
            st = "RUNNING"
        else:
            st = _result_state(log) or {"cancelled": "CANCELLED", "failed": "FAILED"}.get(entry.get("status"), "LOST")
        if st == "COMPLETED":           # the job ended, yet its done marker is missing
            st, reason = "FAILED", reason or "ended without its done marker"
        if st in ("FAILED", "TIMEOUT", "OUT_OF_MEMORY", "NODE_FAIL") and not reason:
            reason = failure_reason(log)
        starts = _starts(spec)
        out[name] = {"state": st, "job_id": jid, "log": log, "reason": reason, "kind": spec["kind"],
                     "starts": starts}
    return out


def _finished(spec: dict, state: dict, entry: dict) -> bool:
    """Done marker present (tables: kept from before, or written after this submission, which rebuilds them)."""
    if spec["kind"] != "tables":
        return is_done(spec)
    done = read_done(spec)
    return done is not None and (entry.get("status") == "done"
                                 or str(done.get("finished", "")) >= str(state.get("submitted", "")))


def _starts(spec: dict) -> int:
    import json
    try:
        return len(json.loads((Path(spec["out_dir"]) / JOB_FILE).read_text())["starts"])
    except (OSError, ValueError, KeyError):
        return 0


def format_status(state: dict, states: dict) -> str:
    """A table of ``states`` (:func:`job_states`) and a count per state."""
    width = max([len(n) for n in states] + [4])
    lines = [f"sweep {state.get('name')} ({state.get('executor')} executor, submitted {state.get('submitted')})",
             f"{'JOB':<{width}}  {'KIND':<8}  {'STATE':<13}  {'JOB ID':<8}  RUNS  LOG"]
    for name, s in states.items():
        extra = f"  ({s['reason']})" if s["reason"] and s["reason"] != "None" else ""
        lines.append(f"{name:<{width}}  {s['kind']:<8}  {s['state']:<13}  {str(s['job_id'] or '-'):<8}  "
                     f"{s['starts']:<4}  {s['log'] or '-'}{extra}")
    counts: dict[str, int] = {}
    for s in states.values():
        counts[s["state"]] = counts.get(s["state"], 0) + 1
    lines.append("total: " + ", ".join(f"{n} {k}" for k, n in sorted(counts.items())))
    return "\n".join(lines)


def build_tables(sweep_dir) -> Path:
    """Build the results tables of the records under ``SWEEP_DIR/records`` into ``SWEEP_DIR/tables`` now (the
    same entry point the sweep's last job runs)."""
    from slurm.kinds import tables_argv
    root = Path(sweep_dir)
    entry_point("tables")(tables_argv(str(root / "records"), str(root / "tables")))
    return root / "tables"


def wait_sweep(sweep_dir, timeout_s: float | None = None, poll_s: float = 3.0, say=None) -> dict:
    """Poll until every job of the sweep is in a final state (``DONE``, ``FAILED``, ``CANCELLED`` ...) or
    ``timeout_s`` passes (``TimeoutError``); returns the last :func:`job_states`."""
    import time
    start, last = time.monotonic(), None
    while True:
        state = read_state(sweep_dir)
        states = job_states(state)
        summary = sorted((s["state"] for s in states.values()))
        if say is not None and summary != last:
            counts = {k: summary.count(k) for k in dict.fromkeys(summary)}
            say("  " + ", ".join(f"{n} {k}" for k, n in counts.items()))
            last = summary
        if all(s["state"] in TERMINAL for s in states.values()):
            return states
        if timeout_s is not None and time.monotonic() - start > timeout_s:
            raise TimeoutError(f"sweep {sweep_dir} not finished after {timeout_s:.0f} s:\n"
                               + format_status(state, states))
        time.sleep(poll_s)
