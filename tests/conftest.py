"""Shared fixtures: the devices to run on (CPU always; CUDA when a GPU is present) and tolerances per dtype."""
import pytest
import torch

import capxai

# LRP_RULES.md, property 2: fused kernel == reference.
TOLERANCES = {torch.float64: dict(rtol=1e-9, atol=1e-12), torch.float32: dict(rtol=1e-4, atol=1e-5)}

DEVICES = [
    "cpu",
    pytest.param("cuda", marks=[pytest.mark.cuda,
                                pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU present")]),
]


@pytest.fixture(params=DEVICES)
def device(request):
    if request.param == "cuda" and not capxai.cuda_built():
        pytest.fail("a GPU is present but capxai._C was built without CUDA kernels: rebuild with FORCE_CUDA=1")
    return torch.device(request.param)


@pytest.fixture(params=[torch.float64, torch.float32], ids=["float64", "float32"])
def dtype(request):
    return request.param


@pytest.fixture
def tolerance(dtype):
    return TOLERANCES[dtype]
