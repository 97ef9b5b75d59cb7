"""The callable every sweep job runs, under SLURM and under submitit's local executor alike.

:class:`SweepJob` runs a job's entry point in-process (``pretrain.run.run(argv)``, ``eval.probe.main(argv)``
...). It is a ``submitit.helpers.Checkpointable``: when SLURM warns of the time limit (``--signal=USR2@90``,
submitit's signal) the job tells the running training engine to stop — the engine's own handler for SIGUSR1 is
called, so it finishes the current step and writes a checkpoint — and then hands over to submitit, which calls
:meth:`SweepJob.checkpoint` and requeues the job. A SIGTERM (``scontrol requeue``, pre-emption) reaches the
engine directly; SLURM requeues the job itself. Either way the rerun resumes from the newest checkpoint in the
job's ``out_dir``. Outside the engine's loop (a probe, start-up) the signal goes straight to submitit.

Files in a job's ``out_dir``: ``job.json`` (one line per start: job id, host, pid, time) and, when it
finished, ``done.json`` (the summary and the records it wrote) -- the marker that lets a re-submitted sweep
skip it.
"""
from __future__ import annotations

import collections
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path

import submitit

from aum.atomic import atomic_write_text
from aum.cli import EXIT_STOPPED
from slurm.kinds import KINDS, entry_point, records_in

log = logging.getLogger(__name__)

__all__ = ["SweepJob", "JobInterrupted", "is_done", "read_done", "DONE_FILE", "JOB_FILE"]

DONE_FILE, JOB_FILE = "done.json", "job.json"
PREEMPT_SIGNAL = getattr(signal, "SIG" + os.environ.get("SUBMITIT_PREEMPT_SIGNAL", "USR2"))


class JobInterrupted(RuntimeError):
    """The job stopped at a signal after writing a checkpoint; it finishes when it runs again."""


def _atomic_json(path: Path, data) -> None:
    """Write ``data`` as JSON to ``path`` atomically (:func:`aum.atomic.atomic_write_text`), creating its folder."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, json.dumps(data, indent=2, default=str))


def read_done(job: dict) -> dict | None:
    """The ``done.json`` of ``job`` (a :class:`slurm.spec.JobSpec` as a dict), or ``None``."""
    path = Path(job["out_dir"]) / DONE_FILE
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def is_done(job: dict) -> bool:
    """Whether ``job`` finished: its ``done.json`` exists and so does what it made -- the encoder of a
    pretraining job, every result record of an evaluation job (at least one)."""
    done = read_done(job)
    if done is None:
        return False
    if job.get("encoder") and not Path(job["encoder"]).is_file():
        return False
    if KINDS[job["kind"]].records:
        records = done.get("records") or []
        return bool(records) and all(Path(r).is_file() for r in records)
    return True


STOP_SIGNALS = {int(signal.SIGTERM), int(signal.SIGUSR1), int(PREEMPT_SIGNAL)}


@contextlib.contextmanager
def _signals_seen():
    """The set of signal numbers delivered to this process (to any Python handler) inside the block, through
    ``signal.set_wakeup_fd``: it sees a SIGTERM that the training engine's own handler consumed."""
    seen: set[int] = set()
    if threading.current_thread() is not threading.main_thread():
        yield seen
        return
    read_fd, write_fd = os.pipe()
    os.set_blocking(read_fd, False)
    os.set_blocking(write_fd, False)
    previous = signal.set_wakeup_fd(write_fd, warn_on_full_buffer=False)
    try:
        yield seen
    finally:
        signal.set_wakeup_fd(previous)
        with contextlib.suppress(BlockingIOError):
            seen.update(os.read(read_fd, 4096))
        os.close(read_fd)
        os.close(write_fd)


