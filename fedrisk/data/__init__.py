"""Data layer: contracts (schema, validation, encoding), embedded datasets, splits.

Plain pandas and numpy: nothing here knows about federation, privacy or torch.
"""

from fedrisk.data.checks import CheckReport, check_table, check_table_file
from fedrisk.data.contract import (
    UNKNOWN_CATEGORY,
    CategoricalFeature,
    Contract,
    NumericFeature,
)
from fedrisk.data.draft import draft_contract
from fedrisk.data.embedded import (
    EMBEDDED_DATASETS,
    US_CENSUS_REGIONS,
    embedded_banks,
    load_embedded,
)
from fedrisk.data.errors import DataError, TableRefused
from fedrisk.data.splits import split_table, split_table_file, stratified_split
from fedrisk.data.tables import read_table, write_table

__all__ = [
    "EMBEDDED_DATASETS",
    "UNKNOWN_CATEGORY",
    "US_CENSUS_REGIONS",
    "CategoricalFeature",
    "CheckReport",
    "Contract",
    "DataError",
    "NumericFeature",
    "TableRefused",
    "check_table",
    "check_table_file",
    "draft_contract",
    "embedded_banks",
    "load_embedded",
    "read_table",
    "split_table",
    "split_table_file",
    "stratified_split",
    "write_table",
]
