"""Interoperability: the seeds' checkpoints in (:mod:`.seeds`), plain models out (:mod:`.export`)."""
from ..utils.lazy import lazy_exports

# name -> the module that defines it, imported when the name is first read (PEP 562):
# importing the package stays cheap (no torch, papermill or scipy until needed)
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".export": ("ExportError", "bake_masks", "export_ticket", "model_card"),
    ".seeds": ("ImportRefused", "import_checkpoint"),
})
