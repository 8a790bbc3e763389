"""The Flower app bundle (FAB) a bank approves: its SHA-256, exactly as Flower computes it.

``flwr run`` and ``flwr build`` package an app directory with the same deterministic
builder (fixed timestamps, sorted files), so the hash of the bundle that reaches a
bank's SuperNode is known before any run: a bank records the hashes it approves in
its policy (``approved-apps``) and its executor refuses every other bundle before
installing or importing it. The fedrisk app bundles only its package code and
``pyproject.toml`` (``fab-include`` in pyproject), so editing docs or tests does not
change what banks approved.
"""

from __future__ import annotations

import functools
import hashlib
from pathlib import Path

import fedrisk


def default_app_dir() -> Path:
    """The fedrisk project directory (the Flower app ``consortium run`` submits)."""
    return Path(fedrisk.__file__).resolve().parent.parent


def app_bundle(app_dir: Path | None = None) -> bytes:
    """The FAB bytes ``flwr run`` sends for ``app_dir`` (default: this fedrisk project)."""
    folder = Path(app_dir or default_app_dir()).resolve()
    if folder == default_app_dir():
        return _fedrisk_bundle()
    return _build(folder)


@functools.cache
def _fedrisk_bundle() -> bytes:
    # Built once per process: Flower's builder walks the whole project folder (seconds with
    # a virtualenv inside), and the code this process runs does not change under it.
    return _build(default_app_dir())


def _build(folder: Path) -> bytes:
    from flwr.cli.build import build_fab_from_disk

    return build_fab_from_disk(folder)


def app_bundle_hash(app_dir: Path | None = None) -> str:
    """SHA-256 hex digest of the app's bundle: the value a bank puts in ``approved-apps``."""
    return hashlib.sha256(app_bundle(app_dir)).hexdigest()
