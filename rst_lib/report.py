"""Shareable reports and the small helpers the workbook notebooks share.

* :func:`render_html`: an executed notebook as ONE self-contained HTML file (nbconvert's
  ``lab`` template, figures embedded, no script or font fetched from the network, a
  "hide code" button, a header with the run's status and a link to the index).
* :func:`write_index`: ``outputs/index.html``, every run under an output root with its
  status, key metrics and a link to its report.
* :func:`collect_metrics`: every ``metrics.json`` under a folder as one row per search
  (what ``07_compare_runs`` plots).
* Notebook support: :func:`config_from` (a :class:`RunConfig` from the parameter
  variables), :func:`ensure_run_dir`, :func:`resolve_ticket` / :func:`resolve_tickets`
  (a ticket file, a run directory or a glob), :func:`search_tickets` (tickets at several
  keep ratios in ONE random network), :func:`load_any` (ticket, run directory or
  checkpoint) and :func:`write_summary` (``summary.json`` with the headline metrics the
  index shows).
"""
from __future__ import annotations

import glob
import html
import json
import os
import time
from datetime import datetime
from pathlib import Path
from typing import Iterable

# ------------------------------------------------------------------------ HTML report

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
                items: Iterable[str] = (), index_href: str | None = None) -> Path:
    """Render an executed notebook to one self-contained HTML file.

    Figures are embedded as base64 images; the page loads nothing from the network. A
    toolbar shows ``title``, ``status`` and ``items`` (short strings), a button hides or
    shows the code cells (also ``report.html#hide-code``), and ``index_href`` links to
    the run index.
    """
    import nbformat
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
                         "facts": list(items), "index_href": index_href}}
    body, _ = exporter.from_notebook_node(nb, resources=resources)
    _atomic_write(html_path, body)
    return html_path


def _atomic_write(path: Path, text: str) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


# ------------------------------------------------------------------------ run index

HEADLINE_KEYS = ("dataset", "model", "keep_ratio", "clean_acc", "pgd_acc", "autoattack_acc")


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def headline(run_dir: str | os.PathLike) -> dict:
    """Key metrics of a run: ``summary.json["headline"]``, else the best epoch of its
    ``metrics.json``, completed from its parameters (dataset, model, keep ratio)."""
    run_dir = Path(run_dir)
    out: dict = {}
    summary = _read_json(run_dir / "summary.json")
    if isinstance(summary.get("headline"), dict):
        out.update(summary["headline"])
    metrics = _read_json(run_dir / "metrics.json")
    if metrics:
        best, cfg = metrics.get("best", {}), metrics.get("config", {})
        for k in ("clean_acc", "pgd_acc", "autoattack_acc"):
            if k in best:
                out.setdefault(k, best[k])
        for k in ("dataset", "model", "keep_ratio"):
            if k in cfg:
                out.setdefault(k, cfg[k])
    params = _read_json(run_dir / "run.json").get("params", {})
    for k in ("dataset", "model", "keep_ratio"):
        if k in params:
            out.setdefault(k, params[k])
    return out


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Run directories (those holding a ``run.json``) under ``root``, sorted by path."""
    root = Path(root)
    return sorted(p.parent for p in root.rglob("run.json") if p.is_file())


def run_rows(root: str | os.PathLike) -> list[dict]:
    """One dict per run under ``root``: notebook, name, status, timings, headline, paths."""
    root = Path(root)
    rows = []
    for d in find_runs(root):
        info = _read_json(d / "run.json")
        rel = d.relative_to(root).as_posix()
        report = d / info.get("report", "report.html")
        rows.append({
            "notebook": Path(info.get("notebook", "")).stem or rel.split("/")[0],
            "run": rel, "status": info.get("status", "?"),
            "started": info.get("started", ""), "seconds": info.get("seconds"),
            "failed_cell": info.get("failed_cell"), "error": info.get("error"),
            "report": report.relative_to(root).as_posix() if report.is_file() else None,
            **{k: v for k, v in headline(d).items() if k in HEADLINE_KEYS},
        })
    return rows


def _pct(v) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""


INDEX_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 24px; color: #1f2328; }
h1 { font-size: 20px; margin: 0 0 4px; } p.meta { color: #59636e; margin: 0 0 12px; }
input { font: inherit; padding: 3px 8px; width: 24em; margin-bottom: 10px; }
table { border-collapse: collapse; } th, td { padding: 4px 10px; border-bottom: 1px solid #d0d7de;
  text-align: left; white-space: nowrap; } th { cursor: pointer; background: #f6f8fa; user-select: none; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
.finished { color: #1a7f37; } .failed, .interrupted { color: #cf222e; } .running, .queued { color: #9a6700; }
td.err { white-space: normal; max-width: 32em; color: #cf222e; font-size: 12px; }
"""

