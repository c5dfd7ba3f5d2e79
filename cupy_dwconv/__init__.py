"""Depthwise 2-D convolution on NVIDIA GPUs for CuPy arrays.

``depthwise_conv2d`` and ``depthwise_conv2d_backward`` run CUDA kernels specialized per
shape; ``cupy_dwconv.reference`` holds the NumPy reference with the same signatures.
CuPy is imported on first use of a GPU function, so the reference works without it.
"""

from . import reference
from ._api import depthwise_conv2d, depthwise_conv2d_backward

__all__ = ["depthwise_conv2d", "depthwise_conv2d_backward", "reference"]
__version__ = "0.1.0"
