"""Cost of durable writes (issue 24): a checkpoint of the demo's size (the adaptive captioner with SceneCNN, hidden
128, and its Adam state: about 10 MB) written with ``torch.save`` straight into place against capxai's atomic write
(temporary file beside it, its bytes synced, renamed, the folder synced). A training epoch writes two such files
(``last.pt``, and ``best.pt`` when validation improves) and two small json files; on the demo an epoch takes minutes,
so the syncs' cost per epoch is this benchmark's difference times two. The ratio depends on the disk: on a laptop's
SSD an fsync of 10 MB is milliseconds, on a network file system it can be far more.

Run: ``make bench`` or ``pytest benchmarks/test_durability.py --benchmark-only``; the conftest prints each time
relative to the plain write (group "checkpoint write", "fused" = the plain ``torch.save``).
"""
import pytest
import torch

from capxai._io import atomic_path
from capxai.models import AdaptiveAttentionCaptioner, SceneCNN


@pytest.fixture(scope="module")
def payload():
    torch.manual_seed(0)
    encoder = SceneCNN()
    model = torch.nn.ModuleDict({"encoder": encoder,
                                 "captioner": AdaptiveAttentionCaptioner(64, encoder.channels, 128, 64)})
    optimizer = torch.optim.Adam(model.parameters())
    sum(p.sum() for p in model.parameters()).backward()
    optimizer.step()
    return {"model": model.state_dict(), "optimizer": optimizer.state_dict()}


def _plain(path, payload):
    torch.save(payload, path)


def _durable(path, payload):
    with atomic_path(path) as temporary:
        torch.save(payload, temporary)


@pytest.mark.benchmark(group="checkpoint write")
@pytest.mark.parametrize("write", [_plain, _durable], ids=["fused", "atomic-synced"])
def test_checkpoint_write(benchmark, tmp_path, payload, write):
    benchmark.pedantic(write, args=(tmp_path / "last.pt", payload), rounds=20, warmup_rounds=2)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["model"].keys() == payload["model"].keys()
