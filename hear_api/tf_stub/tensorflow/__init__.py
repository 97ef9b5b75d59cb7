"""A minimal stand-in for TensorFlow, for the HEAR evaluation environment only.

``heareval.embeddings.runner``, ``heareval.embeddings.task_embeddings`` and ``hearvalidator`` import
TensorFlow unconditionally, although they only run PyTorch models here. Real TensorFlow costs about
1.3 GB and, on a GPU machine, makes the embeddings runner refuse to start when torch sees a GPU and
TensorFlow does not. This module provides exactly what those tools touch for a PyTorch model:

- ``Module``: a class nothing is an instance of (their ``isinstance(model, tf.Module)`` checks);
- ``test.is_gpu_available()``: mirrors ``torch.cuda.is_available()``;
- ``device(name)``: a null context manager;
- ``float32``: a sentinel dtype.

Anything else (running a TensorFlow model) raises ``NotImplementedError`` with a clear message. It is
put on ``PYTHONPATH`` only by the commands of :mod:`hear_api.setup_env` / :mod:`hear_api.evaluate`.
"""
from __future__ import annotations

import contextlib
import types

__version__ = "0.0+aum.stub"
AUM_STUB = True


class Module:
    """Stand-in for ``tf.Module``: no object the HEAR tools see is an instance of it."""


class _DType:
    def __init__(self, name: str):
        self.name = name

    def __repr__(self) -> str:
        return f"tf.{self.name} (aum stub)"


float32 = _DType("float32")


def device(name=None):
    """Null context manager standing in for ``tf.device``."""
    return contextlib.nullcontext()


def _unsupported(what: str):
    def fn(*args, **kwargs):
        raise NotImplementedError(
            f"tensorflow.{what} is not available: this is aum's TensorFlow stand-in for evaluating PyTorch "
            f"models with hear-eval-kit (hear_api/tf_stub). Install real TensorFlow to run TensorFlow models.")
    fn.__name__ = what.rsplit(".", 1)[-1]
    return fn


def _is_gpu_available(cuda_only: bool = False, min_cuda_compute_capability=None) -> bool:
    """Whether torch sees a CUDA device (so heareval's torch/TensorFlow GPU consistency check passes)."""
    import torch
    return bool(torch.cuda.is_available())


test = types.SimpleNamespace(is_gpu_available=_is_gpu_available)
random = types.SimpleNamespace(uniform=_unsupported("random.uniform"))
convert_to_tensor = _unsupported("convert_to_tensor")
