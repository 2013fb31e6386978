"""The compiled extension: every op is registered for every backend, and a CPU-only build explains itself."""
import pytest
import torch

import capxai
from capxai.info import kernel_table


WRAPPER_OF = {"lrp_sdpa_attnlrp": "lrp_sdpa"}  # reached as lrp_sdpa(..., mode="attnlrp")


def test_every_op_has_cpu_cuda_and_fake_kernels_or_is_a_composite():
    assert {"lrp_linear", "lrp_lstm", "lrp_lstm_cell"} <= set(capxai.ops.op_names())
    for name, backends in kernel_table().items():
        if backends["CompositeImplicitAutograd"]:
            continue
        for key in ("CPU", "CUDA", "Meta"):
            assert backends[key], (name, key)
        wrapper = WRAPPER_OF.get(name, name)
        assert hasattr(capxai.ops, wrapper), f"capxai.ops.{wrapper} wrapper is missing"
        assert getattr(capxai.ops, wrapper).__doc__, f"capxai.ops.{wrapper} has no docstring"


@pytest.mark.skipif(capxai.cuda_built(), reason="this build has real CUDA kernels")
def test_cpu_only_build_says_how_to_get_cuda_kernels():
    cuda_only = torch._C.DispatchKeySet(torch._C.DispatchKey.CUDA)
    x, weight, relevance = torch.randn(2, 3), torch.randn(4, 3), torch.randn(2, 4)
    with pytest.raises(RuntimeError, match="built without CUDA kernels.*FORCE_CUDA=1"):
        torch.ops.capxai.lrp_linear.default.redispatch(cuda_only, x, weight, None, relevance, 0.01, 0.0)


def test_build_reports_the_torch_it_was_built_against():
    from capxai._extension import extension

    assert extension.torch_version == torch.__version__.split("+")[0]
