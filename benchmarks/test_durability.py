"""Cost of durable writes (issue 24): a checkpoint of the demo's size (the adaptive captioner with SceneCNN, hidden
128, and its Adam state: about 10 MB) written with ``torch.save`` straight into place against capxai's atomic write
(temporary file beside it, its bytes synced, renamed, the folder synced). A training epoch writes two such files
(``last.pt``, and ``best.pt`` when validation improves) and two small json files; on the demo an epoch takes minutes,
so the syncs' cost per epoch is this benchmark's difference times two. The ratio depends on the disk: on a laptop's
SSD an fsync of 10 MB is milliseconds, on a network file system it can be far more.

A third variant is what an epoch of ``capxai train`` does since issue 24's later points: the checkpoint written
with the history through ``write_together`` (every file written and synced before any is renamed) and recorded in
the manifest with its size and sha256 (hashing the 10 MB once more, so that an edited file is never replaced).

Run: ``make bench`` or ``pytest benchmarks/test_durability.py --benchmark-only``; the conftest prints each time
relative to the plain write (group "checkpoint write", "fused" = the plain ``torch.save``).
"""
import pytest
import torch

from capxai._io import atomic_path, json_writer, torch_save, write_together
from capxai.models import AdaptiveAttentionCaptioner, SceneCNN
from capxai.outputs import OutputFolder


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


def _epoch(path, payload):
    written = write_together({path: lambda temporary: torch_save(payload, temporary),
                              path.with_name("history.json"): json_writer({"epochs": [{"loss": 1.0}] * 10})})
    OutputFolder(path.parent, "train").record(written, "checkpoints")


@pytest.mark.benchmark(group="checkpoint write")
@pytest.mark.parametrize("write", [_plain, _durable, _epoch], ids=["fused", "atomic-synced", "epoch-recorded"])
def test_checkpoint_write(benchmark, tmp_path, payload, write):
    benchmark.pedantic(write, args=(tmp_path / "last.pt", payload), rounds=20, warmup_rounds=2)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["model"].keys() == payload["model"].keys()
