"""The demo (make demo) runs end to end, its explanations pass their checks, and results are reused, not
overwritten, unless asked."""
import json

import pytest

from capxai import demo
from capxai._io import atomic_write_json


def test_demo_runs_and_explanations_make_sense(tmp_path, capsys):
    assert demo.main(["--out", str(tmp_path)]) == 0
    linear = json.loads((tmp_path / demo.RESULT_NAME).read_text())
    sequence = json.loads((tmp_path / demo.SEQUENCE_RESULT_NAME).read_text())
    assert linear["accuracy"] > 0.9
    assert linear["relevance_share_on_informative_features"] > 3 * linear["informative_feature_fraction"]
    assert linear["conservation_relative_error_bias_factor_1"] < 1e-4
    assert sequence["accuracy"] > 0.8
    assert sequence["relevance_share_on_marker_step"] > 3 * sequence["marker_step_fraction"]

    (tmp_path / demo.RESULT_NAME).write_text(json.dumps({"kept": True}))
    demo.main(["--out", str(tmp_path)])
    assert json.loads((tmp_path / demo.RESULT_NAME).read_text()) == {"kept": True}
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
