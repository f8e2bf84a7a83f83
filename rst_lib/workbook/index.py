"""Many runs at once: the run index (``outputs/index.html``: every run with its status,
headline numbers and report) and :func:`collect_metrics` (every ``metrics.json`` under a
folder as one row, what ``07_compare_runs`` plots)."""
from __future__ import annotations

import html
import os
import sys
from datetime import datetime
from pathlib import Path
from typing import Iterable

from ..utils.files import PROGRESS_FILE, read_json, write_text

HEADLINE_KEYS = ("dataset", "model", "keep_ratio", "clean_acc", "pgd_acc", "autoattack_acc",
                 "robust_acc", "examples")


def headline(run_dir: str | os.PathLike) -> dict:
    """Key metrics of a run: ``summary.json["headline"]`` (the notebook's final table),
    else the final test numbers of its ``metrics.json``, completed from its parameters."""
    run_dir = Path(run_dir)
    out: dict = {}
    summary = read_json(run_dir / "summary.json")
    if isinstance(summary.get("headline"), dict):
        out.update(summary["headline"])
    metrics = read_json(run_dir / "metrics.json")
    if metrics:
        numbers = metrics.get("final") or {}
        for k in ("clean_acc", "pgd_acc", "autoattack_acc", "robust_acc", "robust_attack",
                  "examples", "robust_examples"):
            if k in numbers:
                out.setdefault(k, numbers[k])
        cfg = metrics.get("config", {})
        out.setdefault("keep_ratio", metrics.get("mask", {}).get("keep_ratio"))  # the ticket's
        for k in ("dataset", "model"):
            if k in cfg:
                out.setdefault(k, cfg[k])
    params = read_json(run_dir / "run.json").get("params", {})
    for k in ("dataset", "model", "keep_ratio"):
        if k in params:
            out.setdefault(k, params[k])
    return out


def find_runs(root: str | os.PathLike) -> list[Path]:
    """Run folders under ``root``, sorted by path: every folder holding a ``run.json`` (a
    notebook run), and every folder holding a ``metrics.json`` outside those (a training
    run made from Python, ``train(cfg, run_dir)``)."""
    root = Path(root)
    notebook_runs = {p.parent for p in root.rglob("run.json") if p.is_file()}
    python_runs = {p.parent for p in root.rglob("metrics.json") if p.is_file()
                   and not any(q in notebook_runs for q in [p.parent, *p.parent.parents])}
    return sorted(notebook_runs | python_runs)


def run_progress(run_dir: str | os.PathLike) -> str:
    """How far a run's training is (``epoch 3 of 10``, ``final evaluation``), from the newest
    ``progress.json`` in its folder or one level below (a notebook that trains several
    models, each in its own subfolder); "" when there is none."""
    d = Path(run_dir)
    files = [p for p in (d / PROGRESS_FILE, *d.glob(f"*/{PROGRESS_FILE}")) if p.is_file()]
    if not files:
        return ""
    newest = max(files, key=lambda p: p.stat().st_mtime)
    p = read_json(newest)
    where = "" if newest.parent == d else f"{newest.parent.name}: "
    if p.get("phase") == "final evaluation":
        return f"{where}final evaluation"
    if isinstance(p.get("epoch"), int) and isinstance(p.get("epochs"), int):
        return f"{where}epoch {p['epoch']} of {p['epochs']}"
    return ""


