"""minicolor: a small deep-learning library, written from scratch, that colorizes photos.

Start reading at docs/index.md. The engine is in tensor.py, the layers in functional.py
(NumPy references in reference/, the fast CPU path in cpu/, CUDA kernels in kernels/; backend.py
says which runs where), the network in models.py.
"""
from . import functional, nn, optim
from .backend import DeviceError, auto_device, cuda_available, keep_freed_memory
from .gradcheck import GradcheckError, gradcheck
from .tensor import Function, Tensor, no_grad, tensor

__version__ = "0.1.0"

keep_freed_memory()

__all__ = [
    "Tensor", "Function", "tensor", "no_grad", "gradcheck", "GradcheckError",
    "functional", "nn", "optim", "DeviceError", "auto_device", "cuda_available",
]
