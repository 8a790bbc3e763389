"""Run fedrisk's ServerApp and ClientApp on Flower's simulation engine (Ray), in process.

``flwr run . local`` runs the same apps through a detached local SuperLink; it
leaves that SuperLink and a SuperExec running after the run and exits 0 even
when the run failed. ``fedrisk simulate`` instead calls the simulation runtime
that ``flwr-simulation`` itself calls, with the same fused run config, so the
apps and their configuration are identical while failures surface here and
nothing is left running. The run config is written as a Flower app
``pyproject.toml`` in ``<output-dir>/app``: clients read it exactly as they would
read the project's, and it documents the run.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

import tomli_w
from flwr.app import Context, RecordDict
from flwr.clientapp import ClientApp
from flwr.common.constant import RUN_ID_NUM_BYTES, SUPERLINK_NODE_ID, TASK_ID_NUM_BYTES
from flwr.server.superlink.linkstate.utils import generate_rand_int_from_bytes
from flwr.simulation.run_simulation import _run_simulation
from flwr.supercore.constant import NOOP_FEDERATION_ID
from flwr.supercore.run import Run
from flwr.supercore.task_identity import TaskIdentity
from flwr.supercore.telemetry import EventType

from fedrisk.client.client_app import app as client_app
from fedrisk.server.server_app import app as server_app

APP_COMPONENTS = {
    "serverapp": "fedrisk.server.server_app:app",
    "clientapp": "fedrisk.client.client_app:app",
}


def write_app_config(app_dir: Path, run_config: dict) -> Path:
    """Write a Flower app ``pyproject.toml`` holding exactly this run's config."""
    app_dir.mkdir(parents=True, exist_ok=True)
    document = {
        "project": {"name": "fedrisk-run", "version": "0.1.0"},
        "tool": {"flwr": {"app": {"publisher": "fedrisk", "components": APP_COMPONENTS,
                                  "config": run_config}}},
    }
    path = app_dir / "pyproject.toml"
    path.write_bytes(tomli_w.dumps(document).encode())
    return path


def run_flower_simulation(run_config: dict, num_banks: int, app_dir: Path,
                          cpus_per_bank: float = 1.0, verbose: bool = False,
                          bank_app: ClientApp | None = None) -> int:
    """Simulate ``num_banks`` SuperNodes and the ServerApp; return the run id.

    ``bank_app``: the ClientApp every simulated bank runs (default: fedrisk's own). Only
    studies pass another (an adversarial bank, ``benchmarks/poisoning_bank.py``); no CLI
    flag reaches it.

    Each bank runs in a Ray actor with ``cpus_per_bank`` CPUs, so on a 2-core machine
    two banks train at a time. Raises if the ServerApp fails.
    """
    write_app_config(app_dir, run_config)
    # Keep Ray's current GPU-visibility behaviour without its FutureWarning (CPU-only banks).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run = _new_run()
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config))
    backend_config = {
        "client_resources": {"num_cpus": cpus_per_bank, "num_gpus": 0.0},
        "init_args": {"logging_level": "WARNING" if verbose else "ERROR",
                      "log_to_driver": verbose, "include_dashboard": False},
    }
    logging.getLogger("flwr").setLevel(logging.INFO)
    _run_simulation(
        num_supernodes=num_banks, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=bank_app or client_app, server_app=server_app, backend_name="ray",
        backend_config=backend_config, app_dir=str(app_dir), run=run,
        server_app_context=context, verbose_logging=verbose, is_app=True,
    )
    return run.run_id


def _new_run() -> Run:
    run = Run.create_empty(generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    return run
