"""The engine: what a task trains (:mod:`.tasks`), the training loop (:mod:`.training`), its
schedules, precision and tuned steps, the evaluation and the gradient-masking checks."""
from ..utils.lazy import lazy_exports

# name -> the module that defines it, imported when the name is first read (PEP 562):
# importing the package stays cheap (no torch, papermill or scipy until needed)
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".checks": ("final_checks", "gradient_masking_report"),
    ".evaluation": ("ClassAccuracy", "autoattack_accuracy", "autoattack_outcomes", "autoattack_versus_pgd",
                    "count_correct", "evaluate", "final_evaluation", "robustness_report"),
    ".tasks": ("build_task", "check_run", "describe_model", "load_run_data", "run_model_config"),
    ".training": ("TrainResult", "train"),
})
