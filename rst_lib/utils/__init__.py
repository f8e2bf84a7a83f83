"""Utilities every layer uses: run files written atomically, devices and seeded random
streams, and the statistics of an accuracy (Wilson intervals, mean ± std over seeds)."""
from .devices import resolve_device, seeded_rng
from .files import read_json, write_json
from .stats import accuracy_text, group_over_seeds, wilson_interval

__all__ = ["resolve_device", "seeded_rng", "read_json", "write_json", "accuracy_text",
           "group_over_seeds", "wilson_interval"]
