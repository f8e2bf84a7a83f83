"""A run's shareable report: an executed notebook as ONE self-contained HTML file that reads
like a results page (nbconvert's ``lab`` template, figures embedded, nothing fetched from the
network).

The page opens with the run's title (the notebook's ``#`` heading, also the page title), its
status line and header facts, then the headline table (the first table shown by the cell
tagged ``headline``), then the notebook's figures and tables in order, ending with its
summary. Three things are one click away, folded: what the notebook does (the rest of its
first markdown cell), the run's parameters, and the code. What a notebook says to the person
running it is not in the report: markdown cells tagged ``notebook-only`` (and a working
copy's note) are dropped, and so is what a code cell tagged ``notebook-only`` prints
(stdout); its warnings and displays stay."""
from __future__ import annotations

import copy
import os
import re
from pathlib import Path
from typing import Iterable

from ..utils.files import write_text

NOTEBOOK_ONLY = "notebook-only"  # cell tag: for the person running the notebook, not a reader
HEADLINE = "headline"            # cell tag: its first table opens the report
WORKING_COPY = "working-copy"    # the note `rst-workbook new` puts first in a working copy
REPORT_HEADLINE = "rst-headline"  # the report's own cell holding the headline table
DROPPED = ("parameters", "injected-parameters")  # shown as the run's parameters table instead

# Extends nbconvert's lab template: no require.js / MathJax / mermaid / widget manager from a
# CDN (a report must open offline); a results header; code hidden until asked for.
REPORT_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{% block html_head_js_requirejs %}{% endblock html_head_js_requirejs %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
{% block html_head_css %}
<style type="text/css">
body.rst-report { max-width: 1180px; margin: 0 auto; padding: 0 16px; }
body.rst-report main { padding: 0; }
#rst-header { font: 14px/1.45 system-ui, sans-serif; padding: 12px 0 6px; border-bottom: 1px solid #d0d7de;
  margin-bottom: 6px; }
