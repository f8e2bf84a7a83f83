"""rst_lib: find and study robust subnetworks inside randomly initialized networks."""
from .attacks import FGSM, PGD, make_attack
from .config import ConfigError, RunConfig, load_config
from .data import DataBundle, DatasetUnavailable, load_dataset, make_loader
from .masking import frozen_masks, get_masks, mask_summary, masked_layers
from .models import ModelConfig, build_model, create_model, list_models
from .tickets import TicketError, load_ticket, save_ticket
from .train import SearchResult, evaluate, search
from .transfer import transfer_matrix
from .r2s import RandomSwitch, evaluate_r2s
from .evaluation import autoattack_accuracy, robustness_report

__version__ = "0.1.0"
__all__ = [
    "FGSM", "PGD", "make_attack", "ConfigError", "RunConfig", "load_config", "DataBundle",
    "DatasetUnavailable", "load_dataset", "make_loader", "frozen_masks", "get_masks",
    "mask_summary", "masked_layers", "ModelConfig", "build_model", "create_model",
    "list_models", "TicketError", "load_ticket", "save_ticket", "SearchResult", "evaluate",
    "search", "transfer_matrix", "RandomSwitch", "evaluate_r2s", "autoattack_accuracy",
    "robustness_report",
]
