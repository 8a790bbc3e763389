"""Consortium deployment on Flower's deployment engine: provisioning, TLS, authenticated banks.

A real consortium runs fedrisk as separate processes on separate hosts: one
coordinator (the SuperLink, reachable on its own host only, behind a proxy that
forwards the Fleet API to banks) and one SuperNode per bank, each bank's data and
keys staying on its own host. The coordinator provisions its side
(:func:`init_coordinator`) and registers banks from their public bundles
(:func:`register_bundle`); each bank makes its own keys (:func:`bank_init`). The
whole consortium also runs as real processes on one machine
(:func:`init_consortium`, :func:`consortium_up`, :func:`consortium_run`,
:func:`consortium_down`).
"""

from fedrisk.consortium.approve import approve_app
from fedrisk.consortium.bank_side import bank_init, join_command
from fedrisk.consortium.deploy import (
    CLIENTAPP_MODES,
    consortium_down,
    consortium_up,
    register_bank,
    registered_nodes,
    restart_superlink,
    start_bank,
    stop_bank,
    unregister_bank,
)
from fedrisk.consortium.errors import ConsortiumError, RunFailedError
from fedrisk.consortium.layout import Layout
from fedrisk.consortium.provision import (
    Provisioned,
    Registration,
    Step,
    add_bank,
    demo_bank_side,
    init_consortium,
    init_coordinator,
    register_bundle,
    walkthrough,
)
from fedrisk.consortium.run import consortium_run, run_status

__all__ = [
    "CLIENTAPP_MODES",
    "ConsortiumError",
    "Layout",
    "Provisioned",
    "Registration",
    "RunFailedError",
    "Step",
    "add_bank",
    "bank_init",
    "approve_app",
    "consortium_down",
    "consortium_run",
    "consortium_up",
    "demo_bank_side",
    "init_consortium",
    "init_coordinator",
    "join_command",
    "register_bank",
    "register_bundle",
    "registered_nodes",
    "run_status",
    "restart_superlink",
    "start_bank",
    "stop_bank",
    "unregister_bank",
    "walkthrough",
]
