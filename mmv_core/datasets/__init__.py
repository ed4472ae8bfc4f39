"""Datasets: which videos there are, with their labels, splits and protocol.

Modules:
  `registry`           what a dataset is (`DatasetSpec`) and the three known
                       ones (`DATASETS`: UCF101, HMDB51, CSV), re-exported
                       here;
  `dataset_listing`    what every listing gives: classes and one
                       `ListedVideo` per video;
  `ucf101`, `hmdb51`   each official dataset's split files and archives;
  `csv_dataset`        your own dataset, listed in CSV files (dmvr's layout);
  `synthetic`,         small datasets in UCF101's and HMDB51's layouts, for
  `synthetic_hmdb51`   the demo, the tests and the benchmarks.

A new dataset is a listing module here and a `DatasetSpec` in `registry`
(docs/architecture.md).
"""

from mmv_core.datasets.registry import CSV, DATASETS, FETCH_FILE, FETCH_ZIP_MEMBER, HMDB51, UCF101
from mmv_core.datasets.registry import DatasetSpec, MissingLocationError, ProtocolDefaults
from mmv_core.datasets.registry import UnknownDatasetError, get, listing_from_ucf101

__all__ = [
    "CSV",
    "DATASETS",
    "FETCH_FILE",
    "FETCH_ZIP_MEMBER",
    "HMDB51",
    "UCF101",
    "DatasetSpec",
    "MissingLocationError",
    "ProtocolDefaults",
    "UnknownDatasetError",
    "get",
    "listing_from_ucf101",
]
