"""Sphinx configuration of capxai's reference documentation (``make docs``; built with warnings as errors).

The API pages are autodoc over the installed package (the editable install of the repository), the Markdown pages
(tutorials, the LRP rules) go through myst-parser. The tutorials' code runs as tests (tests/test_tutorials.py)."""
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))  # the checkout's capxai, also when the venv's editable install points elsewhere

project = "capxai"
author = "the capxai authors"
copyright = "capxai authors"  # noqa: A001  (Sphinx's name)
release = version = "0.1.0"

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",  # Google-style Args: / Returns: / Attributes: sections
    "sphinx.ext.mathjax",
    "myst_parser",
]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# autodoc: a package page documents what its __init__ exports (__all__), in the order of the source
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
autodoc_class_signature = "separated"
autodoc_preserve_defaults = True  # `composite="paper"`, not the object a default evaluates to
autodoc_inherit_docstrings = False  # torch.nn.Module.forward's docstring is not ours
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
napoleon_attr_annotations = True

# myst: the rules document writes its math in code spans and $...$; tutorials are plain fenced code
myst_enable_extensions = ["dollarmath", "amsmath", "colon_fence", "deflist"]
myst_heading_anchors = 3

html_theme = "furo"
html_title = "capxai"
html_static_path = []

ADDENDUM = ROOT / "docs" / "LRP_RULES_ADDENDUM.md"
GUIDE = ROOT / "docs" / "guide"
RULES_LINK = re.compile(r"\[([^\]]+)\]\(\.\./LRP_RULES\.md\)")


def _rules_with_addendum(app, docname, source):
    """The rules page is docs/LRP_RULES.md, followed by its addendum when the repository has one."""
    if docname == "rules" and ADDENDUM.is_file():
        source[0] += f"\n```{{include}} ../{ADDENDUM.name}\n```\n"


def _guide_links_to_the_rules_page(app, relative_path, parent_docname, content):
    """The guide (docs/guide/*.md, included by guide/*.md here) links the rules as the file beside it; on the site
    that file is the rules page."""
    if (Path(app.srcdir) / relative_path).resolve().parent == GUIDE:
        content[0] = RULES_LINK.sub(lambda link: f"{{doc}}`{link.group(1)} </rules>`", content[0])


def setup(app):
    app.connect("source-read", _rules_with_addendum)
    app.connect("include-read", _guide_links_to_the_rules_page)
