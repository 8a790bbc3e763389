"""A real two-node Ray cluster on loopback for the tests: a head and a worker, 1 CPU each.

Both nodes run ``ray start --block`` from the tests' environment (same python, same
PYTHONPATH: the "same image" a real cluster needs), with ports chosen free and a temp
dir of their own, so nothing collides with a simulation's local Ray. They are stopped
by pid (``ray stop`` would kill every Ray process on the machine, other runs' too).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from conftest import ENV
from deployment import free_base_port

RAY = str(Path(sys.executable).with_name("ray"))
START_TIMEOUT = 60.0


@dataclass
class RayCluster:
    """A running cluster: its GCS address and the temp dir that holds its sessions."""

    address: str
    temp_dir: Path


@contextmanager
def ray_cluster() -> Iterator[RayCluster]:
    """Start a head and a worker node (1 CPU each); stop both and every child at exit."""
    # Ray's unix sockets live under the temp dir, and a socket path has at most 107 bytes:
    # pytest's tmp_path is too deep, so the cluster gets a short folder of its own.
    temp_dir = Path(tempfile.mkdtemp(prefix="fedrisk-ray-"))
    base = free_base_port(110)
    address = f"127.0.0.1:{base}"
    common = ["--block", "--num-cpus", "1", "--temp-dir", str(temp_dir),
              "--disable-usage-stats", "--node-ip-address", "127.0.0.1"]
    head = ["--head", "--port", str(base), "--include-dashboard", "false",
            "--dashboard-port", str(base + 1), "--ray-client-server-port", str(base + 2),
            "--node-manager-port", str(base + 3), "--object-manager-port", str(base + 4),
            "--min-worker-port", str(base + 10), "--max-worker-port", str(base + 59)]
    worker = ["--address", address,
              "--node-manager-port", str(base + 5), "--object-manager-port", str(base + 6),
              "--min-worker-port", str(base + 60), "--max-worker-port", str(base + 109)]
    nodes: list[subprocess.Popen] = []
    try:
        for args in (head, worker):
            log = temp_dir / f"node-{len(nodes)}.log"
            nodes.append(_start_node(args + common, log))
            _wait_for_start(nodes[-1], log)
        assert len(cluster_state(address)["nodes"]) == 2
        yield RayCluster(address, temp_dir)
    finally:
        for node in reversed(nodes):
            _stop_node(node)
        shutil.rmtree(temp_dir, ignore_errors=True)


def _start_node(args: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as out:
        # a process group of its own, so that stopping it reaches every Ray child it started
        return subprocess.Popen([RAY, "start", *args], stdout=out, stderr=subprocess.STDOUT,
                                env={**ENV, "RAY_USAGE_STATS_ENABLED": "0"},
                                start_new_session=True)


def _wait_for_start(node: subprocess.Popen, log: Path) -> None:
    deadline = time.monotonic() + START_TIMEOUT
    while time.monotonic() < deadline and node.poll() is None:
        if "Ray runtime started" in log.read_text(errors="replace"):
            return
        time.sleep(0.5)
    raise RuntimeError(f"a Ray node did not start: {log.read_text(errors='replace')[-2000:]}")


def _stop_node(node: subprocess.Popen) -> None:
    """SIGTERM to the node's process group (``ray start`` stops its children), then SIGKILL."""
    for sig, wait in ((signal.SIGTERM, 20.0), (signal.SIGKILL, 10.0)):
        try:
            os.killpg(node.pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline and group_members(node.pid):
            time.sleep(0.5)
        if not group_members(node.pid):
            node.wait(timeout=10)
            return


def group_members(pgid: int) -> list[int]:
    """Live processes of a process group (zombies excluded)."""
    members = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            members.append(int(stat.parent.name))
    return members


CLUSTER_STATE = """
import json, sys, ray
from ray._private import state
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
nodes = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
actors = [{"class": a["ActorClassName"], "node": a["Address"]["NodeID"], "job": a["JobID"]}
          for a in state.actors().values()]
print(json.dumps({"nodes": nodes, "actors": actors}))
"""


def cluster_state(address: str) -> dict:
    """The cluster's alive nodes and every actor it ever ran (from its GCS, in a fresh driver)."""
    result = subprocess.run([sys.executable, "-c", CLUSTER_STATE, address], capture_output=True,
                            text=True, env=ENV, timeout=60)
    if result.returncode != 0:
        raise RuntimeError(f"cannot read the state of the Ray cluster at {address}: "
                           f"{result.stderr[-2000:]}")
    return json.loads(result.stdout.splitlines()[-1])
