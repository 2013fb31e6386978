"""Shared fixtures: the devices to run on (CPU always; CUDA when a GPU is present) and tolerances per dtype."""
import os

import pytest
import torch

import capxai
from helpers import torch_threads


def pytest_configure(config):
    """Under pytest-xdist (``make test`` runs two workers on the 2-core VM) each worker, and every process it starts,
    gets one intra-op thread: two workers of two threads each would leave OpenMP threads spinning at every barrier for
    a core the other worker holds (docs/experiments/test-tiers/README.md measured 3.4x slower)."""
    if os.environ.get("PYTEST_XDIST_WORKER"):
        os.environ["OMP_NUM_THREADS"] = os.environ["MKL_NUM_THREADS"] = "1"
        torch.set_num_threads(1)


# Session fixtures that cost tens of seconds: under pytest-xdist each worker would build its own, so every test
# using one runs in one worker (``--dist loadgroup``); the other tests are spread one by one.
SHARED_EXPENSIVE_FIXTURES = ("tiny_demo", "grounded_model")


@pytest.hookimpl(tryfirst=True)  # before xdist's own hook reads the groups
def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in SHARED_EXPENSIVE_FIXTURES:
            if name in getattr(item, "fixturenames", ()):
                item.add_marker(pytest.mark.xdist_group(name))
                break


# docs/LRP_RULES.md, property 2: fused kernel == reference.
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


@pytest.fixture(scope="session")
def tiny_trained(tmp_path_factory):
    """A captioner trained one epoch on a few scenes: (best.pt, the scenes' folder)."""
    from capxai.data import scenes
    from capxai.train import TrainConfig, train

    root = tmp_path_factory.mktemp("trained")
    data = scenes.generate(root / "scenes", scenes.SceneConfig(train=24, val=6, test=7, seed=1), progress=False)
    config = TrainConfig(hidden=16, attention_dim=16, heads=2, dropout=0.0, epochs=1, batch_size=8, min_count=1,
                         max_length=12, lr=3e-3)
    train(config, data / "dataset_scenes.json", data, root / "model", progress=False)
    return root / "model" / "best.pt", data


@pytest.fixture(scope="session")
def grounded_model(tmp_path_factory):
    """A captioner trained eight epochs on 1200 scenes (64x64), good enough to name objects and to ground them
    whatever the CPU's float kernels (five were not: test_explain_grounding.py): (best.pt, scenes)."""
    from capxai.data import scenes
    from capxai.train import TrainConfig, train

    root = tmp_path_factory.mktemp("grounding")
    data = scenes.generate(root / "scenes", scenes.SceneConfig(train=1200, val=20, test=100, image_size=64, seed=3),
                           progress=False)
    config = TrainConfig(hidden=64, attention_dim=32, heads=4, dropout=0.0, epochs=8, batch_size=32, min_count=2,
                         max_length=12, lr=2e-3, image_size=64)
    train(config, data / "dataset_scenes.json", data, root / "model", progress=False)
    return root / "model" / "best.pt", data


TINY_DEMO_TRAINING = ("--hidden", "16", "--attention-dim", "8", "--heads", "2", "--min-count", "1",
                      "--batch-size", "8")


def _tiny_demo_config():
    from capxai import demo
    return demo.DemoConfig(scenes=(48, 10, 16), epochs=1, captions_per_image=0, explain_limit=6,
                           finetuned_explain_limit=6, report_images=2, train_arguments=TINY_DEMO_TRAINING,
                           transformer_arguments=TINY_DEMO_TRAINING + ("--layers", "1"),
                           hf_arguments=TINY_DEMO_TRAINING + ("--layers", "1"))


TINY_DEMO = _tiny_demo_config()


@pytest.fixture(scope="session")
def tiny_demo(tmp_path_factory):
    """A finished demo on a tiny configuration (every stage, the four captioners, the report): (folder, stage
    times). Its commands run in this process, one thread, one after the other (a process of its own cost each about
    4 s to start; test_demo.py's e2e test runs the demo's processes)."""
    from capxai import demo

    out = tmp_path_factory.mktemp("demo") / "run"
    with torch_threads(1):
        times = demo.run_demo(out, TINY_DEMO, in_process=True)
    return out, times
