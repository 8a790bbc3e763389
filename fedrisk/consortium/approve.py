"""Which app bundles a bank runs: the ``approved-apps`` of the bank's own policy.

A bank's executor runs a task only if the SHA-256 of the run's app bundle (FAB) is in the
bank's policy (:mod:`fedrisk.client.app_gate`). ``consortium init`` writes each bank's
policy approving the fedrisk app it ships; when a new version is released, each bank
reviews the code and approves its bundle here, on the bank's own host (``flwr build`` is
deterministic, so the bundle built from the reviewed code has the hash ``flwr run``
will send).
"""

from __future__ import annotations

from pathlib import Path

from fedrisk.consortium.bundle import app_bundle_hash
from fedrisk.consortium.errors import ConsortiumError
from fedrisk.privacy.policy import POLICY_FILENAME, BankPolicy


def bank_policy_path(bank_dir: Path) -> Path:
    """The bank's policy file in its folder (``node.toml``'s ``policy-path``)."""
    return Path(bank_dir) / POLICY_FILENAME


def write_bank_policy(bank_dir: Path, app_hash: str) -> Path:
    """Write a bank's default deployment policy approving ``app_hash``; return its path.

    An existing policy is the bank's: it is kept (its split seed too), with
    ``app_hash`` added to its approved apps.
    """
    path = bank_policy_path(bank_dir)
    if path.exists():
        return BankPolicy.load(path).with_approved_app(app_hash).save(path)
    return BankPolicy.deployment_default(approved_apps=(app_hash,)).save(path)


def approve_app(bank_dir: Path, app_dir: Path | None = None,
                fab_hash: str | None = None) -> str:
    """Add an app bundle to the bank's approved apps; return its SHA-256 hex digest.

    Args:
        bank_dir: the bank's folder (holding its ``bank-policy.toml``).
        app_dir: a Flower app directory the bank reviewed; its bundle is built here.
        fab_hash: or the bundle's SHA-256, when the bank built and hashed it elsewhere.

    Raises:
        ConsortiumError: not exactly one of ``app_dir`` and ``fab_hash``, or a bundle
            that cannot be built.
        PolicyError: the policy file is missing or invalid, or ``fab_hash`` is not a
            SHA-256 hex digest.

    """
    if (app_dir is None) == (fab_hash is None):
        raise ConsortiumError("give exactly one of --app-dir DIR or --fab-hash HEX")
    path = bank_policy_path(bank_dir)
    policy = BankPolicy.load(path)
    digest = fab_hash.strip().lower() if fab_hash is not None else _bundle_hash(Path(app_dir))
    policy.with_approved_app(digest).save(path)
    return digest


def _bundle_hash(app_dir: Path) -> str:
    if not (app_dir / "pyproject.toml").is_file():
        raise ConsortiumError(f"{app_dir} is not a Flower app (no pyproject.toml)")
    try:
        return app_bundle_hash(app_dir)
    except Exception as error:  # noqa: BLE001 - flwr's builder raises several kinds
        raise ConsortiumError(f"{app_dir}: cannot build the app bundle: "
                              f"{' '.join(str(error).split())}") from None