class _StderrTail:
    """Inside the block, ``sys.stderr`` passes everything through and keeps the last lines, so that an entry point
    that reports its error and returns an exit status (``PROG: error: ...``) gives the job that message."""

    def __init__(self, keep: int = 50) -> None:
        self.lines: collections.deque[str] = collections.deque(maxlen=keep)
        self.partial, self.stream = "", None

    def __enter__(self) -> "_StderrTail":
        self.stream, sys.stderr = sys.stderr, self
        return self

    def __exit__(self, *exc) -> None:
        if sys.stderr is self:
            sys.stderr = self.stream

    def write(self, text: str) -> int:
        """Write ``text`` through and remember its lines."""
        *done, self.partial = (self.partial + text).split("\n")
        self.lines.extend(line for line in done if line.strip())
        return self.stream.write(text)

    def __getattr__(self, name):        # flush, fileno, isatty, encoding ...: the real stream's
        if name == "stream":
            raise AttributeError(name)
        return getattr(self.stream, name)

    def error(self) -> str:
        """The last ``...: error: ...`` line written (else the last line), ``""`` when nothing was."""
        lines = list(self.lines) + ([self.partial] if self.partial.strip() else [])
        errors = [line for line in lines if ": error: " in line]
        return (errors or lines or [""])[-1].strip()[:500]


def _collect_records(job: dict) -> list[str]:
    """The job's result records in ``records_dir``; a kind that writes them under its ``out_dir`` (fine-tuning)
    has them copied there first."""
    if not job.get("records_dir"):
        return []
    sub = KINDS[job["kind"]].records_subdir
    if sub:
        source, target = Path(job["out_dir"]) / sub, Path(job["records_dir"])
        target.mkdir(parents=True, exist_ok=True)
        for path in records_in(source):
            dest = target / Path(path).relative_to(source)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(path, dest)
    return records_in(job["records_dir"])


def _engine_handler():
    """``(signal, handler)`` of a running training loop's stop handler (SIGUSR1, else SIGTERM), or ``None`` when
    only the defaults or submitit's own handlers are installed."""
    for sig in (signal.SIGUSR1, signal.SIGTERM):
        handler = signal.getsignal(sig)
        owner = getattr(handler, "__self__", None)
        if callable(handler) and not isinstance(owner, _SignalBridge) \
                and not type(owner).__module__.startswith("submitit"):
            return sig, handler
    return None


class _SignalBridge:
    """Routes submitit's pre-emption signal to the training engine while one runs (see the module docstring)."""

    def __init__(self) -> None:
        self.received: int | None = None
        self.previous = None

    def install(self) -> None:
        """Take over the pre-emption signal (keeping submitit's handler for :meth:`hand_over`)."""
        self.previous = signal.getsignal(PREEMPT_SIGNAL)
        signal.signal(PREEMPT_SIGNAL, self._handle)

    def uninstall(self) -> None:
        """Give the pre-emption signal back to submitit's handler."""
        if self.previous is not None:
            signal.signal(PREEMPT_SIGNAL, self.previous)

    def _handle(self, signum, frame) -> None:
        self.received = signum
        engine = _engine_handler()
        if engine is not None:
            engine[1](engine[0], frame)         # the engine stops after this step, with a checkpoint
        else:
            self.hand_over(frame)               # nothing to save: requeue now

    def hand_over(self, frame=None) -> None:
        """Let submitit's own handler checkpoint and requeue the job (it exits); raise when there is none."""
        if callable(self.previous):
            self.previous(PREEMPT_SIGNAL, frame)
        raise JobInterrupted(f"signal {self.received} received; no submitit handler to requeue the job")


