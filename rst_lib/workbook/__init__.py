"""The workbook around the library: notebook parameters (:mod:`.params`), batch runs and their
reports (:mod:`.runs`, :mod:`.report`), sweeps, the run index, the helpers the notebooks call
(:mod:`.notebooks`) and the ``rst-workbook`` command (:mod:`.cli`)."""
from ..data.datasets import subset_record
from ..errors import parse_number
from ..utils.files import write_json
from ..utils.stats import accuracy_text, group_over_seeds
from .index import collect_metrics, write_index
from .live_runs import finish_run, report_run
from .notebooks import (checks_markdown, config_from, ensure_run_dir, final_table, load_any,
                        load_tickets, per_class_table, resolve_checkpoint, resolve_path_parameters,
                        resolve_tickets, search_tickets, sweep_run_dirs, ticket_label, write_summary)
from .params import PROJECT_ROOT
from .runs import run_notebook
from .sweeps import run_sweep
from .working_copy import new_working_copy

__all__ = ["collect_metrics", "write_index", "finish_run", "report_run", "checks_markdown", "config_from", "ensure_run_dir",
           "final_table", "load_any", "load_tickets", "per_class_table", "resolve_checkpoint",
           "resolve_path_parameters", "new_working_copy", "resolve_tickets", "search_tickets",
           "sweep_run_dirs", "ticket_label", "write_summary", "PROJECT_ROOT", "run_notebook",
           "run_sweep", "parse_number", "write_json", "accuracy_text", "group_over_seeds",
           "subset_record"]
