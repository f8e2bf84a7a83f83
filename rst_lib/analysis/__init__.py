"""Analyses of tickets: controls (random mask, natural ticket), attack transferability, the
random switch R2S, mask statistics and their figures, and the notebooks' plots and tables."""
from . import mask_stats
from .claims import CLAIMS, claims_table, collect_records, judge_claims, plot_claim, verdict
from .controls import compare_models, natural_control, random_mask_control
from .mask_plots import (mask_explorer, plot_filter_map, plot_kept_histogram, plot_kernel_patterns,
                         plot_layer_density)
from .plots import (markdown_table, plot_accuracy_vs_keep_ratio, plot_bars, plot_comparison,
                    plot_eps_curve, plot_histories, plot_history, plot_keep_ratios, plot_r2s,
                    plot_robust_vs_clean, plot_transfer_matrix, r2s_rows)
from .r2s import EOTPGD, RandomSwitch, evaluate_r2s
from .transfer import transfer_matrix

__all__ = ["mask_stats", "CLAIMS", "claims_table", "collect_records", "judge_claims", "plot_claim",
           "verdict", "compare_models", "natural_control", "random_mask_control",
           "mask_explorer", "plot_filter_map", "plot_kept_histogram", "plot_kernel_patterns",
           "plot_layer_density", "markdown_table", "plot_accuracy_vs_keep_ratio", "plot_bars",
           "plot_comparison", "plot_eps_curve", "plot_histories", "plot_history",
           "plot_keep_ratios", "plot_r2s", "plot_robust_vs_clean", "plot_transfer_matrix",
           "r2s_rows", "EOTPGD", "RandomSwitch", "evaluate_r2s", "transfer_matrix"]
