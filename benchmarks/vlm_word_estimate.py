"""What capxai.explain.memory_budget estimates one word of a SmolVLM-256M-sized model's backward costs
(benchmarks/test_vlm.py's model and inputs): the largest activation the LRP forward saves, and the estimate of a word
built on it (docs/experiments/vlm/README.md compares it with the measured growth of benchmarks/vlm_memory.py).

Run: ``python benchmarks/vlm_word_estimate.py``.
"""
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from test_vlm import CAPTION, _smolvlm_sized  # noqa: E402

from capxai.explain.generic_lrp import frozen  # noqa: E402
from capxai.explain.memory_budget import SavedActivations, word_bytes  # noqa: E402
from capxai.nn import relevance_rules  # noqa: E402
from capxai.nn.context import lrp  # noqa: E402


def main() -> None:
    torch.set_num_threads(1)
    model, inputs = _smolvlm_sized()
    length = inputs["input_ids"].shape[1]
    positions = torch.arange(length - CAPTION, length)
    pixels = inputs["pixel_values"].clone().requires_grad_(True)
    with frozen(model), lrp() as rules, relevance_rules(rules), SavedActivations(model) as saved:
        logits = model(**{**inputs, "pixel_values": pixels}, use_cache=False, logits_to_keep=positions - 1).logits[0]
    embeddings = model.get_input_embeddings()(inputs["input_ids"])
    leaves = [pixels, embeddings, embeddings]  # the token embeddings and the language model's input: one size
    print(f"largest saved activation: {saved.largest / 2 ** 20:.1f} MiB")
    estimate = word_bytes(saved.largest, leaves, logits.numel() * logits.element_size())
    print(f"estimate of a word: {estimate / 2 ** 20:.1f} MiB")


if __name__ == "__main__":
    main()
