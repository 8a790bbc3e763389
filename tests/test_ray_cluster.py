"""``fedrisk simulate --ray-address``: the same simulation on an existing Ray cluster.

The cluster is real: a head and a worker node started with ``ray start`` (1 CPU each),
whose GCS records every actor it ran and on which node. The address checks come first:
they need no cluster (the module's cluster starts with the first test that uses it).
"""

import socket
import subprocess
import sys
import time

import pytest
from conftest import ENV, run_cli, write_embedded
from deployment import processes_left
from raycluster import cluster_state, ray_cluster

from fedrisk.simulations.engine import RayClusterError, check_ray_cluster

BANKS = 3
FAST_RUN = ("--banks", str(BANKS), "--rounds", "1", "--no-dp", "--personalization", "none")


@pytest.mark.parametrize("address", ["10.0.0.5", "ray://10.0.0.5:10001", "head:port",
                                     "head:70000", ":6379"])
def test_a_malformed_ray_address_is_refused_before_anything_runs(address):
    with pytest.raises(RayClusterError, match="expected HOST:PORT"):
        check_ray_cluster(address)


def test_an_address_without_a_ray_cluster_is_a_one_line_error_within_seconds(tmp_path):
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        refused = f"127.0.0.1:{closed.getsockname()[1]}"  # bound, not listening
        output = tmp_path / "run"
        started = time.monotonic()
        result = run_cli("simulate", "--output-dir", str(output), "--ray-address", refused,
                         timeout=120)
        elapsed = time.monotonic() - started
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.stderr
    assert lines[0].startswith(f"error: --ray-address {refused}: no Ray cluster")
    assert elapsed < 60 and not output.exists()  # refused before anything ran


def test_a_silent_server_or_an_unknown_host_is_no_ray_cluster_within_seconds():
    with socket.socket() as silent:  # accepts connections, never answers: not a Ray GCS
        silent.bind(("127.0.0.1", 0))
        silent.listen()
        for address in (f"127.0.0.1:{silent.getsockname()[1]}", "no-such-host.invalid:6379"):
            started = time.monotonic()
            with pytest.raises(RayClusterError, match="no Ray cluster answers there"):
                check_ray_cluster(address)
            assert time.monotonic() - started < 30


@pytest.fixture(scope="module")
def cluster():
    with ray_cluster() as running:
        yield running
    assert processes_left(str(running.temp_dir)) == []  # no gcs_server, raylet or worker left


@pytest.fixture(scope="module")
def pooled(tmp_path_factory):
    """credit_data as a user's pooled table and contract (split into 3 banks by the runs)."""
    data, contract, _ = write_embedded("credit_data", tmp_path_factory.mktemp("pooled"))
    return ("--data", str(data), "--contract", str(contract))


def bank_actors(address: str) -> list[dict]:
    """Every bank actor the cluster ever ran (Flower's ClientAppActor), alive or not."""
    return [a for a in cluster_state(address)["actors"] if a["class"] == "ClientAppActor"]


def run_cli_with_env(extra: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], capture_output=True,
                          text=True, env={**ENV, **extra}, timeout=300)


def test_simulate_runs_the_banks_on_both_nodes_of_the_cluster(cluster, pooled, tmp_path):
    assert bank_actors(cluster.address) == []
    output = tmp_path / "run"
    started = time.monotonic()
    result = run_cli("simulate", *pooled, *FAST_RUN, "--output-dir", str(output),
                     "--ray-address", cluster.address, timeout=300)
    elapsed = time.monotonic() - started
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "consortium AUC" in result.stdout and (output / "metrics.json").is_file()
    # The banks ran in the cluster's actors, one per CPU: one on the head, one on the worker
    # (a local Ray would leave the cluster without any ClientAppActor).
    state = cluster_state(cluster.address)
    actors = bank_actors(cluster.address)
    assert len(actors) == 2 and {a["node"] for a in actors} == set(state["nodes"])
    assert len({a["job"] for a in actors}) == 1
    print(f"simulation on the 2-node cluster: {elapsed:.1f} s")


def test_without_ray_address_a_simulation_stays_local_even_if_ray_address_is_set(
        cluster, pooled, tmp_path):
    # Ray's own default joins the cluster named by RAY_ADDRESS (or the last `ray start` on
    # this machine): the banks' rows would go to a cluster nobody asked for.
    before = bank_actors(cluster.address)
    result = run_cli_with_env({"RAY_ADDRESS": cluster.address}, "simulate", *pooled,
                              *FAST_RUN, "--output-dir", str(tmp_path / "run"))
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert bank_actors(cluster.address) == before
