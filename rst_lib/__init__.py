"""rst_lib: find and study robust subnetworks inside randomly initialized networks.

The package in rooms, each above the ones it uses: ``utils`` and ``masks`` at the bottom
(with ``config``, the one parameter schema, and ``errors``), then ``models`` and ``data``,
``attacks``, ``engine`` (training and evaluation), ``analysis`` and ``workbook`` (notebooks,
runs, sweeps, the CLI). The names below are the everyday surface.
"""
from .utils.lazy import lazy_exports

__version__ = "0.3.0"

# name -> the module that defines it, imported when the name is first read (PEP 562):
# importing the package stays cheap (no torch, papermill or scipy until needed)
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".analysis": ("RandomSwitch", "evaluate_r2s", "transfer_matrix"),
    ".attacks": ("FGSM", "PGD", "make_attack"),
    ".config": ("ConfigError", "RunConfig", "load_config"),
    ".data": ("DataBundle", "DatasetUnavailable", "evaluation_images", "fixed_subset", "load_dataset",
               "load_outcomes", "make_loader"),
    ".engine": ("TrainResult", "autoattack_accuracy", "autoattack_outcomes", "autoattack_versus_pgd", "evaluate", "final_checks", "final_evaluation",
                "gradient_masking_report", "load_run_data", "robustness_report", "train"),
    ".masks": ("frozen_masks", "get_masks", "mask_summary", "masked_layers"),
    ".models": ("ModelConfig", "TicketError", "build_model", "create_model", "list_models",
                "load_ticket", "save_ticket"),
    ".utils": ("resolve_device",),
})
