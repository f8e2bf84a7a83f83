"""The engine: what a task trains (:mod:`.tasks`), the training loop (:mod:`.training`), its
schedules, precision and tuned steps, the evaluation and the gradient-masking checks."""
from .checks import final_checks, gradient_masking_report
from .evaluation import (ClassAccuracy, autoattack_accuracy, autoattack_versus_pgd,
                         count_correct, evaluate, final_evaluation, robustness_report)
from .tasks import build_task, check_run, describe_model, load_run_data, run_model_config
from .training import TrainResult, train

__all__ = ["final_checks", "gradient_masking_report", "autoattack_accuracy",
           "autoattack_versus_pgd", "ClassAccuracy", "count_correct",
           "evaluate", "final_evaluation", "robustness_report", "build_task", "check_run",
           "describe_model", "load_run_data", "run_model_config",
           "TrainResult", "train"]
