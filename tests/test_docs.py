"""Every citation of the rules document resolves inside the repository, and the sections the code cites exist."""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [path for pattern in ("capxai/**/*.py", "tests/*.py", "benchmarks/*.py", "csrc/**/*.*", "tools/*", "*.md",
                                "docs/**/*.md", "Makefile")
           for path in ROOT.glob(pattern) if path.is_file() and path.suffix not in (".so", ".png")
           and path.name != "test_docs.py"]


def test_rules_citations_resolve_inside_the_repository():
    rules = ROOT / "docs" / "LRP_RULES.md"
    assert rules.is_file()
    text = rules.read_text()
    for part in ("# Part 1", "# Part 2", "# Part 3"):
        assert part in text
    offenders = []
    for path in SOURCES:
        for match in re.finditer(r"[\w./-]*LRP_RULES[\w.]*", path.read_text(errors="replace")):
            if match.group(0).rstrip(".") not in ("docs/LRP_RULES.md", "LRP_RULES.md") or "shared" in match.group(0):
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not offenders, offenders


def test_section_names_the_code_cites_exist():
    text = (ROOT / "docs" / "LRP_RULES.md").read_text()
    for section in ("Notation", "Linear / elementwise sum", "LSTM cell", "Additive (adaptive) attention",
                    "Scaled dot-product attention", "CNN encoder", "Linguistic explanation", "Precision",
                    "the generic path"):
        assert section in text, section
