"""Low-level operations: the selective scan and the causal conv1d, with CUDA and PyTorch paths."""
from aum.ops.scan import (BACKENDS, causal_conv1d, cuda_kernels, selective_scan,
                                    selective_scan_reference)

__all__ = ["BACKENDS", "causal_conv1d", "cuda_kernels", "selective_scan", "selective_scan_reference"]
