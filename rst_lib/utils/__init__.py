"""Utilities every layer uses: run files written atomically, devices and seeded random
streams, and the statistics of an accuracy (Wilson intervals, mean ± std over seeds)."""
from .lazy import lazy_exports

# name -> the module that defines it, imported when the name is first read (PEP 562):
# importing the package stays cheap (no torch, papermill or scipy until needed)
__getattr__, __dir__, __all__ = lazy_exports(__name__, {
    ".devices": ("resolve_device", "seeded_rng"),
    ".files": ("read_json", "write_json"),
    ".stats": ("accuracy_text", "group_over_seeds", "wilson_interval"),
})
