"""The tutorials of the documentation site (docs/site/tutorials/*.md) run as a user runs them: each tutorial's
```python blocks, in order, as one program in a fresh namespace (``__main__``) with an empty folder as its working
directory and torch on one thread; then the checks below run in the same program, on the variables the tutorial
made (what it claims, not only that it ran). In this process rather than a fresh one: the five tutorials paid about
3 s each for starting Python and torch; the random generators and the working folder are put back afterwards."""
import contextlib
import os
import random
import re
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from helpers import torch_threads

ROOT = Path(__file__).resolve().parents[1]
TUTORIALS = ROOT / "docs" / "site" / "tutorials"
BLOCK = re.compile(r"^```python\n(.*?)^```$", re.S | re.M)

# What each tutorial must have shown, checked on its variables after its last block.
CHECKS = {
    "explain_captioner": """
assert len(history["epochs"]) == 2 and all(epoch["loss"] > 0 for epoch in history["epochs"])
assert images.shape == (3, 3, 96, 96) and len(references) == 3
assert own.pixel_relevance.shape[:2] == own.tokens.shape and own.word_relevance.shape == (B, T, T)
assert own.mask.sum() == own.lengths.sum() and bool((own.heatmaps()[~own.mask] == 0).all())
assert [len(words) for words in by_lrp.words] == [len(reference.split()) + 1 for reference in references]
assert all(words[-1] == "<end>" for words in by_lrp.words)  # every reference word, then <end>, explained
assert by_lrp.pixel_relevance.abs().sum() > 0 and by_gradcam.pixel_map.abs().sum() > 0
assert path.is_file() and path.with_suffix(".json").is_file()
""",
    "own_captioner": """
assert sorted(maps) == sorted(explain.METHODS.names())
assert all(tuple(m.shape) == (2, 4, 96, 96) and bool(torch.isfinite(m).all()) and m.abs().sum() > 0
           for m in maps.values())
assert explanation.logits[explanation.mask].abs().min() > 0 and error < 1e-6 * explanation.logits.abs().max().item()
assert relevance.shape == sequences.shape and per_step.abs().sum() > 0
""",
    "huggingface": """
assert same and len({tuple(row) for row in decoded.tokens.tolist()}) > 1  # captions differ: the comparison can fail
B, T = lrp.tokens.shape
assert lrp.pixel_relevance.shape == (B, T, 3, 32, 32) and lrp.feature_relevance.shape == (B, T, 17, 32)
assert gradcam.pixel_map.shape == (B, T, 32, 32) and bool(torch.isfinite(gradcam.pixel_map).all())
runner_up = explain.LRP(captioner, encoder).explain(images, captions=lrp.captions, targets=against_runner_up.contrast)
difference = lrp.pixel_relevance - runner_up.pixel_relevance
torch.testing.assert_close(against_runner_up.pixel_relevance, difference, rtol=1e-4,
                           atol=1e-5 * difference.abs().max().item())
assert by_blip.pixel_relevance.shape == (1, 4, 3, 32, 32) and by_blip.pixel_relevance.abs().sum() > 0
""",
    "evaluate": """
assert len(words) >= 4 and len(masks) == len(words)
assert sorted(maps) == ["gradcam", "gradient-x-input", "lrp", "uniform"]
for scores in grounding.values():
    assert scores.shape == (len(words), 10) and bool(((scores >= 0) & (scores <= 1)).all())
best_box_share = torch.stack([mask.flatten(1).sum(1).max() / (96 * 96) for mask in masks]).double()
torch.testing.assert_close(grounding["uniform"], best_box_share[:, None].expand(-1, 10))  # a flat map: the box's area
torch.testing.assert_close(pointing["uniform"], torch.stack([mask.any(0).double().mean() for mask in masks]))
assert bool((before > 0).all()) and sorted(drops) == ["gradcam", "gradient-x-input", "lrp", "random"]
assert all(drop.shape == (len(words),) and bool(torch.isfinite(drop).all()) for drop in drops.values())
""",
    "finetune": """
assert sorted(histories) == ["baseline", "gated", "lrp"] and all(len(h["epochs"]) == 1 for h in histories.values())
assert histories["lrp"]["epochs"][0]["explained_share"] > 0 and "masked_share" in histories["gated"]["epochs"][0]
assert histories["lrp"]["epochs"][0]["loss"] != histories["baseline"]["epochs"][0]["loss"]  # the weights took part
assert bool(((weights_first >= 0) & (weights_first <= 2)).all()) and bool((weights_first[~explained] == 1).all())
assert int(label_explained.sum()) >= 4 and not bool((label_weights[label_explained] == 1).all())
assert changed > 0 and decoded.tokens.shape[0] == 1
""",
}


def tutorial_code(name: str) -> str:
    """The tutorial's python blocks, in order, as one program."""
    blocks = BLOCK.findall((TUTORIALS / f"{name}.md").read_text())
    assert blocks, f"docs/site/tutorials/{name}.md has no ```python blocks"
    return "\n".join(blocks)


@contextlib.contextmanager
def _kept_state(folder: Path):
    """The working folder ``folder`` and one torch thread inside; cwd and the random generators restored after."""
    cwd, states = os.getcwd(), (random.getstate(), np.random.get_state(), torch.get_rng_state())
    os.chdir(folder)
    try:
        with torch_threads(1):  # tiny models: one thread is fastest on a shared CPU
            yield
    finally:
        os.chdir(cwd)
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def run_tutorial(name: str, folder: Path) -> dict:
    """Runs the tutorial and its checks; returns the namespace it left (a failing check raises its AssertionError)."""
    program = folder / f"{name}.py"
    program.write_text(tutorial_code(name) + "\n# checks (tests/test_tutorials.py)\n" + CHECKS[name])
    namespace = {"__name__": "__main__", "__file__": str(program)}
    with _kept_state(folder):
        exec(compile(program.read_text(), str(program), "exec"), namespace)
    return namespace


def test_every_tutorial_is_run_and_listed():
    pages = sorted(path.stem for path in TUTORIALS.glob("*.md") if path.stem != "index")
    assert pages == sorted(CHECKS)
    index = (TUTORIALS / "index.md").read_text()
    assert all(f"\n{page}\n" in index for page in pages), "a tutorial is missing from tutorials/index.md's toctree"


@pytest.mark.parametrize("name", sorted(CHECKS))
def test_tutorial_runs(name, tmp_path):
    run_tutorial(name, tmp_path)


def test_a_broken_tutorial_fails(tmp_path, monkeypatch):
    """The runner sees a failing check (the guard against a runner that passes whatever the tutorial does)."""
    monkeypatch.setitem(CHECKS, "explain_captioner", "assert False, 'the check ran'")
    monkeypatch.setattr(sys.modules[__name__], "tutorial_code", lambda name: "x = 1")
    with pytest.raises(AssertionError, match="the check ran"):
        run_tutorial("explain_captioner", tmp_path)
