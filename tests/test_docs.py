"""Every citation of the rules document resolves inside the repository, and the sections the code cites exist; the
documentation site builds with warnings as errors."""
import importlib
import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

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
            cited = match.group(0).rstrip(".")
            relative = cited.startswith("../") and (path.parent / cited).resolve() == rules  # the docs site's include
            if (cited not in ("docs/LRP_RULES.md", "LRP_RULES.md") and not relative) or "shared" in cited:
                offenders.append(f"{path.relative_to(ROOT)}: {match.group(0)}")
    assert not offenders, offenders


def test_section_names_the_code_cites_exist():
    text = (ROOT / "docs" / "LRP_RULES.md").read_text()
    for section in ("Notation", "Linear / elementwise sum", "LSTM cell", "Additive (adaptive) attention",
                    "Scaled dot-product attention", "CNN encoder", "Linguistic explanation", "Precision",
                    "the generic path"):
        assert section in text, section


API_PAGES = {"ops": "capxai.ops", "nn": "capxai.nn", "explain": "capxai.explain", "models": "capxai.models",
             "evaluate": "capxai.evaluate", "train": "capxai.train"}


@pytest.mark.slow
def test_the_documentation_site_builds_with_warnings_as_errors(tmp_path):
    """docs/site (what `make docs` builds): no Sphinx, autodoc, docstring or MyST warning, every name a package
    exports documented on its API page, the rules and the tutorials in."""
    done = subprocess.run([sys.executable, "-m", "sphinx", "-E", "-W", "--keep-going", "-q", "-b", "html",
                           str(ROOT / "docs" / "site"), str(tmp_path)], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-4000:]
    for page, package in API_PAGES.items():
        html = (tmp_path / "api" / f"{page}.html").read_text()
        module = importlib.import_module(package)
        exported = [name for name in module.__all__ if not inspect.ismodule(getattr(module, name))]
        missing = [name for name in exported if f'id="{package}.{name}"' not in html]
        if package == "capxai.train":  # the names it re-exports from capxai.models are documented there
            missing = [name for name in missing if f'id="capxai.models.{name}"' not in
                       (tmp_path / "api" / "models.html").read_text()]
        assert not missing, f"api/{page}.html does not document {missing}"
    rules = (tmp_path / "rules.html").read_text()
    assert all(part in rules for part in ("Part 1", "Part 2", "Part 3"))
    tutorials = sorted(path.stem for path in (ROOT / "docs" / "site" / "tutorials").glob("*.md"))
    assert all((tmp_path / "tutorials" / f"{name}.html").is_file() for name in tutorials)


def test_every_guide_page_is_on_the_site():
    guide = sorted(path.stem for path in (ROOT / "docs" / "guide").glob("*.md"))
    on_site = sorted(path.stem for path in (ROOT / "docs" / "site" / "guide").glob("*.md"))
    assert guide == on_site, "each docs/guide/NAME.md needs docs/site/guide/NAME.md (an include of it)"
    index = (ROOT / "docs" / "site" / "index.md").read_text()
    missing = [name for name in guide if f"\nguide/{name}\n" not in index]
    assert not missing, f"docs/site/index.md's Guide toctree lacks {missing}"
    for name in guide:
        assert f"../../guide/{name}.md" in (ROOT / "docs" / "site" / "guide" / f"{name}.md").read_text()
