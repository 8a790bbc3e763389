"""Files of personal data are 0600 in 0700 folders whatever the umask (rows, scores, models).

Scoring, rejects, calibrators and portfolio contributions are checked in test_risk.py
on its run directory; here: the tables and manifest `fedrisk simulate` materializes,
the banks' personalized models, bank tables written by `fedrisk data split`.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from fedrisk.data import load_embedded, split_table_file
from fedrisk.files import private_file, write_private_file


@contextmanager
def umask(mask: int) -> Iterator[None]:
    """The usual umask (group and others may read new files), for this process and children."""
    previous = os.umask(mask)
    try:
        yield
    finally:
        os.umask(previous)


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_simulate_writes_rows_manifest_and_personalized_models_owner_only(dp_run):
    output, metrics = dp_run  # simulated under umask 022
    data = output / "data"
    tables = sorted(data.glob("*.csv"))
    assert len(tables) == len(metrics["banks"]) == 5
    assert {mode(p) for p in [*tables, data / "banks.json"]} == {0o600}
    assert mode(data) == 0o700
    models = sorted((output / "banks").glob("*/personalized/*.safetensors"))
    assert len(models) == 5
    assert {mode(p) for p in models} == {0o600}
    assert {mode(p.parent) for p in models} == {0o700}
    assert {mode(p) for p in (output / "banks").glob("*/ledgers/*")} == {0o600}


def test_data_split_writes_each_bank_table_owner_only(tmp_path):
    table, contract = load_embedded("credit_data")
    pooled = tmp_path / "pooled.csv"
    table.to_csv(pooled, index=False)
    contract.save(tmp_path / "contract.toml")
    with umask(0o022):
        paths = split_table_file(pooled, n_banks=3, contract_path=tmp_path / "contract.toml",
                                 out_dir=tmp_path / "banks" / "split")
    assert {mode(p) for p in paths.values()} == {0o600}
    assert mode(tmp_path / "banks") == mode(tmp_path / "banks" / "split") == 0o700


def test_a_private_file_replaces_atomically_and_leaves_nothing_on_failure(tmp_path):
    path = tmp_path / "scores.csv"
    with umask(0o022):
        write_private_file(path, b"old\n")
        with pytest.raises(RuntimeError), private_file(path) as tmp:
            tmp.write_bytes(b"half of the new rows")
            raise RuntimeError("writer died")
    assert path.read_bytes() == b"old\n" and mode(path) == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["scores.csv"]  # no temporary file left
