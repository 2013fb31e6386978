"""capxai: fast, trustworthy explanations for image-captioning models.

``capxai.ops`` holds the fused relevance ops (``torch.ops.capxai.*``) and their pure-PyTorch references;
``capxai.nn`` drop-in modules whose backward carries relevance inside ``capxai.lrp()``.
"""
from capxai import nn, ops
from capxai.nn import lrp
from capxai.ops import cuda_built

__version__ = "0.1.0"
__all__ = ["ops", "nn", "lrp", "cuda_built", "__version__"]
