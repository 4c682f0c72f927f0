"""The one data layer, torch-free: training, evaluation, export and the bench all read data through it.

- ``root``: where the data is (``--data-root``, then ``FER_DATA_ROOT``, then a run's saved root).
- ``splits``: the layouts and protocols, discovery, and the split manifest a run saves.
- ``images``: the one image reader (also fer-run's and the API's).
- ``decode``: a split decoded for a model, and the decode cache.
- ``fer_csv``, ``ferplus``: the Kaggle CSV files and FER+ votes; ``report``: the data report.
- ``classes``: a model's classes against a data set's (``shared_classes``); ``shifts``: everyday camera shifts.
"""

from fer_runtime.data.decode import DecodedSplit, default_cache_dir, load_split, write_skipped_log
from fer_runtime.data.images import (
    IMAGE_EXTENSIONS,
    MAX_IMAGE_PIXELS,
    UNSUPPORTED_IMAGE_EXTENSIONS,
    ImageTooLarge,
    decode_image,
    read_image,
    read_photo,
)
from fer_runtime.data.root import resolve_data_root
from fer_runtime.data.splits import PROTOCOLS, SPLITS, SplitManifest, discover, run_manifest, stratified_split
from fer_runtime.errors import DataError

__all__ = [
    "IMAGE_EXTENSIONS", "MAX_IMAGE_PIXELS", "PROTOCOLS", "SPLITS", "UNSUPPORTED_IMAGE_EXTENSIONS", "DataError",
    "DecodedSplit", "ImageTooLarge", "SplitManifest", "decode_image", "default_cache_dir", "discover", "load_split",
    "read_image", "read_photo", "resolve_data_root", "run_manifest", "stratified_split", "write_skipped_log",
]
