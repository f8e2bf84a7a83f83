"""Analyses of tickets: controls (random mask, natural ticket), attack transferability, the
random switch R2S, mask statistics and their figures, and the notebooks' plots and tables."""
from ..utils.lazy import lazy_exports

# name -> the module that defines it, imported when the name is first read (PEP 562):
# importing the package stays cheap (no torch, papermill or scipy until needed)
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".mask_stats": ("mask_stats",),
    ".method_claims": ("CLAIM_FAMILIES", "claims_for_sweep", "method_claims"),
    ".claims": ("CLAIMS", "claims_table", "collect_records", "family_text", "judge_claims", "plot_claim",
                "verdict", "verdict_counts", "verdict_table", "why_lines"),
    ".verdicts": ("NOT_RUN", "VERDICTS"),
    ".controls": ("compare_models", "natural_control", "random_mask_control"),
    ".mask_plots": ("mask_explorer", "plot_filter_map", "plot_kept_histogram",
                    "plot_kernel_patterns", "plot_layer_density"),
    ".plots": ("markdown_notes", "markdown_table", "plot_accuracy_vs_keep_ratio", "plot_bars",
               "plot_comparison", "plot_eps_curve", "plot_histories", "plot_history",
               "plot_keep_ratios", "plot_r2s", "plot_robust_vs_clean", "plot_transfer_matrix",
               "r2s_rows"),
    ".r2s": ("EOTPGD", "RandomSwitch", "evaluate_r2s"),
    ".transfer": ("transfer_matrix", "transfer_ratio_record"),
})
