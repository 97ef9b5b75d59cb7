"""Process-wide settings that a training run of :class:`aum.train.engine.Trainer` changes for its duration and restores
afterwards: deterministic algorithms (:func:`deterministic_mode`) and the stop signals SIGTERM / SIGUSR1 (pre-emption)
and SIGINT (Ctrl-C) (:func:`stop_signals` in the main process, :func:`ignore_stop_signals` in DataLoader workers).

SLURM sends its pre-emption signal to every process of the job step, and a terminal sends Ctrl-C to the whole
foreground process group; the training process records the signal and stops between steps after a checkpoint,
while the data workers ignore it and live until the main process shuts them down.
"""
from __future__ import annotations

import contextlib
import os
import signal
import threading
from typing import Callable, Iterator

import torch

__all__ = ["STOP_SIGNALS", "deterministic_mode", "stop_signals", "ignore_stop_signals"]

STOP_SIGNALS = tuple(s for s in (signal.SIGTERM, getattr(signal, "SIGUSR1", None), signal.SIGINT) if s is not None)


@contextlib.contextmanager
def deterministic_mode(enabled: bool = True) -> Iterator[None]:
    """With ``enabled``: deterministic torch algorithms (``CUBLAS_WORKSPACE_CONFIG`` set if unset), one CPU
    thread, deterministic cuDNN without benchmarking, all restored on exit (the environment variable stays).
    Without: nothing changes."""
    if not enabled:
        yield
        return
    prev = (torch.are_deterministic_algorithms_enabled(), torch.get_num_threads(),
            torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark)
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(prev[0])
        torch.set_num_threads(prev[1])
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = prev[2:]


@contextlib.contextmanager
def stop_signals(handler: Callable) -> Iterator[None]:
    """Route :data:`STOP_SIGNALS` to ``handler(signum, frame)`` while the context is open, then restore the
    previous handlers. Outside the main thread (where Python cannot install handlers) nothing changes."""
    previous = {}
    if threading.current_thread() is threading.main_thread():
        for sig in STOP_SIGNALS:
            previous[sig] = signal.signal(sig, handler)
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` for DataLoader workers: ignore :data:`STOP_SIGNALS`, so a worker survives until the main
    process shuts it down (SLURM signals the whole step)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)
