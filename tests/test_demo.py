"""The demo (make demo) runs end to end, its explanations pass their checks, and results are reused, not
overwritten, unless asked."""
import json

import pytest

from capxai import demo
from capxai._io import atomic_write_json


def test_demo_runs_and_explanations_make_sense(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path), "--captioners"]) == 0
    linear = json.loads((tmp_path / demo.RESULT_NAME).read_text())
    sequence = json.loads((tmp_path / demo.SEQUENCE_RESULT_NAME).read_text())
    assert linear["accuracy"] > 0.9
    assert linear["relevance_share_on_informative_features"] > 3 * linear["informative_feature_fraction"]
    assert linear["conservation_relative_error_bias_factor_1"] < 1e-4
    assert sequence["accuracy"] > 0.8
    assert sequence["relevance_share_on_marker_step"] > 3 * sequence["marker_step_fraction"]

    (tmp_path / demo.RESULT_NAME).write_text(json.dumps({"kept": True}))
    demo.main(["--out", str(tmp_path), "--captioners"])
    assert json.loads((tmp_path / demo.RESULT_NAME).read_text()) == {"kept": True}
    assert "reusing" in capsys.readouterr().out


def test_captioning_demo_trains_evaluates_and_reuses(tmp_path, capsys):
    tiny = ["--hidden", "16", "--attention-dim", "8", "--heads", "2", "--min-count", "1", "--batch-size", "8"]
    summary = demo.run_captioning(tmp_path, overwrite=False, scene_counts=(24, 6, 10), epochs=1,
                                  extra_train_args=tiny)
    for captioner in ("adaptive", "multihead"):
        for beam in (1, 3):
            result = summary[captioner][f"test_beam{beam}"]
            assert {"Bleu_4", "METEOR", "ROUGE_L", "CIDEr", "CHAIRi", "CHAIRs"} <= set(result)
            assert 0.0 <= result["probe_hallucination_rate"] <= 1.0
        assert (tmp_path / f"captioner-{captioner}" / "best.pt").exists()
    saved = json.loads((tmp_path / demo.CAPTIONING_RESULT_NAME).read_text())
    assert saved["adaptive"]["test_beam3"]["CIDEr"] == summary["adaptive"]["test_beam3"]["CIDEr"]
    capsys.readouterr()
    assert demo.run_captioning(tmp_path, overwrite=False) == saved  # reused, nothing retrained
    assert "reusing" in capsys.readouterr().out


def test_atomic_write_leaves_nothing_half_written(tmp_path, monkeypatch):
    target = tmp_path / "result.json"
    atomic_write_json(target, {"a": 1})

    def disk_full(_):
        raise OSError("disk full")

    monkeypatch.setattr("capxai._io.os.fsync", disk_full)  # fails after the temporary file was written
    with pytest.raises(OSError, match="disk full"):
        atomic_write_json(target, {"a": 2})
    assert json.loads(target.read_text()) == {"a": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["result.json"]
