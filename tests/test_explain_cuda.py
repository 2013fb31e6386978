"""Every explanation method on CUDA equals the same method on the CPU (float64), for both captioners, with images
(encoder and decoder) and with features alone: the user's GPU path through capxai.explain, end to end."""
import dataclasses

import pytest
import torch

pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="no GPU present"),
              pytest.mark.filterwarnings("ignore:Setting backward hooks on ReLU:UserWarning")]
pytest.importorskip("zennit",
                    reason="capxai.explain needs zennit (installed by make test; a bare GPU machine may lack it)")

import capxai  # noqa: E402
import capxai.explain as explain  # noqa: E402
from helpers import assert_matches, features_of, make_captioner, make_captions, make_encoder  # noqa: E402

LRP_SETTINGS = {"lrp": dict(attention_mode="constant"), "lrp-attnlrp": dict(attention_mode="attnlrp")}


def _explainer(name, model, encoder):
    if name.startswith("lrp"):
        return explain.LRP(model, encoder, **LRP_SETTINGS[name])
    return explain.METHODS[name](model, encoder)


def _tensors(explanation):
    return {field.name: getattr(explanation, field.name) for field in dataclasses.fields(explanation)
            if isinstance(getattr(explanation, field.name), torch.Tensor)}


# attnlrp is a mode of scaled dot-product attention: the multi-head captioner only.
CASES = [(kind, name) for kind in ("adaptive", "multihead") for name in ["lrp-attnlrp", *explain.METHODS]
         if name != "lrp-attnlrp" or kind == "multihead"]


@pytest.mark.parametrize("kind,name", CASES, ids=[f"{kind}-{name}" for kind, name in CASES])
def test_explanations_on_cuda_equal_cpu(kind, name):
    if not capxai.cuda_built():
        pytest.fail("a GPU is present but capxai._C was built without CUDA kernels: rebuild with FORCE_CUDA=1")
    model, encoder, captions = make_captioner(kind), make_encoder(), make_captions(batch=2)
    images = torch.randn(2, 3, 32, 32, dtype=torch.float64, generator=torch.Generator().manual_seed(5))
    on_cpu = _explainer(name, model, encoder).explain(images, captions=captions)
    on_cuda = _explainer(name, model.cuda(), encoder.cuda()).explain(images.cuda(), captions=captions.cuda())
    expected, actual = _tensors(on_cpu), _tensors(on_cuda)
    assert expected.keys() == actual.keys()
    for field, value in expected.items():
        assert actual[field].device.type == "cuda", field
        if value.is_floating_point():
            assert_matches(actual[field].cpu(), value)
        else:
            assert torch.equal(actual[field].cpu(), value), field


@pytest.mark.parametrize("kind", ["adaptive", "multihead"])
def test_lrp_of_features_on_cuda_equals_cpu(kind):
    model, features, captions = make_captioner(kind), features_of(), make_captions()
    on_cpu = explain.LRP(model).explain(features=features, captions=captions)
    on_cuda = explain.LRP(model.cuda()).explain(features=features.cuda(), captions=captions.cuda())
    for field, value in _tensors(on_cpu).items():
        if value.is_floating_point():
            assert_matches(_tensors(on_cuda)[field].cpu(), value)
