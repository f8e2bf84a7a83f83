"""The workbook around the library: notebook parameters (:mod:`.params`), batch runs and their
reports (:mod:`.runs`, :mod:`.report`), sweeps, the run index, the helpers the notebooks call
(:mod:`.notebooks`) and the ``rst-workbook`` command (:mod:`.cli`)."""
from ..utils.lazy import lazy_exports

# name -> the module that defines it, imported when the name is first read (PEP 562):
# importing the package stays cheap (no torch, papermill or scipy until needed)
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    "..data.datasets": ("subset_record",),
    "..errors": ("parse_number",),
    "..utils.files": ("write_json",),
    "..utils.stats": ("accuracy_text", "group_over_seeds"),
    ".index": ("collect_metrics", "write_index"),
    ".live_runs": ("finish_run", "report_run"),
    ".notebooks": ("checks_markdown", "config_from", "ensure_run_dir", "final_table", "load_any",
                   "load_tickets", "per_class_table", "resolve_checkpoint",
                   "resolve_path_parameters", "resolve_tickets", "search_tickets", "sweep_cells",
                   "sweep_run_dirs", "ticket_label", "write_summary"),
    ".params": ("PROJECT_ROOT",),
    ".runs": ("run_notebook",),
    ".sweeps": ("run_sweep",),
    ".working_copy": ("new_working_copy",),
})