def run_rows(root: str | os.PathLike) -> list[dict]:
    """One dict per run under ``root``: notebook, name, status, timings, headline, paths."""
    root = Path(root)
    rows = []
    for d in find_runs(root):
        info = read_json(d / "run.json")
        if not info:  # made from Python: its metrics.json is the record
            metrics = read_json(d / "metrics.json")
            info = {"notebook": "(python)", "status": metrics.get("status", "?"),
                    "seconds": round(metrics["search_seconds"]) if metrics.get("search_seconds") else None,
                    "started": datetime.fromtimestamp((d / "metrics.json").stat().st_mtime)
                    .strftime("%Y-%m-%d %H:%M:%S")}
        rel = d.relative_to(root).as_posix()
        report = d / info.get("report", "report.html")
        rows.append({
            "notebook": Path(info.get("notebook", "")).stem or rel.split("/")[0],
            "run": rel, "status": info.get("status", "?"),
            "progress": run_progress(d) if info.get("status") == "running" else "",
            "started": info.get("started", ""), "seconds": info.get("seconds"),
            "failed_cell": info.get("failed_cell"), "error": info.get("error"),
            "report": report.relative_to(root).as_posix() if report.is_file() else None,
            **{k: v for k, v in headline(d).items() if k in HEADLINE_KEYS},
        })
    return rows


def _pct(v) -> str:
    return f"{v:.1%}" if isinstance(v, (int, float)) and not isinstance(v, bool) else ""


def _took(seconds) -> str:
    if not isinstance(seconds, (int, float)):
        return ""
    if seconds < 120:
        return f"{seconds:.0f} s"
    minutes = round(seconds / 60)
    return f"{minutes} min" if minutes < 120 else f"{minutes // 60} h {minutes % 60} min"


INDEX_CSS = """
body { font: 14px/1.45 system-ui, sans-serif; margin: 16px; color: #1f2328; }
h1 { font-size: 20px; margin: 0 0 4px; } p.meta { color: #59636e; margin: 0 0 12px; max-width: 80em; }
input { font: inherit; padding: 3px 8px; width: 24em; max-width: 100%; margin-bottom: 10px; }
table { border-collapse: collapse; max-width: 100%; }
th, td { padding: 4px 6px; border-bottom: 1px solid #d0d7de; text-align: left; vertical-align: top; }
th { cursor: pointer; background: #f6f8fa; user-select: none; }
td.run { overflow-wrap: anywhere; min-width: 10em; max-width: 20em; }
td.num, td.when span { white-space: nowrap; } td.num { text-align: right; font-variant-numeric: tabular-nums; }
.finished { color: #1a7f37; } .failed, .interrupted, .dead { color: #cf222e; } .running, .queued { color: #9a6700; }
td.err { min-width: 12em; max-width: 24em; overflow-wrap: anywhere; color: #cf222e; font-size: 12px; }
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
            "AutoAttack", "test examples", "took", "started", "problem"]
    body = []
    for r in rows:
        link = (f'<a href="{e(r["report"])}">{e(r["run"])}</a>' if r["report"] else e(r["run"]))
        problem = ""
        if r["status"] in ("failed", "interrupted"):
            cell = f"cell {r['failed_cell']}: " if r.get("failed_cell") is not None else ""
            problem = f"{cell}{r.get('error') or ''}"
        kr = r.get("keep_ratio")
        cells = [
            f"<td>{e(r['notebook'])}</td>", f'<td class="run">{link}</td>',
            f'<td class="{e(r["status"])}">{e(r["status"])}'
            + (f'<br><small>{e(r["progress"])}</small>' if r.get("progress") else "") + "</td>",
            f"<td>{e(str(r.get('dataset', '')))}</td>", f"<td>{e(str(r.get('model', '')))}</td>",
            f'<td class="num">{e(f"{kr:.3g}" if isinstance(kr, (int, float)) else str(kr or ""))}</td>',
            *(f'<td class="num" data-v="{r.get(k, "")}">{_pct(r.get(k))}</td>'
              for k in ("clean_acc", "pgd_acc", "autoattack_acc")),
            f'<td class="num">{e(str(r.get("examples") or ""))}</td>',
            f'<td class="num" data-v="{r["seconds"] if r["seconds"] is not None else ""}">'
            f'{e(_took(r["seconds"]))}</td>',
            f'<td class="when" data-v="{e(str(r["started"]))}">'
            + " ".join(f"<span>{e(part)}</span>" for part in str(r["started"]).split(" ")) + "</td>", f'<td class="err">{e(problem[:300])}</td>',
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
{datetime.now().strftime("%Y-%m-%d %H:%M:%S")}. Accuracies: the final table of each run, on its
test examples; the robust accuracy to quote is AutoAttack's. Click a column to sort.</p>
<input type="search" placeholder="filter runs" oninput="filterRows(this.value)">
<table><thead><tr>{"".join(f'<th onclick="sortBy(this)">{h}</th>' for h in head)}</tr></thead>
<tbody>
{chr(10).join(body)}
</tbody></table>
<script>{INDEX_JS}</script>
</body></html>
"""
    path = root / "index.html"
    write_text(path, page)
    return path


