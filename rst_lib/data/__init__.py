"""Data: datasets as images in [0, 1] (:mod:`.datasets`), where their files are (:mod:`.locations`),
a checksummed uint8 cache of small image sets (:mod:`.cache`), batches (:mod:`.loaders`), and
the per-image outcomes an evaluation keeps (:mod:`.outcomes`)."""
from ..utils.lazy import lazy_exports

# name -> the module that defines it, imported when the name is first read (PEP 562):
# importing the package stays cheap (no torch, papermill or scipy until needed)
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".datasets": ("DataBundle", "EvaluationImages", "evaluation_images", "fixed_subset", "load_dataset"),
    ".outcomes": ("load_outcomes", "metric_names", "outcome_record"),
    ".locations": ("DatasetUnavailable",),
    ".loaders": ("make_loader",),
})
