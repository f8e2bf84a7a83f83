"""Data: datasets as images in [0, 1] (:mod:`.datasets`), a checksummed uint8 cache of small
image sets (:mod:`.cache`), and batches (:mod:`.loaders`)."""
from .datasets import DataBundle, DatasetUnavailable, fixed_subset, load_dataset
from .loaders import make_loader

__all__ = ["DataBundle", "DatasetUnavailable", "fixed_subset", "load_dataset", "make_loader"]
