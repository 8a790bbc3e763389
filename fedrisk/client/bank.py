"""A bank's view of itself: its own rows, its contract, its state directory and ledger.

Where a bank's data comes from:
- deployment: the SuperNode's ``--node-config`` names ``bank-id``, ``data-path`` and
  ``contract-path`` (and optionally ``state-dir`` and ``signing-key``);
- simulation: ``fedrisk simulate`` writes one file per bank plus ``banks.json`` into the
  run config's ``data-dir``, and node ``partition-id`` picks the bank's entry; with no
  ``data-dir`` (plain ``flwr run .``), the partition of the embedded ``dataset``.
Either way a bank reads only its own file.

Where a bank's privacy policy comes from (:mod:`fedrisk.privacy.policy`): the node
config's ``policy-path`` (deployment: the bank's own file), the manifest entry's
``policy`` (simulation: written per bank by ``fedrisk simulate``), or, for the embedded
demo without either, the simulation default. Never from the run config: the
coordinator proposes runs, it does not set a bank's policy.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np
from flwr.app import Context

from fedrisk.config import RunConfig
from fedrisk.data import (
    Contract,
    DataError,
    TableRefused,
    check_table,
    embedded_banks,
    load_embedded,
    read_table,
    stratified_split,
)
from fedrisk.privacy.ledger import EgressLedger
from fedrisk.privacy.policy import BankPolicy

MANIFEST = "banks.json"


@dataclass
class Bank:
    """One bank's private training context; nothing here ever leaves the bank.

    Attributes:
        bank_id: public identifier of the bank in the consortium.
        contract: the agreed data contract (public).
        train_features / train_labels: encoded train split (private).
        test_features / test_labels: encoded held-out split, never trained on (private).
        fingerprint: SHA-256 of the bank's table; keys its lifetime privacy budget.
        train_grades / test_grades: grade indices when the contract names a grade column.
        state_dir: the bank's own directory for its ledger and keys.
        ledger: the bank's signed egress and privacy ledger for this data.
        policy: the bank's own privacy policy (decides what it will do, whatever a run asks).

    """

    bank_id: str
    contract: Contract
    train_features: np.ndarray
    train_labels: np.ndarray
    test_features: np.ndarray
    test_labels: np.ndarray
    fingerprint: str
    state_dir: Path
    ledger: EgressLedger
    policy: BankPolicy
    train_grades: np.ndarray | None = None
    test_grades: np.ndarray | None = None

    @property
    def n_train(self) -> int:
        """Number of training records (the DP sampling population)."""
        return len(self.train_labels)


@dataclass(frozen=True)
class BankSource:
    """Where one bank's data, contract and state live.

    ``embedded`` names an embedded dataset whose partition ``bank_id`` is this bank's
    data (``flwr run .`` without a ``data-dir``); otherwise the bank reads ``data_path``.
    """

    bank_id: str
    data_path: Path | None
    contract_path: Path | None
    state_dir: Path
    signing_key: Path | None = None
    embedded: str | None = None
    policy_path: Path | None = None

    def policy(self, config: RunConfig) -> BankPolicy:
        """The bank's policy file, or the simulation default for the embedded demo."""
        if self.policy_path is not None:
            return BankPolicy.load(self.policy_path)
        return BankPolicy.simulation_default(config.seed, config.test_fraction)


def resolve_source(node_config: dict, config: RunConfig) -> BankSource:
    """Find this node's bank from its node config (deployment) or partition (simulation)."""
    if "data-path" in node_config:
        bank_id = str(node_config.get("bank-id", Path(str(node_config["data-path"])).stem))
        state = node_config.get("state-dir") or config.state_root / bank_id
        key = node_config.get("signing-key")
        policy = node_config.get("policy-path")
        return BankSource(bank_id, Path(str(node_config["data-path"])),
                          Path(str(node_config["contract-path"])), Path(str(state)),
                          Path(str(key)) if key else None,
                          policy_path=Path(str(policy)) if policy else None)
    if not config.data_dir:
        banks = list(embedded_banks(config.dataset, seed=config.seed))
        bank_id = banks[int(node_config["partition-id"]) % len(banks)]
        return BankSource(bank_id, None, None, config.state_root / bank_id,
                          embedded=config.dataset)
    manifest_path = Path(config.data_dir) / MANIFEST
    manifest = json.loads(manifest_path.read_text())
    entry = manifest["banks"][int(node_config["partition-id"])]
    policy = entry.get("policy")
    return BankSource(entry["id"], manifest_path.parent / entry["file"],
                      manifest_path.parent / manifest["contract"],
                      config.state_root / entry["id"],
                      policy_path=manifest_path.parent / policy if policy else None)


def load_bank(source: BankSource, config: RunConfig) -> Bank:
    """Read, check, split and encode the bank's own table; open its ledger.

    Raises :class:`TableRefused` (one line, with a value-free public text) when the
    table or contract cannot be read or the table fails the contract, so a bank with
    bad data refuses to join before anything is sent.
    """
    if source.embedded:
        table = embedded_banks(source.embedded, seed=config.seed)[source.bank_id]
        contract = load_embedded(source.embedded)[1]
    else:
        try:
            contract = Contract.load(source.contract_path)
            table = read_table(source.data_path)
        except DataError as error:
            raise TableRefused(f"bank '{source.bank_id}' refuses to join: {error}",
                               "the table or its contract cannot be read") from None
    report = check_table(table, contract, source=str(source.data_path or source.bank_id))
    if not report.ok:
        raise TableRefused(f"bank '{source.bank_id}' refuses to join: {report.errors[0]}",
                           report.public_errors[0])
    policy = source.policy(config)
    # The held-out split is the bank's (its policy's fraction and seed), never the run's.
    train, test = stratified_split(table, contract, policy.test_fraction, policy.split_seed)
    fingerprint = contract.fingerprint(table)
    ledger = EgressLedger.for_bank(source.state_dir, source.bank_id, fingerprint,
                                   source.signing_key)
    return Bank(
        bank_id=source.bank_id, contract=contract,
        train_features=contract.encode(train), train_labels=contract.labels(train),
        test_features=contract.encode(test), test_labels=contract.labels(test),
        fingerprint=fingerprint, state_dir=source.state_dir, ledger=ledger, policy=policy,
        train_grades=contract.grades(train) if contract.grade else None,
        test_grades=contract.grades(test) if contract.grade else None,
    )


def bank_for_context(context: Context) -> Bank:
    """The bank of this node and run, loaded once per process."""
    config = RunConfig.from_run_config(dict(context.run_config))
    return _cached_bank(resolve_source(dict(context.node_config), config), config)


@cache
def _cached_bank(source: BankSource, config: RunConfig) -> Bank:
    # A simulation worker serves many banks, every round: each bank's table is read,
    # checked and encoded (and its ledger verified) once per process and run, however
    # many banks the worker serves (a bounded cache would reload them every message).
    return load_bank(source, config)
