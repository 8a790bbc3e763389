"""Consortium deployment on Flower's deployment engine: provisioning, TLS, authenticated banks.

A real consortium runs fedrisk as separate processes on separate hosts: one
coordinator (the SuperLink and the ServerApp) and one SuperNode per bank, each
bank's data and keys staying on its own host. This package provisions the keys
and folders (:func:`init_consortium`), prints each party's command, and runs the
whole consortium as real processes on one machine (:func:`consortium_up`,
:func:`consortium_run`, :func:`consortium_down`).
"""

from fedrisk.consortium.approve import approve_app
from fedrisk.consortium.deploy import (
    CLIENTAPP_MODES,
    consortium_down,
    consortium_up,
    register_bank,
    registered_nodes,
    start_bank,
    stop_bank,
    unregister_bank,
)
from fedrisk.consortium.errors import ConsortiumError, RunFailedError
from fedrisk.consortium.layout import Layout
from fedrisk.consortium.provision import Provisioned, add_bank, init_consortium, party_commands
from fedrisk.consortium.run import consortium_run, run_status

__all__ = [
    "CLIENTAPP_MODES",
    "ConsortiumError",
    "Layout",
    "Provisioned",
    "RunFailedError",
    "add_bank",
    "approve_app",
    "consortium_down",
    "consortium_run",
    "consortium_up",
    "init_consortium",
    "party_commands",
    "register_bank",
    "registered_nodes",
    "run_status",
    "start_bank",
    "stop_bank",
    "unregister_bank",
]
