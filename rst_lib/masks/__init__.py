"""Masks: frozen random weights and initial scores (:mod:`.inits`), a top-k mask as a
parametrization of ``weight`` (:mod:`.masking`), exact top-k (:mod:`.topk`) and the compact
mask encodings tickets are stored in (:mod:`.codec`)."""
from .masking import (allocate_keep_ratios, frozen_masks, get_masks, keep_count, mask_summary,
                      masked_layers, set_masks)

__all__ = ["allocate_keep_ratios", "frozen_masks", "get_masks", "keep_count", "mask_summary",
           "masked_layers", "set_masks"]
