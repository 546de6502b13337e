"""The meta-dataset: schema, crash-safe store, spec strings, importers of others' runs."""

from metallmix.metadataset.schema import (
    CFG_PREFIX,
    MF_PREFIX,
    SCHEMA_VERSION,
    STATUS_FAILED,
    STATUS_OK,
    STATUS_TRUNCATED,
    config_columns,
    make_row,
    meta_feature_columns,
    row_config,
    row_meta_features,
    run_key,
    validate_rows,
)
from metallmix.metadataset.store import MetaDatasetStore, load_meta_dataset

__all__ = [
    "CFG_PREFIX",
    "MF_PREFIX",
    "SCHEMA_VERSION",
    "STATUS_FAILED",
    "STATUS_OK",
    "STATUS_TRUNCATED",
    "MetaDatasetStore",
    "config_columns",
    "load_meta_dataset",
    "make_row",
    "meta_feature_columns",
    "row_config",
    "row_meta_features",
    "run_key",
    "validate_rows",
]
