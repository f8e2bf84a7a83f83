"""rst_lib: find and study robust subnetworks inside randomly initialized networks.

The package in rooms, each above the ones it uses: ``utils`` and ``masks`` at the bottom
(with ``config``, the one parameter schema, and ``errors``), then ``models`` and ``data``,
``attacks``, ``engine`` (training and evaluation), ``analysis`` and ``workbook`` (notebooks,
runs, sweeps, the CLI). The names below are the everyday surface.
"""
from .analysis import RandomSwitch, evaluate_r2s, transfer_matrix
from .attacks import FGSM, PGD, make_attack
from .config import ConfigError, RunConfig, load_config
from .data import DataBundle, DatasetUnavailable, fixed_subset, load_dataset, make_loader
from .engine import (TrainResult, autoattack_accuracy, autoattack_versus_pgd, evaluate,
                     final_checks, final_evaluation, gradient_masking_report, load_run_data,
                     robustness_report, train)
from .masks import frozen_masks, get_masks, mask_summary, masked_layers
from .models import (ModelConfig, TicketError, build_model, create_model, list_models,
                     load_ticket, save_ticket)
from .utils import resolve_device

__version__ = "0.3.0"
__all__ = [
    "FGSM", "PGD", "make_attack", "ConfigError", "RunConfig", "load_config", "DataBundle",
    "DatasetUnavailable", "load_dataset", "make_loader", "frozen_masks", "get_masks",
    "mask_summary", "masked_layers", "ModelConfig", "build_model", "create_model",
    "list_models", "TicketError", "load_ticket", "save_ticket", "TrainResult", "evaluate",
    "final_evaluation", "train", "transfer_matrix", "RandomSwitch", "evaluate_r2s",
    "autoattack_accuracy", "autoattack_versus_pgd", "robustness_report", "final_checks", "gradient_masking_report",
    "fixed_subset", "load_run_data", "resolve_device",
]
