"""The README is the front page and a promise: short, its links resolve, its commands use options that exist, and
every number it quotes equals the committed file it cites."""
import re
from pathlib import Path

import pytest

from capxai import cli

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()
DEMO_RUN = ROOT / "docs" / "experiments" / "demo-2026-12-03"
NUMBER = re.compile(r"(?<![\w.])-?\d+\.\d+")


def _block(name: str) -> str:
    found = re.search(rf"<!-- {name}:start -->\n(.*?)<!-- {name}:end -->", README, re.S)
    assert found, f"README: the {name} block (between its markers) is missing"
    return found.group(1)


def _tables(markdown: str) -> dict:
    """``{section title: {first cell: [other cells]}}`` of a markdown file's tables (its ## / ### sections)."""
    tables, title = {}, None
    for line in markdown.splitlines():
        if line.startswith("#"):
            title = line.lstrip("#").strip()
        elif line.startswith("|") and not line.startswith("|---") and title is not None:
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            tables.setdefault(title, {})[cells[0]] = cells[1:]
    return tables


def test_the_readme_is_a_short_front_page():
    assert len(README.splitlines()) < 250


# README row -> (section of captioners.md, its method row, or None and the column of each captioner's row)
SOURCES = {
    "probes naming the absent partner": ("Captions and hallucination (all test images)", None,
                                         "probes naming the absent partner"),
    "test CIDEr": ("Captions and hallucination (all test images)", None, "CIDEr"),
    "LRP: share of positive relevance in the object's box": ("Grounding (threshold 0)", "lrp", None),
    "the same for a uniform map": ("Grounding (threshold 0)", "uniform", None),
    "LRP: pointing game": ("Pointing game", "lrp", None),
    "word gone when LRP's 20 top patches are blanked": ("Image ablation: word gone", "lrp", None),
    "the same for 20 random patches": ("Image ablation: word gone", "random", None),
    "hallucinated-word detection, ROC AUC of LRP": ("Detection ROC AUC", "lrp", None),
    "the same from the model's own probability": ("Detection ROC AUC", "model", None),
}


def test_the_results_table_equals_the_demo_run_it_cites():
    results = _block("results")
    assert "docs/experiments/demo-2026-12-03/captioners.md" in results
    source = _tables((DEMO_RUN / "captioners.md").read_text())
    readme_rows = _tables("## results\n" + results)["results"]
    captioners = readme_rows[""]
    assert captioners == ["adaptive", "multihead", "transformer"]
    assert set(readme_rows) - {""} == set(SOURCES)
    for label, (section, row, column) in SOURCES.items():
        if column is None:  # a method's row: one column per captioner
            expected = source[section][row]
        else:  # the per-captioner table: a named column of each captioner's row
            index = source[section]["captioner"].index(column)
            expected = [source[section][captioner][index].replace(" of 1000", "") for captioner in captioners]
        assert readme_rows[label] == expected, label


@pytest.mark.parametrize("block", ["results", "vlm-results"])
def test_every_number_of_the_results_is_in_a_file_it_cites(block):
    results = _block(block)
    cited = [ROOT / path for path in re.findall(r"`(docs/experiments/[^`]+\.md)`", results)]
    assert cited and all(path.is_file() for path in cited)
    text = "\n".join(path.read_text() for path in cited)
    quoted = set(NUMBER.findall(results))
    missing = [number for number in quoted if number not in text and number.lstrip("-") not in text]
    assert missing == [], f"README numbers not in {', '.join(map(str, cited))}: {missing}"


def test_the_fine_tuning_sentence_reads_the_difference_row():
    lines = [[cell.strip() for cell in line.strip().strip("|").split("|")]
             for line in (DEMO_RUN / "finetune_table.md").read_text().splitlines() if line.startswith("| ")]
    header, = [cells for cells in lines if cells[0] == "captioner"]
    row, = [cells for cells in lines if cells[:2] == ["adaptive", "lrp-xe - baseline-xe"]]
    difference = dict(zip(header, row))
    results = " ".join(_block("results").split())
    assert f"probe rate was {float(difference['probe rate']):.3f} higher" in results
    assert f"CIDEr {-float(difference['CIDEr']):.3f} lower" in results


def test_links_resolve():
    prose = re.sub(r"```.*?```", "", README, flags=re.S)
    targets = re.findall(r"\]\(([^)#]+)\)", prose)
    assert targets
    missing = [target for target in targets if not target.startswith("http") and not (ROOT / target).exists()]
    assert missing == []


@pytest.mark.parametrize("line", [line for line in README.splitlines() if line.startswith(".venv/bin/capxai ")])
def test_readme_commands_use_options_that_exist(line):
    text = line
    for following in README.splitlines()[README.splitlines().index(line) + 1:]:
        if not text.endswith("\\"):
            break
        text = text[:-1] + " " + following.strip()
    words = text.split()[1:]
    command = words[:2] if words[0] == "data" else words[:1]
    parser = cli.build_parser()
    for name in command:
        parser = next(action for action in parser._actions if hasattr(action, "choices") and
                      isinstance(action.choices, dict) and name in action.choices).choices[name]
    known = {flag for action in parser._actions for flag in action.option_strings}
    used = [word for word in words if word.startswith("--")]
    assert used and set(used) <= known, set(used) - known


def test_the_other_numbers_are_in_the_files_next_to_them():
    """Outside the results block and the code, each number the README quotes stands in a sentence naming the
    file that holds it (a date, a time), or is the package's own requirement (Python 3.10+)."""
    prose = re.sub(r"```.*?```", "", README.replace(_block("results"), ""), flags=re.S)
    for sentence in re.split(r"(?<=[.;])\s", " ".join(prose.split())):
        numbers = re.findall(r"\d+ min \d+ s|\d{4}-\d{2}-\d{2}", sentence)
        if not numbers:
            continue
        cited = [ROOT / path for path in re.findall(r"`((?:docs|tests)/[^`]+\.md)`", sentence)]
        assert cited, f"README: {numbers} without the file they come from: {sentence!r}"
        text = "\n".join(path.read_text() for path in cited)
        assert all(number in text for number in numbers), (numbers, sentence)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'requires-python = ">=3.10"' in pyproject and "Python 3.10+" in README