#rst-header h1 { font-size: 22px; line-height: 1.25; margin: 0 0 4px; font-weight: 600; }
#rst-header .rst-line { margin: 0 0 2px; color: #1f2328; }
#rst-header .rst-facts { color: #59636e; font-size: 13px; }
#rst-header .rst-facts span + span::before { content: " · "; }
.rst-badge { padding: 1px 8px; border-radius: 10px; background: #ddd; font-weight: 600; }
.rst-badge.finished { background: #c9f0d0; }
.rst-badge.failed, .rst-badge.interrupted, .rst-badge.dead { background: #f8c9c9; }
.rst-bar { display: flex; flex-wrap: wrap; gap: 4px 16px; align-items: baseline; margin-top: 6px; font-size: 13px; }
.rst-bar details[open] { flex-basis: 100%; }
.rst-bar summary { cursor: pointer; color: #0b57d0; }
.rst-bar button { font: inherit; padding: 1px 10px; cursor: pointer; }
.rst-bar a { color: #0b57d0; }
.rst-bar table { border-collapse: collapse; margin: 4px 0 8px; }
.rst-bar th, .rst-bar td { text-align: left; padding: 1px 12px 1px 0; vertical-align: top; }
.rst-bar th { font-weight: 500; color: #59636e; }
#rst-about > div { max-width: 60em; }
/* code: hidden until "Show code"; prompts never take width from the figures */
body.rst-report:not(.rst-show-code) .jp-CodeCell .jp-Cell-inputWrapper { display: none; }
body.rst-report:not(.rst-show-code) .jp-CodeCell.jp-mod-noOutputs { display: none; }
body.rst-report .jp-InputPrompt, body.rst-report .jp-OutputPrompt { display: none; }
body.rst-report .jp-Cell { padding: 2px 0; }
.celltag_rst-headline .jp-Cell-inputWrapper { display: none !important; }
.celltag_rst-headline { padding: 4px 0 8px !important; }
/* tables wrap in the page's width (long "why" columns included) */
body.rst-report .jp-RenderedHTMLCommon table { table-layout: auto; max-width: 100%; }
body.rst-report .jp-RenderedHTMLCommon td, body.rst-report .jp-RenderedHTMLCommon th {
  white-space: normal; overflow-wrap: anywhere; max-width: 40em; }
body.rst-report .jp-RenderedHTMLCommon td:first-child, body.rst-report .jp-RenderedHTMLCommon th:first-child {
  text-align: left; }
body.rst-report .jp-OutputArea-output img { max-width: 100%; height: auto; }
body.rst-report .jp-RenderedHTMLCommon td, body.rst-report .jp-RenderedHTMLCommon th { padding: 3px 10px; }
body.rst-report .jp-RenderedHTMLCommon h2 { font-size: 20px; margin: 14px 0 4px; }
body.rst-report .jp-RenderedHTMLCommon p { margin-bottom: 6px; }
@media print { .rst-bar button { display: none; } }
</style>
{% endblock html_head_css %}
{%- block body_header -%}
<body class="jp-Notebook rst-report" data-jp-theme-light="true" data-jp-theme-name="JupyterLab Light">
<header id="rst-header">
<h1>{{ resources.rst.title | e }}</h1>
<p class="rst-line">{% if resources.rst.status %}<span class="rst-badge {{ resources.rst.status | e }}">{{ resources.rst.status | e }}</span> {% endif %}{{ resources.rst.status_line | e }}</p>
{% if resources.rst.facts %}<p class="rst-line rst-facts">{% for item in resources.rst.facts %}<span>{{ item | e }}</span>{% endfor %}</p>{% endif %}
<div class="rst-bar">
{% if resources.rst.intro %}<details id="rst-about"><summary>What this notebook does</summary><div>{{ resources.rst.intro | markdown2html }}</div></details>{% endif %}
{% if resources.rst.params %}<details id="rst-params"><summary>Parameters ({{ resources.rst.params | length }})</summary>
<table>{% for k, v in resources.rst.params %}<tr><th>{{ k | e }}</th><td>{{ v | e }}</td></tr>{% endfor %}</table>
</details>{% endif %}
<button type="button" id="rst-toggle-code" onclick="rstToggleCode()">Show code</button>
{% if resources.rst.index_href %}<a href="{{ resources.rst.index_href | e }}">all runs</a>{% endif %}
</div>
</header>
<main>
{%- endblock body_header -%}
{% block footer_js %}
<script>
function rstToggleCode() {
  var shown = document.body.classList.toggle("rst-show-code");
  document.getElementById("rst-toggle-code").textContent = shown ? "Hide code" : "Show code";
}
if (/[#&?]show-code\b/.test(location.hash + location.search)) { rstToggleCode(); }
</script>
{% endblock footer_js %}
"""


def _tags(cell) -> list:
    return cell.get("metadata", {}).get("tags", [])


def _has_table(output) -> bool:
    data = output.get("data", {})
    return bool(re.search(r"^\s*\|.*\|\s*$", data.get("text/markdown", ""), re.M)
                or "<table" in data.get("text/html", ""))


def shape_for_report(nb) -> tuple[object, str | None, str]:
    """A copy of the executed notebook ``nb`` as the report shows it, with its title (the
    first markdown cell's ``#`` heading, None without one) and the rest of that cell (what the
    notebook does). See the module's docstring for what is dropped and moved."""
    from nbformat import from_dict
    nb = copy.deepcopy(nb)
    cells = []
    for cell in nb.cells:
        tags = _tags(cell)
        if WORKING_COPY in tags or any(t in tags for t in DROPPED) or (
                NOTEBOOK_ONLY in tags and cell.cell_type != "code"):
            continue
        if NOTEBOOK_ONLY in tags:
            cell.outputs = [o for o in cell.outputs
                            if not (o.output_type == "stream" and o.get("name") == "stdout")]
        cells.append(cell)
    title, intro = None, ""
    first = next((c for c in cells if c.cell_type == "markdown"), None)
    heading = re.match(r"\s*#\s+(.+?)\s*(?:\n|$)", first.source) if first is not None else None
    if heading:
        title, intro = heading.group(1), first.source[heading.end():].strip()
        cells.remove(first)
    source = next((c for c in cells if c.cell_type == "code" and HEADLINE in _tags(c)
                   and any(_has_table(o) for o in c.outputs)), None)
    if source is not None:
        table = next(o for o in source.outputs if _has_table(o))
        source.outputs = [o for o in source.outputs if o is not table]
        # the headline table's own output, moved up (a report cell, not notebook code)
        top = from_dict({"cell_type": "code", "source": "", "execution_count": None,
                         "id": "report-headline", "outputs": [table],
                         "metadata": {"tags": [REPORT_HEADLINE]}})
        cells.insert(0, top)
    nb.cells = cells
    return nb, title, intro


def render_html(notebook_path: str | os.PathLike, html_path: str | os.PathLike | None = None,
                title: str | None = None, status: str | None = None,
                items: Iterable[str] = (), index_href: str | None = None,
                params: dict | None = None, relative_to: str | os.PathLike | None = None,
                status_line: str = "") -> Path:
    """Render an executed notebook to one self-contained HTML file (see the module).

    ``title``: used when the notebook has no ``#`` heading; ``status`` (finished, failed, ...)
    and ``status_line`` (when, how long) follow the title, then ``items`` (short header
    facts, one each). ``index_href`` links to the run index; ``params`` (the run's parameters)
    are listed folded. Paths under ``relative_to`` (the project) are shown relative to it: a
    shared report names no one's home folder.
    """
    import nbformat  # nbconvert and nbformat (1.5 s) load when a report is made, not with the CLI
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    notebook_path = Path(notebook_path)
    html_path = Path(html_path) if html_path else notebook_path.with_suffix(".html")
    nb = nbformat.read(notebook_path, as_version=4)
    nb.metadata.pop("widgets", None)  # widget state needs a CDN manager; text fallbacks stay
    nb, heading, intro = shape_for_report(nb)
    shown_title = heading or title or notebook_path.stem
    nb.metadata["title"] = shown_title  # the page title (the lab template reads it)
    exporter = HTMLExporter(template_name="lab", embed_images=True,
                            extra_loaders=[DictLoader({"rst_report.html.j2": REPORT_TEMPLATE})],
                            template_file="rst_report.html.j2")
    resources = {"rst": {"title": shown_title, "status": status or "", "status_line": status_line,
                         "facts": [i for i in items if i], "index_href": index_href, "intro": intro,
                         "params": [(k, _shown(v)) for k, v in (params or {}).items()]}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    if relative_to is not None:
        root = str(Path(relative_to).resolve())
        body = body.replace(root + "/", "").replace(root, ".")
    write_text(html_path, body)
    return html_path


def precision_item(metrics: dict) -> str | None:
    """The header's precision entry: what ``precision: auto`` chose and why (metrics.json's
    ``precision`` record, written by the run); None for a run without one."""
    record = metrics.get("precision") if isinstance(metrics, dict) else None
    if not isinstance(record, dict) or not record.get("summary"):
        return None
    return f"precision: {record['summary']}"


def _shown(value) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)
