"""Masks: frozen random weights and initial scores (:mod:`.inits`), a top-k mask as a
parametrization of ``weight`` (:mod:`.masking`), exact top-k (:mod:`.topk`) and the compact
mask encodings tickets are stored in (:mod:`.codec`)."""
from .masking import (KEEP_ALLOCATIONS, KEEP_RULES, allocate_keep_ratios, frozen_masks, get_masks,
                      getsubnet_keep_count, keep_count, mask_summary, masked_layers,
                      rbrn_keep_ratios, set_masks)

__all__ = ["KEEP_ALLOCATIONS", "KEEP_RULES", "allocate_keep_ratios", "frozen_masks", "get_masks",
           "getsubnet_keep_count", "keep_count", "mask_summary", "masked_layers",
           "rbrn_keep_ratios", "set_masks"]
