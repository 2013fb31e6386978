"""capxai report: the page of a (tiny) demo run holds what it should, every picture it names exists, it reads
nothing from the network, and it is not replaced unless asked."""
import json
import re
from html.parser import HTMLParser

import pytest

from capxai import cli
from capxai.explain import METHODS
from capxai.report.html_report import build_report
from capxai.report.page import markdown_to_html
from helpers import HOSTILE, SHOWN, hostile_report


class Page(HTMLParser):
    """The report's images, example sections, clickable words, embedded data and every attribute's name."""

    def __init__(self):
        super().__init__()
        self.images, self.sections, self.words, self.scripts, self.data = [], [], [], [], None
        self.attributes = set()
        self._in_data = False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.attributes.update(attrs)
        if tag == "img":
            self.images.append(attrs)
        if tag == "section" and "example" in attrs.get("class", ""):
            self.sections.append(attrs["data-example"])
        if tag == "span" and "word" in attrs.get("class", "").split():
            self.words.append(attrs)
        if tag == "script":
            self.scripts.append(attrs)
            self._in_data = attrs.get("id") == "report-data"

    def handle_data(self, data):
        if self._in_data:
            self.data = json.loads(data)
            self._in_data = False


def read_page(run_dir):
    page = Page()
    page.feed((run_dir / "report.html").read_text())
    return page


def test_report_shows_every_method_for_every_word_of_the_chosen_images(tiny_demo):
    run_dir, _ = tiny_demo
    page = read_page(run_dir)
    assert len(page.sections) == 8  # 2 images x 4 captioners
    for key in page.sections:
        example = page.data["examples"][key]
        assert set(example["heatmaps"]) == set(METHODS) | {"lrp-contrast"}  # the runner-up contrast: a third panel
        contrast = example["contrast_words"]
        assert len(contrast) == len(example["words"]) and all(c != w for c, w in zip(contrast, example["words"]))
        for maps in example["heatmaps"].values():
            assert len(maps) == len(example["words"]) > 0
            assert all((run_dir / path).is_file() for path in maps)
        relevance = example["word_relevance"]
        assert [len(row) for row in relevance] == list(range(1, len(example["words"]) + 1))
        assert all(abs(value) <= 1.0 + 1e-6 for row in relevance for value in row)
    assert len(page.words) == sum(len(page.data["examples"][k]["words"]) for k in page.sections)


def test_every_picture_exists_and_nothing_comes_from_the_network(tiny_demo):
    run_dir, _ = tiny_demo
    page = read_page(run_dir)
    sources = [image["src"] for image in page.images]
    assert any(src.endswith("grounding.png") for src in sources) and any(src.endswith("roc.png") for src in sources)
    for src in sources:
        assert not re.match(r"[a-z]+://", src), src
        assert (run_dir / src).is_file(), src
    assert all("src" not in script for script in page.scripts)  # inline scripts only
    text = (run_dir / "report.html").read_text()
    assert "http://" not in text and "https://" not in text


def test_report_has_the_tables_and_marks_hallucinated_words(tiny_demo):
    run_dir, _ = tiny_demo
    text = (run_dir / "report.html").read_text()
    for heading in ("Grounding", "Hallucinated-word detection", "Image ablation", "CIDEr", "CHAIR-s",
                    "lrp-xe - baseline-xe", "How long it took"):
        assert heading in text, heading
    hallucinated = json.loads((run_dir / "eval-adaptive" / "hallucination_test_beam3.json").read_text())
    if any(entry["hallucination_idxs"] for entry in hallucinated["chair"]["imgToEval"].values()):
        assert 'class="hallucinated"' in text


def test_hallucinated_words_are_marked_in_captions_and_in_clickable_words():
    from capxai.report.html_report import _example_html, _marked_caption

    entry = {"words": ["a", "box", "and", "a", "ring"], "hallucination_idxs": [4]}
    assert _marked_caption(entry) == 'a box and a <span class="hallucinated">ring</span>'
    assert _marked_caption(None) == "(not captioned)"
    example = {"words": ["a", "<ring>"], "hallucinated": [1], "initial": 1, "image": "i.png",
               "heatmaps": {"lrp": ["a.png", "b.png"]}}
    html = _example_html("k", example, {"image_id": 7, "probe": {"present": "box", "absent": "ring"}}, ["lrp"])
    assert '<span class="word hallucinated" data-t="1">&lt;ring&gt;</span>' in html
    assert 'src="b.png"' in html and "its usual partner ring is absent" in html


