"""Interoperability: the seeds' checkpoints in (:mod:`.seeds`), plain models out (:mod:`.export`)."""
from .export import ExportError, bake_masks, export_ticket, model_card

__all__ = ["ExportError", "bake_masks", "export_ticket", "model_card"]