INDEX_JS = """
function sortBy(th) {
  var table = th.closest("table"), i = Array.prototype.indexOf.call(th.parentNode.children, th);
  var rows = Array.prototype.slice.call(table.tBodies[0].rows), asc = th.dataset.asc !== "1";
  rows.sort(function (a, b) {
    var x = a.cells[i].dataset.v || a.cells[i].textContent, y = b.cells[i].dataset.v || b.cells[i].textContent;
    var nx = parseFloat(x), ny = parseFloat(y);
    var c = (!isNaN(nx) && !isNaN(ny)) ? nx - ny : x.localeCompare(y);
    return asc ? c : -c;
  });
  th.dataset.asc = asc ? "1" : "0";
  rows.forEach(function (r) { table.tBodies[0].appendChild(r); });
}
function filterRows(q) {
  q = q.toLowerCase();
  Array.prototype.forEach.call(document.querySelectorAll("tbody tr"), function (r) {
    r.style.display = r.textContent.toLowerCase().indexOf(q) >= 0 ? "" : "none";
  });
}
"""


def write_index(root: str | os.PathLike = "outputs") -> Path:
    """Write ``root/index.html``: every run with its status, key metrics and report link."""
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = run_rows(root)
    e = html.escape
    head = ["notebook", "run", "status", "dataset", "model", "keep ratio", "clean", "PGD",
            "AutoAttack", "seconds", "started", "problem"]
    body = []
    for r in rows:
        link = (f'<a href="{e(r["report"])}">{e(r["run"])}</a>' if r["report"] else e(r["run"]))
        problem = ""
        if r["status"] in ("failed", "interrupted"):
            cell = f"cell {r['failed_cell']}: " if r.get("failed_cell") is not None else ""
            problem = f"{cell}{r.get('error') or ''}"
        kr = r.get("keep_ratio")
        cells = [
            f"<td>{e(r['notebook'])}</td>", f"<td>{link}</td>",
            f'<td class="{e(r["status"])}">{e(r["status"])}</td>',
            f"<td>{e(str(r.get('dataset', '')))}</td>", f"<td>{e(str(r.get('model', '')))}</td>",
            f'<td class="num">{e(f"{kr:.3g}" if isinstance(kr, (int, float)) else str(kr or ""))}</td>',
            *(f'<td class="num" data-v="{r.get(k, "")}">{_pct(r.get(k))}</td>'
              for k in ("clean_acc", "pgd_acc", "autoattack_acc")),
            f'<td class="num">{e(str(r["seconds"]) if r["seconds"] is not None else "")}</td>',
            f"<td>{e(str(r['started']))}</td>", f'<td class="err">{e(problem[:300])}</td>',
        ]
        body.append("<tr>" + "".join(cells) + "</tr>")
    counts = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    summary = ", ".join(f"{v} {k}" for k, v in sorted(counts.items())) or "no runs yet"
    page = f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>rst-workbook runs</title>
