"""A run's shareable report: an executed notebook as ONE self-contained HTML file
(nbconvert's ``lab`` template, figures embedded, nothing fetched from the network, a
"hide code" button, a header with the run's status and numbers, a link to the index)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from ..utils.files import write_text

# Extends nbconvert's lab template: no require.js / MathJax / mermaid / widget manager from a
# CDN (a report must open offline), plus a toolbar with a code toggle.
REPORT_TEMPLATE = r"""{%- extends 'index.html.j2' -%}
{% block html_head_js_requirejs %}{% endblock html_head_js_requirejs %}
{% block jupyter_widgets %}{% endblock jupyter_widgets %}
{% block html_head_js_mathjax %}{% endblock html_head_js_mathjax %}
{% block html_head_js_mermaidjs %}{% endblock html_head_js_mermaidjs %}
{% block extra_css %}
<style type="text/css">
.rst-toolbar { position: sticky; top: 0; z-index: 10; display: flex; gap: 1em; align-items: center;
  flex-wrap: wrap; padding: 6px 12px; margin-bottom: 8px; font: 13px/1.4 system-ui, sans-serif;
  background: #f3f5f8; border-bottom: 1px solid #d0d7de; }
.rst-toolbar .rst-title { font-weight: 600; }
.rst-toolbar .rst-status { padding: 1px 8px; border-radius: 10px; background: #ddd; }
.rst-toolbar .rst-status.finished { background: #c9f0d0; }
.rst-toolbar .rst-status.failed, .rst-toolbar .rst-status.interrupted { background: #f8c9c9; }
.rst-toolbar button { font: inherit; padding: 2px 10px; cursor: pointer; }
.rst-toolbar a { color: #0b57d0; }
body.rst-hide-code .jp-CodeCell .jp-Cell-inputWrapper { display: none; }
body.rst-hide-code .jp-CodeCell .jp-OutputPrompt { visibility: hidden; }
/* the notebook's default parameters: folded to a few lines (click to unfold) */
.celltag_parameters .jp-InputArea-editor { max-height: 7.5em; overflow: hidden; cursor: pointer;
  position: relative; }
.celltag_parameters .jp-InputArea-editor::after { content: "default parameters - click to show all";
  position: absolute; left: 0; right: 0; bottom: 0; padding: 14px 8px 2px; font: 12px system-ui, sans-serif;
  color: #0b57d0; background: linear-gradient(rgba(247,247,247,0), #f7f7f7 60%); }
.celltag_parameters.rst-unfolded .jp-InputArea-editor { max-height: none; }
.celltag_parameters.rst-unfolded .jp-InputArea-editor::after { content: none; }
.celltag_injected-parameters .jp-InputArea-editor { border-left: 3px solid #1a7f37; }
.rst-params { margin: 0 12px 10px; font: 13px/1.4 system-ui, sans-serif; }
.rst-params table { border-collapse: collapse; margin-top: 4px; }
.rst-params th, .rst-params td { text-align: left; padding: 1px 10px 1px 0; vertical-align: top; }
.rst-params th { font-weight: 500; color: #59636e; }
@media print { .rst-toolbar button { display: none; } .rst-toolbar { position: static; } }
</style>
{% endblock extra_css %}
{% block body_header %}
{{ super() }}
<div class="rst-toolbar" id="rst-toolbar">
  <span class="rst-title">{{ resources.rst.title | e }}</span>
  {% if resources.rst.status %}<span class="rst-status {{ resources.rst.status | e }}">{{ resources.rst.status | e }}</span>{% endif %}
  {% for item in resources.rst.facts %}<span>{{ item | e }}</span>{% endfor %}
  <button type="button" id="rst-toggle-code" onclick="rstToggleCode()">Hide code</button>
  {% if resources.rst.index_href %}<a href="{{ resources.rst.index_href | e }}">all runs</a>{% endif %}
</div>
{% if resources.rst.params %}
<details class="rst-params" open><summary>Parameters of this run</summary>
<table>{% for k, v in resources.rst.params %}<tr><th>{{ k | e }}</th><td>{{ v | e }}</td></tr>{% endfor %}</table>
</details>
{% endif %}
{% endblock body_header %}
{% block footer_js %}
<script>
function rstToggleCode() {
  var hidden = document.body.classList.toggle("rst-hide-code");
  document.getElementById("rst-toggle-code").textContent = hidden ? "Show code" : "Hide code";
  try { localStorage.setItem("rst-hide-code", hidden ? "1" : "0"); } catch (e) {}
}
Array.prototype.forEach.call(document.querySelectorAll(".celltag_parameters"), function (cell) {
  cell.addEventListener("click", function () { cell.classList.toggle("rst-unfolded"); });
});
(function () {
  var want = /[#&?]hide-code\b/.test(location.hash + location.search);
  try { want = want || localStorage.getItem("rst-hide-code") === "1"; } catch (e) {}
  if (want) { rstToggleCode(); }
})();
</script>
{% endblock footer_js %}
"""


def render_html(notebook_path: str | os.PathLike, html_path: str | os.PathLike | None = None,
                title: str | None = None, status: str | None = None,
                items: Iterable[str] = (), index_href: str | None = None,
                params: dict | None = None, relative_to: str | os.PathLike | None = None) -> Path:
    """Render an executed notebook to one self-contained HTML file.

    Figures are embedded as base64 images; the page loads nothing from the network. A
    toolbar shows ``title``, ``status`` and ``items`` (short strings), a button hides or
    shows the code cells (also ``report.html#hide-code``), and ``index_href`` links to
    the run index. ``params`` (the run's parameters) are listed above the notebook, so they
    stay visible with the code hidden. Paths under ``relative_to`` (the project) are shown
    relative to it: a shared report names no one's home folder.
    """
    import nbformat  # nbconvert and nbformat (1.5 s) load when a report is made, not with the CLI
    from jinja2 import DictLoader
    from nbconvert import HTMLExporter
    notebook_path = Path(notebook_path)
    html_path = Path(html_path) if html_path else notebook_path.with_suffix(".html")
    nb = nbformat.read(notebook_path, as_version=4)
    nb.metadata.pop("widgets", None)  # widget state needs a CDN manager; text fallbacks stay
    exporter = HTMLExporter(template_name="lab", embed_images=True,
                            extra_loaders=[DictLoader({"rst_report.html.j2": REPORT_TEMPLATE})],
                            template_file="rst_report.html.j2")
    resources = {"rst": {"title": title or notebook_path.stem, "status": status or "",
                         "facts": list(items), "index_href": index_href,
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
