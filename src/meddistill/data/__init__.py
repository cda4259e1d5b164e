"""Data stage: the MedMNIST registry and the verified loader."""

from meddistill.data.loader import MedDataset, Split, class_indices, load_dataset, resolve_file
from meddistill.data.registry import DATASETS, DatasetInfo, UnknownDatasetError, get_info

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "MedDataset",
    "Split",
    "UnknownDatasetError",
    "class_indices",
    "get_info",
    "load_dataset",
    "resolve_file",
]
