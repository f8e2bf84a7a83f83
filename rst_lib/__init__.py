"""rst_lib: find and study robust subnetworks inside randomly initialized networks."""
from . import zoo  # noqa: F401  - registers the larger architectures in the model registry
from .attacks import FGSM, PGD, make_attack
from .config import ConfigError, RunConfig, load_config
from .data import DataBundle, DatasetUnavailable, load_dataset
from .loaders import make_loader
from .evaluation import autoattack_accuracy, evaluate, final_evaluation, robustness_report
from .masking import frozen_masks, get_masks, mask_summary, masked_layers
from .models import ModelConfig, build_model, create_model, list_models
from .r2s import RandomSwitch, evaluate_r2s
from .tickets import TicketError, load_ticket, save_ticket
from .training import TrainResult, train
from .transfer import transfer_matrix

__version__ = "0.2.0"
__all__ = [
    "FGSM", "PGD", "make_attack", "ConfigError", "RunConfig", "load_config", "DataBundle",
    "DatasetUnavailable", "load_dataset", "make_loader", "frozen_masks", "get_masks",
    "mask_summary", "masked_layers", "ModelConfig", "build_model", "create_model",
    "list_models", "TicketError", "load_ticket", "save_ticket", "TrainResult", "evaluate",
    "final_evaluation", "train", "transfer_matrix", "RandomSwitch", "evaluate_r2s",
    "autoattack_accuracy", "robustness_report",
]
