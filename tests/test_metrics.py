"""Caption metrics on a hand-checked example (pycocoevalcap, Java), SPICE's clear skip, and bad input."""
import json

import pytest

from capxai.evaluate import caption_metrics, write_metrics

REFERENCES = {1: ["a red ball next to a blue box", "a ball beside a box"],
              2: ["two green stars above a moon", "stars over a moon"],
              3: ["a yellow tent on the left of a ladder", "a tent and a ladder"]}


def test_identical_captions_score_one_and_unrelated_ones_zero(tmp_path, capsys):
    perfect = caption_metrics(REFERENCES, {i: refs[0] for i, refs in REFERENCES.items()}, spice=True)
    overall = perfect["overall"]
    assert overall["Bleu_4"] == pytest.approx(1.0, abs=1e-6)
    assert overall["ROUGE_L"] == pytest.approx(1.0, abs=1e-6)
    assert overall["METEOR"] > 0.9
    assert overall["CIDEr"] > 1.0
    assert set(perfect["imgToEval"]) == {"1", "2", "3"}
    unrelated = caption_metrics(REFERENCES, {1: "zebra", 2: "quantum physics", 3: "purple elephant"}, spice=False)
    assert unrelated["overall"]["ROUGE_L"] == 0.0 and unrelated["overall"]["CIDEr"] == 0.0
    assert unrelated["overall"]["Bleu_1"] < 1e-6
    if "SPICE" not in overall:
        assert "SPICE skipped" in capsys.readouterr().err
    path = write_metrics(tmp_path / "metrics.json", perfect)
    assert json.loads(path.read_text())["overall"]["Bleu_4"] == pytest.approx(1.0, abs=1e-6)


def test_bad_input_is_named():
    with pytest.raises(ValueError, match="no candidate captions"):
        caption_metrics(REFERENCES, {})
    with pytest.raises(ValueError, match=r"no reference captions for image ids \[9\]"):
        caption_metrics(REFERENCES, {9: "a ball"})
    with pytest.raises(ValueError, match=r"empty candidate captions for image ids \[1\]"):
        caption_metrics(REFERENCES, {1: "  "})


def test_meteor_starts_once_per_process_and_a_broken_one_is_replaced():
    """METEOR's Java process (5-15 s to load its tables) is started once and reused: equal scores from the same
    process; after a failed call the next call gets a new one."""
    from capxai.evaluate import metrics

    # the process an earlier test of this session started, if any, is the one to reuse (starting one costs 4-5 s)
    candidates = {1: "a ball next to a box", 2: "stars above a moon", 3: "a tent"}
    first = caption_metrics(REFERENCES, candidates, metrics=("METEOR",))
    meteor, started = metrics.shared_meteor(), metrics.shared_meteor.cache_info().misses
    assert started >= 1
    assert caption_metrics(REFERENCES, candidates, metrics=("METEOR",)) == first
    assert metrics.shared_meteor() is meteor and meteor.meteor_p.poll() is None
    assert metrics.shared_meteor.cache_info().misses == started  # the second call started none

    def broken(gts, res):
        meteor.lock.acquire()  # as pycocoevalcap's scorer holds it when a read fails
        raise BrokenPipeError("METEOR died")

    meteor.compute_score = broken
    with pytest.raises(BrokenPipeError):
        caption_metrics(REFERENCES, candidates, metrics=("METEOR",))
    assert meteor.meteor_p.poll() is not None and not meteor.lock.locked()  # stopped, its lock free
    assert caption_metrics(REFERENCES, candidates, metrics=("METEOR",)) == first
    assert metrics.shared_meteor() is not meteor
