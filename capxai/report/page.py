"""HTML pieces of the report: escaping, markdown tables (what the evaluation commands already write) as HTML, the
page's style and its script (plain JavaScript: clicking a word shows that word's explanations; no CDN, no server)."""
import html
import json
import re
from typing import List

STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5em auto; max-width: 1280px; color: #222; }
h1 { font-size: 1.6em; } h2 { border-bottom: 1px solid #ccc; margin-top: 2em; } h3 { margin-bottom: 0.3em; }
table { border-collapse: collapse; margin: 0.6em 0 1.2em; font-size: 0.85em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f2f2f2; }
.example { border: 1px solid #ddd; border-radius: 6px; padding: 0.8em; margin: 1em 0; }
.caption { font-size: 1.15em; margin: 0.4em 0 0.6em; }
.word { cursor: pointer; padding: 0.05em 0.25em; border-radius: 3px; margin-right: 0.1em; }
.word:hover { background: #eee; }
.word.selected { outline: 2px solid #333; background: #ffe9a8; }
.hallucinated { color: #b00; text-decoration: underline wavy #b00; }
.panels { display: flex; flex-wrap: wrap; gap: 0.6em; }
.panels figure { margin: 0; text-align: center; font-size: 0.8em; }
.panels img { width: 160px; height: auto; min-height: 40px; image-rendering: auto; border: 1px solid #ccc;
              display: block; }
.linguistic { margin-top: 0.6em; font-size: 1.0em; }
.linguistic span { padding: 0.1em 0.3em; margin-right: 0.15em; border-radius: 3px; }
.linguistic span.prompt { font-style: italic; border-bottom: 1px dotted #999; }
.legend { display: inline-block; width: 180px; height: 12px; vertical-align: middle;
          background: linear-gradient(to right, rgb(0,0,255), rgb(255,255,255), rgb(255,0,0)); border: 1px solid #999; }
.note { color: #555; font-size: 0.9em; }
.plots img { max-width: 100%; }
"""

SCRIPT = """
(function () {
  // the data (the dataset's words) goes in as textContent and properties, never parsed as HTML: shown, not run
  const data = JSON.parse(document.getElementById('report-data').textContent);
  function colour(value) {
    const alpha = Math.min(1, Math.abs(value)).toFixed(3);
    return value >= 0 ? 'rgba(214, 39, 40, ' + alpha + ')' : 'rgba(31, 119, 180, ' + alpha + ')';
  }
  function show(section, example, t) {
    section.querySelectorAll('.word').forEach(function (span) {
      span.classList.toggle('selected', Number(span.dataset.t) === t);
    });
    section.querySelectorAll('img.heatmap').forEach(function (img) {
      img.src = example.heatmaps[img.dataset.method][t];
      img.alt = img.dataset.method + ' explanation of "' + example.words[t] + '"';
    });
    const contrastWord = section.querySelector('.contrast-word');
    if (contrastWord && example.contrast_words) { contrastWord.textContent = example.contrast_words[t]; }
    const selected = section.querySelector('.selected-word');
    selected.textContent = '"' + example.words[t] + '" (p = ' + example.probabilities[t].toFixed(2) + ')';
    const box = section.querySelector('.linguistic');
    box.textContent = '';
    const label = document.createElement('b');
    label.textContent = example.word_relevance ? (example.prompt ? 'LRP on the prompt and the preceding words: '
                                                  : 'LRP on the preceding words: ') : 'no word relevance';
    box.appendChild(label);
    if (example.prompt) {
      for (let j = 0; j < example.prompt.length; j++) {
        const span = document.createElement('span');
        span.className = 'prompt';
        span.textContent = example.prompt[j];
        span.style.background = colour(example.prompt_relevance[t][j]);
        span.title = 'prompt token, relevance ' + example.prompt_relevance[t][j].toFixed(3);
        box.appendChild(span);
      }
    }
    if (example.word_relevance) {
      for (let i = 0; i <= t; i++) {
        const span = document.createElement('span');
        span.textContent = example.fed[i];
        span.style.background = colour(example.word_relevance[t][i]);
        span.title = 'relevance ' + example.word_relevance[t][i].toFixed(3);
        box.appendChild(span);
      }
      const target = document.createElement('b');
      target.textContent = '\\u2192 ' + example.words[t];
      box.appendChild(target);
    }
  }
  document.querySelectorAll('.example').forEach(function (section) {
    const example = data.examples[section.dataset.example];
    section.querySelectorAll('.word').forEach(function (span) {
      span.addEventListener('click', function () { show(section, example, Number(span.dataset.t)); });
    });
    show(section, example, example.initial);
  });
})();
"""


def escape(text) -> str:
    """``text`` as HTML text, quotes included: safe between tags and inside a quoted attribute value."""
    return html.escape(str(text), quote=True)


# json.dumps keeps "<", ">" and "&": a caption holding "</script>" or "<!--" would end (or bend) the data's script
# element and run what follows; as \u escapes they are the same json to JSON.parse and no markup to the HTML parser
SCRIPT_JSON_ESCAPES = {ord("<"): "\\u003c", ord(">"): "\\u003e", ord("&"): "\\u0026"}


def script_json(data) -> str:
    """``data`` as json that can sit inside ``<script type="application/json">`` whatever its strings hold."""
    return json.dumps(data, separators=(",", ":")).translate(SCRIPT_JSON_ESCAPES)


def table(header: List[str], rows: List[List[str]]) -> str:
    """An HTML table; cells are escaped."""
    head = "".join(f"<th>{escape(cell)}</th>" for cell in header)
    body = "".join("<tr>" + "".join(f"<td>{escape(cell)}</td>" for cell in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def markdown_to_html(markdown: str, heading_offset: int = 1) -> str:
    """The markdown the evaluation commands write (headings, pipe tables, paragraphs) as HTML; nothing more is
    understood, and every text is escaped."""
    parts, rows = [], []

    def flush_table():
        if rows:
            parts.append(table(rows[0], rows[1:]))
            rows.clear()

    for line in markdown.splitlines():
        stripped = line.strip()
        if stripped.startswith("|"):
            cells = [cell.strip() for cell in stripped.strip("|").split("|")]
            if not all(re.fullmatch(r":?-{3,}:?", cell) for cell in cells):  # skip the |---| line
                rows.append(cells)
            continue
        flush_table()
        heading = re.match(r"(#+)\s+(.*)", stripped)
        if heading:
            level = min(6, len(heading.group(1)) + heading_offset)
            parts.append(f"<h{level}>{escape(heading.group(2))}</h{level}>")
        elif stripped:
            parts.append(f"<p class=\"note\">{escape(stripped)}</p>")
    flush_table()
    return "\n".join(parts)


def document(title: str, body: str, data: dict) -> str:
    """The whole page: style, body, the examples' data as json and the script (all inline)."""
    payload = script_json(data)
    return (f"<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n<title>{escape(title)}</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n"
            f"<script id=\"report-data\" type=\"application/json\">{payload}</script>\n"
            f"<script>{SCRIPT}</script>\n</body>\n</html>\n")
