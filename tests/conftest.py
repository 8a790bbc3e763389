"""Shared fixtures: run the real `fedrisk` CLI (real Flower, real Opacus) in a subprocess."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

# RAY_DEDUP_LOGS=0: tests that read the banks' log lines (--verbose) need each bank's own
# line, which Ray otherwise folds into "[repeated 2x across cluster]".
ENV = {**os.environ, "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
       "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1", "RAY_DEDUP_LOGS": "0"}


def run_cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess:
    """Run `fedrisk ARGS` as a user would; return the finished process."""
    return subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], capture_output=True,
                          text=True, env=ENV, timeout=timeout)


def write_embedded(dataset: str, folder: Path, name: str = "pooled"
                   ) -> tuple[Path, Path, pd.DataFrame]:
    """An embedded dataset as a user's files: ``folder/<name>.csv`` and ``folder/contract.toml``.

    Returns the table's path, the contract's path and the table.
    """
    from fedrisk.data import load_embedded

    table, contract = load_embedded(dataset)
    table.to_csv(folder / f"{name}.csv", index=False)
    contract.save(folder / "contract.toml")
    return folder / f"{name}.csv", folder / "contract.toml", table


def simulate(output_dir: Path, *args: str) -> dict:
    """Run `fedrisk simulate` into output_dir and return its metrics.json."""
    result = run_cli("simulate", "--output-dir", str(output_dir), *args)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return json.loads((output_dir / "metrics.json").read_text())


def printed_summary(monkeypatch, metrics: dict, show_banks: bool = False,
                    width: int = 200) -> str:
    """What `fedrisk simulate` prints after a run (the per-bank table and lines), as text."""
    from rich.console import Console

    from fedrisk import cli

    console = Console(record=True, width=width)
    monkeypatch.setattr(cli, "console", console)
    cli._print_summary(metrics, Path("runs/x"), show_banks)
    return console.export_text()


@pytest.fixture(scope="session")
def dp_run(tmp_path_factory) -> tuple[Path, dict]:
    """One 3-round DP simulation on lending_club with secure aggregation (the default) and
    per-bank fine-tuning (not the default: the tests of personalized models read it), run
    under the usual umask 022 (new files group- and world-readable unless fedrisk says
    otherwise: test_private_files checks what it wrote)."""
    output = tmp_path_factory.mktemp("dp_run")
    previous = os.umask(0o022)
    try:
        return output, simulate(output, "--rounds", "3", "--target-epsilon", "3",
                                "--personalization", "finetune")
    finally:
        os.umask(previous)


@pytest.fixture(scope="session")
def consortium(tmp_path_factory) -> Path:
    """One consortium on loopback (SuperLink behind the nginx proxy, three banks), started
    once for the deployment tests and the outsider tests, stopped by pid at the end."""
    from deployment import BANKS, START_TIMEOUT, free_base_port, processes_left

    from fedrisk.consortium import consortium_down, consortium_up, init_consortium

    root = tmp_path_factory.mktemp("consortium") / "demo"
    init_consortium(root, BANKS, base_port=free_base_port(10))
    try:
        consortium_up(root, timeout=START_TIMEOUT)
        yield root
    finally:
        consortium_down(root)
        assert processes_left(str(root)) == []