def _local_ddp_env(env) -> None:
    """Under the local executor with several tasks, describe the world the torchrun way for the engine."""
    if env.cluster != "local" or env.num_tasks <= 1:
        return
    os.environ.update(RANK=str(env.global_rank), WORLD_SIZE=str(env.num_tasks), LOCAL_RANK=str(env.local_rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(20000 + int(env.raw_job_id) % 20000))


class SweepJob(submitit.helpers.Checkpointable):
    """One sweep job (a :class:`slurm.spec.JobSpec` as a plain dict, so the pickle holds data only)."""

    def __init__(self, job: dict):
        self.job = job

    def __repr__(self) -> str:
        return f"SweepJob({self.job['name']})"

    def _environment(self):
        try:
            return submitit.JobEnvironment()
        except RuntimeError:        # called directly, not by submitit: a world of one
            return None

    def _record_start(self, env) -> None:
        path = Path(self.job["out_dir"]) / JOB_FILE
        try:
            starts = json.loads(path.read_text())["starts"]
        except (OSError, ValueError, KeyError):
            starts = []
        starts.append({"job_id": env.job_id if env else None, "cluster": env.cluster if env else "inline",
                       "host": socket.gethostname(), "pid": os.getpid(), "started": time.strftime("%FT%T")})
        _atomic_json(path, {"name": self.job["name"], "starts": starts})

    def __call__(self) -> dict:
        """Run the job unless it is already done; returns ``{"name", "skipped"|"summary", "records"}``."""
        job, kind = self.job, self.job["kind"]
        env = self._environment()
        rank = env.global_rank if env else 0
        if env is not None:             # a job process of its own: use the CPUs it asked for
            _local_ddp_env(env)
            import torch
            torch.set_num_threads(max(1, int(job["resources"]["cpus_per_task"])))
        if kind != "tables" and is_done(job):
            print(f"{job['name']}: already done ({Path(job['out_dir']) / DONE_FILE})", flush=True)
            return {"name": job["name"], "skipped": True}
        Path(job["out_dir"]).mkdir(parents=True, exist_ok=True)
        if rank == 0:
            self._record_start(env)
        print(f"{job['name']}: {KINDS[kind].entry} {' '.join(job['argv'])}", flush=True)
        bridge = _SignalBridge()
        bridge.install()
        try:
            with _signals_seen() as seen, _StderrTail() as tail:
                result = entry_point(kind)(list(job["argv"]))
        finally:
            bridge.uninstall()
        if isinstance(result, dict) and "stopped_by" in result:
            stopped = result["stopped_by"] == "signal"
        else:                               # an exit status: EXIT_STOPPED, or any stop signal interrupted it
            stopped = result == EXIT_STOPPED or bool(seen & STOP_SIGNALS)
        if stopped:
            if bridge.received is not None:
                bridge.hand_over()          # submitit requeues the job and exits
            raise JobInterrupted(f"{job['name']} stopped by a signal ({sorted(seen)}); it resumes from its "
                                 f"checkpoint when it runs again")
        if isinstance(result, int) and result != 0:     # the entry point printed its error: make it the reason
            raise RuntimeError(f"{job['name']}: {KINDS[kind].entry} exited with status {result}"
                               + (f": {tail.error()}" if tail.error() else ""))
        if rank != 0:                       # rank 0 writes the records and the done marker
            return {"name": job["name"], "rank": rank}
        records = _collect_records(job)
        if KINDS[kind].records and not records:
            raise RuntimeError(f"{job['name']} finished but wrote no result record into {job['records_dir']}")
        summary = {k: v for k, v in result.items() if isinstance(v, (str, int, float, bool, type(None)))} \
            if isinstance(result, dict) else {"status": result if isinstance(result, int) else "ok"}
        _atomic_json(Path(job["out_dir"]) / DONE_FILE, {"name": job["name"], "kind": kind, "summary": summary,
                                                        "records": records, "finished": time.strftime("%FT%T")})
        return {"name": job["name"], "summary": summary, "records": records}

    def checkpoint(self, *args, **kwargs):
        """Called by submitit on the pre-emption signal: the job resubmits itself unchanged (the engine's own
        checkpoint in ``out_dir`` holds the training state)."""
        print(f"{self.job['name']}: requeueing; the rerun resumes from the newest checkpoint", flush=True)
        return super().checkpoint(*args, **kwargs)
