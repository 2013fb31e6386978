"""capxai: fast, trustworthy explanations for image-captioning models.

``capxai.ops`` holds the fused relevance ops (``torch.ops.capxai.*``) and their pure-PyTorch references.
"""
from capxai import ops
from capxai.ops import cuda_built

__version__ = "0.1.0"
__all__ = ["ops", "cuda_built", "__version__"]