# ------------------------------------------------------------------ metrics of many runs


def collect_metrics(roots: str | os.PathLike | Iterable[str | os.PathLike],
                    finished_only: bool = True) -> list[dict]:
    """One row per ``metrics.json`` found (recursively) under each of ``roots``.

    Columns: ``path`` (the metrics' folder), ``run`` (the enclosing run directory, the
    folder holding ``run.json``, else the folder itself), ``notebook``, ``task``,
    ``dataset``, ``model``, ``width``, ``keep_ratio`` (kept fraction of the masked
    weights), ``train_attack``, ``eps``, ``seed``, ``epochs``; the final numbers on the
    test split ``clean_acc``, ``pgd_acc``, ``autoattack_acc`` (None when not run),
    ``robust_acc`` (AutoAttack if run, else PGD), ``examples``, ``split`` ("test"); the
    best epoch's numbers on the selection split ``select_split``, ``select_clean_acc``,
    ``select_pgd_acc``; ``status``. Runs of older versions without final numbers report
    their best epoch with ``split`` saying where it came from.
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
            m = read_json(p)
            if not m or (finished_only and m.get("status") not in ("finished", "collapsed")):
                continue
            cfg, best, final = m.get("config", {}), m.get("best", {}), m.get("final") or {}
            run = next((q for q in [p.parent, *p.parent.parents] if (q / "run.json").is_file()),
                       p.parent)
            notebook = Path(read_json(run / "run.json").get("notebook", "")).stem
            keep = m.get("mask", {}).get("keep_ratio", cfg.get("keep_ratio"))
            if cfg.get("task") in ("dense", "bnn", "finetune_full"):
                keep = 1.0
            numbers = final or best  # older runs: the best epoch is all there is
            select_split = m.get("selection_split", best.get("split", "test"))
            rows.append({
                "path": str(p.parent), "run": str(run), "notebook": notebook,
                "task": cfg.get("task"), "dataset": cfg.get("dataset"), "model": cfg.get("model"),
                "width": cfg.get("width"), "keep_ratio": keep, "train_attack": cfg.get("train_attack"),
                "eps": cfg.get("eps"), "seed": cfg.get("seed"), "epochs": len(m.get("history", [])),
                "clean_acc": numbers.get("clean_acc"), "pgd_acc": numbers.get("pgd_acc"),
                "autoattack_acc": numbers.get("autoattack_acc"),
                "robust_acc": numbers.get("robust_acc", numbers.get("autoattack_acc", numbers.get("pgd_acc"))),
                "examples": numbers.get("examples"),
                "split": "test" if final else select_split,
                "select_split": select_split, "select_clean_acc": best.get("clean_acc"),
                "select_pgd_acc": best.get("pgd_acc"), "status": m.get("status"),
            })
    return rows


def refresh_index(output_root: str | os.PathLike) -> None:
    """Rewrite ``output_root/index.html`` if it can be written; a run never fails for it."""
    try:
        write_index(output_root)
    except OSError as e:  # the index is a convenience; never fail a run for it
        print(f"rst-workbook: could not write {output_root}/index.html: {e}", file=sys.stderr)
