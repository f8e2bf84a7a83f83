"""Interoperability: the seeds' checkpoints in (:mod:`.seeds`), plain models out (:mod:`.export`)."""
from .export import ExportError, bake_masks, export_ticket, model_card
from .seeds import ImportRefused, import_checkpoint

__all__ = ["ExportError", "ImportRefused", "bake_masks", "export_ticket", "import_checkpoint",
           "model_card"]
