"""Data stage: the MedMNIST registry and the verified loader; own images (folder, CSV, DICOM)
through the source registry (``create_dataset``)."""

from meddistill.data.loader import MedDataset, Split, class_indices, load_dataset, resolve_file
from meddistill.data.medmnist import DATASETS, DatasetInfo, UnknownDatasetError, get_info
from meddistill.data.sources import create_dataset

__all__ = [
    "DATASETS",
    "DatasetInfo",
    "MedDataset",
    "Split",
    "UnknownDatasetError",
    "class_indices",
    "create_dataset",
    "get_info",
    "load_dataset",
    "resolve_file",
]
