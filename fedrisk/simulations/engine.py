"""Run fedrisk's ServerApp and ClientApp on Flower's simulation engine (Ray), in process.

``flwr run . local`` runs the same apps through a detached local SuperLink; it
leaves that SuperLink and a SuperExec running after the run and exits 0 even
when the run failed. ``fedrisk simulate`` instead calls the simulation runtime
that ``flwr-simulation`` itself calls, with the same fused run config, so the
apps and their configuration are identical while failures surface here and
nothing is left running. The run config is written as a Flower app
``pyproject.toml`` in ``<output-dir>/app``: clients read it exactly as they would
read the project's, and it documents the run.

With a Ray address the same run uses an existing Ray cluster instead of a local
Ray: the ServerApp stays in this process, the banks' ClientApps run in actors on
the cluster's nodes (see the README, "Simulate on a Ray cluster").
"""

from __future__ import annotations

import logging
import os
import shutil
import time
from pathlib import Path

import grpc
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
from ray._common.utils import get_default_ray_temp_dir
from ray.core.generated.gcs_service_pb2 import GetClusterIdRequest
from ray.core.generated.gcs_service_pb2_grpc import NodeInfoGcsServiceStub

from fedrisk.client.client_app import app as client_app
from fedrisk.errors import UserError
from fedrisk.server.server_app import app as server_app

APP_COMPONENTS = {
    "serverapp": "fedrisk.server.server_app:app",
    "clientapp": "fedrisk.client.client_app:app",
}
LOCAL_RAY = "local"  # ray.init's "start a new local Ray", whatever RAY_ADDRESS says
RAY_PROBE_TIMEOUT_S = 5.0


class RayClusterError(UserError):
    """``--ray-address`` does not lead to a Ray cluster; the message says what answered."""


def check_ray_cluster(address: str) -> None:
    """Raise :class:`RayClusterError` unless a Ray cluster's GCS answers at ``HOST:PORT``.

    Asks the GCS for its cluster id with a deadline: a wrong host, a closed port or a
    server that is not Ray fails within seconds, where ``ray.init`` would retry for
    minutes.
    """
    host, _, port = address.rpartition(":")
    if not host or "://" in address or not port.isdigit() or not 0 < int(port) < 65536:
        raise RayClusterError(f"--ray-address {address!r}: expected HOST:PORT of the head "
                              "node's GCS (what `ray start --head` prints, e.g. 10.0.0.5:6379)")
    with grpc.insecure_channel(address) as channel:
        try:
            NodeInfoGcsServiceStub(channel).GetClusterId(GetClusterIdRequest(),
                                                          timeout=RAY_PROBE_TIMEOUT_S)
        except grpc.RpcError as error:
            raise RayClusterError(f"--ray-address {address}: no Ray cluster answers there "
                                  f"({_probe_failure(error)})") from None


def _probe_failure(error: grpc.RpcError) -> str:
    """The reason the probe failed, on one line (the innermost error gRPC reports)."""
    if error.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return f"no answer within {RAY_PROBE_TIMEOUT_S:g} s"
    details = (error.details() or "").splitlines()
    cause = details[0].rsplit("last error: ", 1)[-1] if details else ""
    return cause.replace("[", "").replace("]", "").strip() or error.code().name


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
                          ray_address: str | None = None,
                          bank_app: ClientApp | None = None) -> int:
    """Simulate ``num_banks`` SuperNodes and the ServerApp; return the run id.

    ``bank_app``: the ClientApp every simulated bank runs (default: fedrisk's own). Only
    studies pass another (an adversarial bank, ``benchmarks/poisoning_bank.py``); no CLI
    flag reaches it.

    Each bank runs in a Ray actor with ``cpus_per_bank`` CPUs, so on a 2-core machine
    two banks train at a time. Without ``ray_address`` Ray is started here, for this run
    only (never a cluster named by ``RAY_ADDRESS``); with it (``HOST:PORT``, checked with
    :func:`check_ray_cluster`) the banks run on that cluster and read their tables at
    the same paths there. Raises if the ServerApp fails.
    """
    write_app_config(app_dir, run_config)
    # Keep Ray's current GPU-visibility behaviour without its FutureWarning (CPU-only banks).
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    run = _new_run()
    context = Context(run_id=run.run_id, node_id=0, node_config={}, state=RecordDict(),
                      run_config=dict(run_config))
    backend_config = {
        "client_resources": {"num_cpus": cpus_per_bank, "num_gpus": 0.0},
        "init_args": {"address": ray_address or LOCAL_RAY,
                      "logging_level": "WARNING" if verbose else "ERROR",
                      "log_to_driver": verbose, "include_dashboard": False},
    }
    started = time.time()
    logging.getLogger("flwr").setLevel(logging.INFO)
    _run_simulation(
        num_supernodes=num_banks, exit_event=EventType.PYTHON_API_RUN_SIMULATION_LEAVE,
        client_app=bank_app or client_app, server_app=server_app, backend_name="ray",
        backend_config=backend_config, app_dir=str(app_dir), run=run,
        server_app_context=context, verbose_logging=verbose, is_app=True,
    )
    if not ray_address:  # kept when the run failed: Ray's logs say why
        _remove_ray_session(started)
    return run.run_id


def _remove_ray_session(since: float) -> None:
    """Remove the session folder (logs, sockets) the local Ray of this run left behind.

    Ray keeps every session under ``$TMPDIR/ray`` (or ``/tmp/ray``), so each simulation
    left one more. Ray names a session after the pid that started it: this process.
    """
    root = Path(get_default_ray_temp_dir())
    for session in root.glob(f"session_*_{os.getpid()}"):
        if session.is_dir() and session.stat().st_mtime >= since - 1:
            shutil.rmtree(session, ignore_errors=True)
    latest = root / "session_latest"
    if latest.is_symlink() and not latest.exists():
        latest.unlink(missing_ok=True)


def _new_run() -> Run:
    run = Run.create_empty(generate_rand_int_from_bytes(RUN_ID_NUM_BYTES))
    run.primary_task_id = generate_rand_int_from_bytes(TASK_ID_NUM_BYTES)
    run.federation_id = NOOP_FEDERATION_ID
    TaskIdentity.task_id = 1
    TaskIdentity.run_id = run.run_id
    TaskIdentity.node_id = SUPERLINK_NODE_ID
    return run
