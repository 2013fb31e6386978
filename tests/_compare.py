"""Comparison helpers shared by the op tests."""
import torch

# docs/LRP_RULES.md, property 2: fused kernel == reference.
RTOL = {torch.float64: 1e-9, torch.float32: 1e-4}


def assert_matches(actual, expected, rtol=None):
    """Elementwise ``|a - e| <= rtol * (|e| + max|e|)``: relative to each value and to the tensor's scale.

    Relevance sums terms of both signs; where they cancel, a value is small next to its terms and only the scale of
    the tensor says what rounding it may carry.
    """
    assert actual.shape == expected.shape, (actual.shape, expected.shape)
    assert actual.dtype == expected.dtype and actual.device == expected.device
    rtol = RTOL[expected.dtype] if rtol is None else rtol
    scale = expected.abs().max().item() if expected.numel() else 0.0
    torch.testing.assert_close(actual, expected, rtol=rtol, atol=rtol * scale + 1e-30)