def test_report_is_not_replaced_unless_asked(tiny_demo, capsys):
    run_dir, _ = tiny_demo
    before = (run_dir / "report.html").read_text()
    assert cli.main(["report", str(run_dir)]) == 2
    assert "--overwrite" in capsys.readouterr().err
    assert (run_dir / "report.html").read_text() == before
    assert cli.main(["report", str(run_dir), "--overwrite"]) == 0
    assert not list(run_dir.glob(".report-*"))  # no staging folder left behind


def test_report_of_a_folder_without_evaluations_says_what_is_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="explanations_test_beam3.json"):
        build_report(tmp_path)
    assert not list(tmp_path.iterdir())


@pytest.mark.parametrize("content, message", [("{broken", "cannot read"), ('{"a": 1}', "list of report images"),
                                              ('[{"file": "../../../etc/passwd", "image_id": 1}]', "leaves the run's"),
                                              ('[{"file": "/etc/passwd", "image_id": 1}]', "leaves the run's")],
                         ids=["broken", "not-a-list", "dotdot", "absolute"])
def test_broken_report_inputs_get_one_line_and_leave_nothing(tiny_demo, tmp_path, capsys, content, message):
    import shutil

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_demo[0], run_dir)
    (run_dir / "report-images-adaptive.json").write_text(content)
    before = (run_dir / "report.html").read_text()
    assert cli.main(["report", str(run_dir), "--overwrite"]) == 2
    error = capsys.readouterr().err
    assert message in error and "Traceback" not in error and len(error.strip().splitlines()) == 1
    assert (run_dir / "report.html").read_text() == before and not list(run_dir.glob(".report-*"))


def test_markdown_tables_become_escaped_html():
    html = markdown_to_html("# Title\n\ntext <b>\n\n| a | b |\n|---|---|\n| 1 | <x> |\n")
    assert "<h2>Title</h2>" in html and "&lt;b&gt;" in html
    assert "<th>a</th><th>b</th>" in html and "<td>&lt;x&gt;</td>" in html and "---" not in html


def test_the_report_follows_the_umask(tiny_demo, tmp_path):
    """Others in the group (or a web server) can open the page and its pictures, as with any file the user makes."""
    import os
    import shutil
    import stat

    run_dir = tmp_path / "run"
    shutil.copytree(tiny_demo[0], run_dir)
    previous = os.umask(0o027)
    try:
        build_report(run_dir, overwrite=True, progress=False)
    finally:
        os.umask(previous)
    modes = {path.relative_to(run_dir): stat.S_IMODE(path.stat().st_mode)
             for path in [run_dir / "report.html", run_dir / "report_files", *(run_dir / "report_files").rglob("*")]}
    assert modes.pop(run_dir.joinpath("report.html").relative_to(run_dir)) == 0o640
    assert modes and all(mode == (0o750 if (run_dir / path).is_dir() else 0o640) for path, mode in modes.items()), modes


# -- crafted data sets: whatever text the data holds is shown as text on the page, never run -------------------------
def test_hostile_data_is_escaped_in_the_page(tiny_demo, tmp_path):
    """No raw hostile markup in the page, only two script elements (the page's own), and the embedded json still
    gives back the words exactly. (The browser test runs the same page.)"""
    from urllib.parse import unquote

    from capxai.report.page import SCRIPT, escape

    assert "innerHTML" not in SCRIPT  # the script shows the data as text (the browser test clicks through it)
    text = hostile_report(tiny_demo[0], tmp_path / "run").read_text()
    for name, hostile in HOSTILE.items():
        assert hostile not in text, name
    for name in SHOWN:
        assert escape(HOSTILE[name]) in text, name
    assert text.count("<script") == text.count("</script>") == 2 and text.count("<!--") == 0
    page = Page()
    page.feed(text)
    assert not [attr for attr in page.attributes if attr.startswith("on")]  # no event handler made it into a tag
    words = [page.data["examples"][key]["words"][:3] for key in page.sections]
    assert [HOSTILE["word"], HOSTILE["breakout"], HOSTILE["comment"]] in words
    for key in page.sections:
        for path in [page.data["examples"][key]["image"], *page.data["examples"][key]["heatmaps"]["lrp"]]:
            assert (tmp_path / "run" / unquote(path)).is_file() and not set("#?") & set(path), path  # encoded


def test_a_captioner_name_with_dollar_signs_is_drawn_as_text():
    """A captioner is named by its folder; "$" there would start matplotlib's mathtext (and "$\\foo$" raise)."""
    import io

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from capxai.report.plots import plain

    name = r"eval-$\foo$"
    for title, fails in ((name, True), (plain(name), False)):
        figure, axis = plt.subplots()
        axis.set_title(title)
        try:
            if fails:
                with pytest.raises(ValueError):
                    figure.savefig(io.BytesIO(), format="png")
            else:
                figure.savefig(io.BytesIO(), format="png")
                assert axis.get_title() == plain(name)
        finally:
            plt.close(figure)