<style>{INDEX_CSS}</style></head><body>
<h1>rst-workbook runs</h1>
<p class="meta">{len(rows)} runs in {e(str(root.resolve()))}: {e(summary)}. Updated
{datetime.now().strftime("%Y-%m-%d %H:%M:%S")}. Accuracies: best epoch (or the notebook's final
table); click a column to sort.</p>
<input type="search" placeholder="filter runs" oninput="filterRows(this.value)">
<table><thead><tr>{"".join(f'<th onclick="sortBy(this)">{h}</th>' for h in head)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<script>{INDEX_JS}</script>
</body></html>
"""
    path = root / "index.html"
    _atomic_write(path, page)
    return path


# ------------------------------------------------------------------ metrics of many runs


def collect_metrics(roots: str | os.PathLike | Iterable[str | os.PathLike],
                    finished_only: bool = True) -> list[dict]:
    """One row per ``metrics.json`` found (recursively) under each of ``roots``.

    Columns: ``path`` (the metrics' folder), ``run`` (the enclosing run directory, the
    folder holding ``run.json``, else the folder itself), ``notebook``, ``task``,
    ``dataset``, ``model``, ``width``, ``keep_ratio`` (kept fraction of the masked
    weights), ``train_attack``, ``eps``, ``seed``, ``epochs``, ``clean_acc``, ``pgd_acc``,
    ``autoattack_acc`` (best epoch; None when not run), ``status``.
    """
    if isinstance(roots, (str, os.PathLike)):
        roots = [roots]
    rows, seen = [], set()
    for root in roots:
        root = Path(root)
        paths = [root / "metrics.json"] if (root / "metrics.json").is_file() else []
        paths += sorted(root.rglob("*/metrics.json")) if root.is_dir() else []
        for p in paths:
            p = p.resolve()
            if p in seen:
                continue
            seen.add(p)
            m = _read_json(p)
            if not m or (finished_only and m.get("status") != "finished"):
                continue
            cfg, best = m.get("config", {}), m.get("best", {})
            run = next((q for q in [p.parent, *p.parent.parents] if (q / "run.json").is_file()),
                       p.parent)
            notebook = Path(_read_json(run / "run.json").get("notebook", "")).stem
            keep = m.get("mask", {}).get("keep_ratio", cfg.get("keep_ratio"))
            if cfg.get("task") in ("dense", "bnn", "finetune_full"):
                keep = 1.0
            rows.append({
                "path": str(p.parent), "run": str(run), "notebook": notebook,
                "task": cfg.get("task"), "dataset": cfg.get("dataset"), "model": cfg.get("model"),
                "width": cfg.get("width"), "keep_ratio": keep, "train_attack": cfg.get("train_attack"),
                "eps": cfg.get("eps"), "seed": cfg.get("seed"), "epochs": len(m.get("history", [])),
                "clean_acc": best.get("clean_acc"), "pgd_acc": best.get("pgd_acc"),
                "autoattack_acc": best.get("autoattack_acc"), "status": m.get("status"),
            })
    return rows


# ------------------------------------------------------------------- notebook support


def config_from(namespace: dict, **overrides):
    """A validated :class:`RunConfig` from every RunConfig field defined in ``namespace``.

    Notebooks call ``config_from(globals())`` right after the parameters cell: the
    parameter variables that are RunConfig fields become the config, the rest (``run_dir``,
    ``progress``, notebook-only parameters) are ignored.
    """
    from .config import RunConfig
    names = set(RunConfig.field_names())
    params = {k: v for k, v in namespace.items() if k in names and not callable(v)
              and not type(v).__name__ == "module"}
    params.update(overrides)
    return RunConfig.from_dict(params)


def ensure_run_dir(run_dir: str | os.PathLike | None, notebook: str, name: str,
                   outputs: str | os.PathLike = "../outputs") -> Path:
    """``run_dir`` (created if needed) or, when None, a fresh ``outputs/<notebook>/<name>-<time>``."""
    from .train import new_run_dir
    if run_dir:
        path = Path(run_dir)
        path.mkdir(parents=True, exist_ok=True)
        return path
    return new_run_dir(Path(outputs) / notebook, name)


def resolve_ticket(path: str | os.PathLike) -> Path:
    """A ticket file from a ticket path or a run directory holding ``ticket.pt``."""
    from .tickets import TicketError
    p = Path(path).expanduser()
    if p.is_dir():
        if (p / "ticket.pt").is_file():
            return p / "ticket.pt"
        raise TicketError(f"{str(p)!r} is a directory without a ticket.pt (give a ticket file "
                          "or the run directory of a search)")
    if not p.is_file():
        raise TicketError(f"no ticket at {str(p)!r}")
    return p


def resolve_checkpoint(path: str | os.PathLike) -> Path:
    """A model file from a path: a run directory gives its ``ticket.pt``, else ``last.pt``."""
    p = Path(path).expanduser()
    if p.is_dir():
        for name in ("ticket.pt", "last.pt"):
            if (p / name).is_file():
                return p / name
        from .tickets import TicketError
        raise TicketError(f"{str(p)!r} holds neither ticket.pt nor last.pt")
    return p


def resolve_tickets(paths: str | os.PathLike | Iterable[str | os.PathLike] | None) -> list[Path]:
    """Ticket files from paths, run directories or glob patterns (in order, deduplicated).

    A directory without its own ``ticket.pt`` contributes every ``*/ticket.pt`` directly
    below it (e.g. a sweep folder), sorted.
    """
    if not paths:
        return []
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    out: list[Path] = []
    for item in paths:
        matches = sorted(glob.glob(str(Path(item).expanduser()))) if any(
            ch in str(item) for ch in "*?[") else [str(item)]
        if not matches:
            raise FileNotFoundError(f"no file matches {str(item)!r}")
        for m in matches:
            p = Path(m)
            if p.is_dir() and not (p / "ticket.pt").is_file():
                found = sorted(p.glob("*/ticket.pt"))
                if not found:
                    raise FileNotFoundError(f"{str(p)!r} holds no ticket.pt (nor */ticket.pt)")
                new = found
            else:
                new = [resolve_ticket(p)]
            out += [q for q in new if q.resolve() not in {o.resolve() for o in out}]
    return out


def ticket_label(path: str | os.PathLike) -> str:
    """A short label for a ticket: ``keep 0.1`` (plus the task unless it is a search)."""
    from .tickets import ticket_meta
    meta = ticket_meta(path)
    keep = meta.get("model_config", {}).get("keep_ratio")
    task = meta.get("run", {}).get("task", "search")
    label = f"keep {keep:g}" if isinstance(keep, (int, float)) else Path(path).parent.name
    return label if task == "search" else f"{label} ({task})"


def load_tickets(paths: Iterable[str | os.PathLike], device="cpu") -> dict:
    """``{label: model}`` for ticket files (labels from :func:`ticket_label`, made unique)."""
    from .tickets import load_ticket
    out: dict = {}
    for p in paths:
        label = ticket_label(p)
        base, i = label, 2
        while label in out:
            label, i = f"{base} #{i}", i + 1
        out[label] = load_ticket(p, device)
    return out


def search_tickets(cfg, keep_ratios: Iterable[float], root: str | os.PathLike,
                   progress: bool = True, data=None, resume: bool = True) -> list[Path]:
    """Search one ticket per keep ratio in ONE random network (``cfg.seed``).

    Each goes to ``root/keep-<ratio>/`` (metrics.json, ticket.pt); ``resume`` continues or
    reuses a search already there (an interrupted notebook run picks up where it stopped).
    Returns the ticket paths, in the order of ``keep_ratios``.
    """
    from .data import load_dataset
    from .train import search
    data = data or load_dataset(cfg.dataset, cfg.data_dir, cfg.download, cfg.augment)
    paths = []
    for r in keep_ratios:
        c = cfg.replace(keep_ratio=float(r), name=f"{cfg.name}-keep{float(r):g}")
        res = search(c, Path(root) / f"keep-{float(r):g}", progress=progress, data=data,
                     resume=resume)
        paths.append(res.ticket_path)
    return paths


def load_any(path: str | os.PathLike, device="cpu", data=None):
    """A model from a ticket file, a run directory or a ``last.pt`` checkpoint.

    Returns ``(model, info)`` with ``info = {"kind", "path", "config"}``; ``config`` is the
    :class:`RunConfig` dict the model was found with (from the ticket's metadata or the
    run's ``metrics.json``), or ``{}`` when unknown.
    """
    import torch
    from .config import RunConfig
    from .tickets import TicketError, load_ticket, ticket_meta
    p = resolve_checkpoint(path)
    try:
        model = load_ticket(p, device)
        return model, {"kind": "ticket", "path": str(p), "config": ticket_meta(p).get("run", {})}
    except TicketError as e:
        if not p.is_file():
            raise
        ticket_error = e
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except Exception:  # noqa: BLE001 - report the ticket error, the more useful one
        raise ticket_error from None
    metrics = _read_json(p.parent / "metrics.json")
    if not (isinstance(ck, dict) and "model" in ck and metrics.get("config")):
        raise TicketError(f"{str(p)!r} is neither a ticket nor a last.pt checkpoint with a "
                          "metrics.json next to it") from None
    from .train import build_search
    if str(metrics["config"].get("task", "")).startswith("finetune"):
        raise TicketError(f"{str(p)!r}: load the ticket.pt of a finetune run, not its last.pt")
    cfg = RunConfig.from_dict({k: v for k, v in metrics["config"].items() if k != "pretrained"},
                              strict=False)
    _, model = build_search(cfg, data, torch.device(device))
    model.load_state_dict(ck["model"])
    return model.eval(), {"kind": "checkpoint", "path": str(p), "config": metrics["config"]}


def write_summary(run_dir: str | os.PathLike, headline: dict, **extra) -> Path:
    """``run_dir/summary.json`` with ``headline`` (the metrics the run index shows)."""
    from .train import write_json
    path = Path(run_dir) / "summary.json"
    write_json(path, {"headline": headline, **extra,
                      "written": time.strftime("%Y-%m-%d %H:%M:%S")})
    return path
