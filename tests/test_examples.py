"""The scripts in examples/ run as a user runs them and show what they claim (json summary on stdout)."""
import json
import subprocess
import sys
from pathlib import Path

import pytest

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


def run_example(name: str) -> dict:
    done = subprocess.run([sys.executable, str(EXAMPLES / name)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-2000:]
    return json.loads(done.stdout)


def test_mlp_relevance_lands_on_informative_features():
    summary = run_example("explain_mlp.py")
    assert summary["accuracy"] > 0.9
    assert summary["relevance_share_on_informative_features"] > 3 * summary["informative_feature_fraction"]
    assert summary["conservation_relative_error_bias_factor_1"] < 1e-4
    assert summary["max_abs_difference_fused_vs_reference"] < 1e-4


def test_sequence_model_relevance_lands_on_the_marker_step():
    summary = run_example("explain_sequence_model.py")
    assert summary["accuracy"] > 0.8
    assert summary["relevance_share_on_marker_step"] > 3 * summary["marker_step_fraction"]


@pytest.mark.parametrize("name", ["explain_mlp.py", "explain_sequence_model.py"])
def test_example_has_a_docstring_that_says_how_to_run_it(name):
    text = (EXAMPLES / name).read_text()
    assert text.startswith('"""') and f"python examples/{name}" in text
