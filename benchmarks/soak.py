"""Soak: many runs back to back leave nothing behind and every ledger verifies.

Two series, each what a user types, run as subprocesses:

- ``fedrisk simulate --rounds 1`` 20 times (3 banks of the embedded lending_club table,
  split with ``--banks 3``);
- ``fedrisk consortium up / run --rounds 1 / down`` 5 times on one consortium (3 banks,
  ``consortium init`` once, as in the README's "On one machine").

After each cycle it counts what is left of ours:

- processes (``flower-*``, ``flwr-*``, ``ray::``, the consortium's nginx, ``python -m
  fedrisk``): every process started here carries a marker in its environment
  (``FEDRISK_SOAK``), inherited by everything below it (Ray workers, SuperExec, nginx),
  so other users' processes on a shared machine are never counted;
- TCP ports listening on loopback held by those processes, plus the consortium's own
  ports still bound;
- files and folders in the children's temporary directory (``TMPDIR``, which Ray also
  uses for its sessions): a private folder under /tmp, so only ours are counted;
- open file descriptors and resident memory (RSS) of this benchmark process;
- every bank ledger the cycle wrote, verified (``fedrisk.privacy.verify``).

Writes benchmarks/results/soak.{json,png}.

    python benchmarks/soak.py [--quick]     # --quick: 3 simulations, 1 consortium cycle
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from fedrisk.consortium.layout import Layout, read_settings  # noqa: E402
from fedrisk.consortium.processes import port_in_use  # noqa: E402
from fedrisk.data import load_embedded  # noqa: E402
from fedrisk.privacy.verify import verify_path  # noqa: E402

RESULTS = Path(__file__).parent / "results"
MARKER = "FEDRISK_SOAK"
BANKS = ["northeast", "midwest", "south_atlantic"]
CYCLES = {"simulate": 20, "consortium": 5}
QUICK_CYCLES = {"simulate": 3, "consortium": 1}
SETTLE_SECONDS = 20.0  # Ray and SuperExec helpers exit on their own shortly after a run
LISTEN = "0A"  # TCP state LISTEN in /proc/net/tcp


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="3 simulations, 1 consortium cycle")
    args = parser.parse_args()
    cycles = QUICK_CYCLES if args.quick else CYCLES
    root = Path(tempfile.mkdtemp(prefix="fedrisk-soak-"))
    token = secrets.token_hex(8)
    children_tmp = root / "tmp"
    children_tmp.mkdir()
    env = {**os.environ, MARKER: token, "TMPDIR": str(children_tmp),
           "FLWR_TELEMETRY_ENABLED": "0", "FLWR_DISABLE_UPDATE_CHECK": "1",
           "FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION": "1"}
    rows = [snapshot("start", 0, 0.0, token, children_tmp, [], True)]
    print_row(rows[0])
    try:
        rows += simulations(cycles["simulate"], root, env, token, children_tmp)
        rows += consortium_cycles(cycles["consortium"], root, env, token, children_tmp)
    finally:
        run(["consortium", "down", str(root / "consortium")], env, check=False)
    result = {"cycles": cycles, "settle_seconds": SETTLE_SECONDS, "rows": rows,
              "summary": summary(rows)}
    name = "soak_quick" if args.quick else "soak"
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.json").write_text(json.dumps(result, indent=2))
    plot(rows, RESULTS / f"{name}.png")
    print(json.dumps(result["summary"], indent=2))
    shutil.rmtree(root, ignore_errors=True)


def simulations(count: int, root: Path, env: dict[str, str], token: str,
                children_tmp: Path) -> list[dict]:
    """``count`` one-round simulations of 3 banks; a snapshot after each."""
    table, contract = load_embedded("lending_club")
    table.to_csv(root / "pooled.csv", index=False)
    contract.save(root / "contract.toml")
    rows = []
    for cycle in range(1, count + 1):
        output = root / f"simulate-{cycle}"
        started = time.monotonic()
        run(["simulate", "--rounds", "1", "--data", str(root / "pooled.csv"), "--contract",
             str(root / "contract.toml"), "--banks", "3", "--output-dir", str(output)], env)
        seconds = time.monotonic() - started
        rows.append(snapshot("simulate", cycle, seconds, token, children_tmp,
                             verify_path(output), True))
        print_row(rows[-1])
    return rows


def consortium_cycles(count: int, root: Path, env: dict[str, str], token: str,
                      children_tmp: Path) -> list[dict]:
    """``count`` times ``consortium up / run --rounds 1 / down``; a snapshot after each."""
    directory = root / "consortium"
    run(["consortium", "init", str(directory), "--banks", ",".join(BANKS), "--base-port",
         str(free_base_port(len(BANKS) + 2))], env)
    layout = Layout.at(directory)
    rows = []
    for cycle in range(1, count + 1):
        started = time.monotonic()
        run(["consortium", "up", str(directory)], env)
        try:
            run(["consortium", "run", str(directory), "--rounds", "1", "--name",
                 f"soak-{cycle}"], env)
        finally:
            run(["consortium", "down", str(directory)], env)
        seconds = time.monotonic() - started
        ledgers = [r for bank in BANKS for r in verify_path(layout.bank_dir(bank) / "state")]
        rows.append(snapshot("consortium", cycle, seconds, token, children_tmp, ledgers,
                             consortium_ports_free(layout)))
        print_row(rows[-1])
    return rows


def run(args: list[str], env: dict[str, str], check: bool = True) -> None:
    """``fedrisk ARGS`` as a user types it; output kept only when it fails."""
    done = subprocess.run([sys.executable, "-m", "fedrisk.cli", *args], env=env,
                          capture_output=True, text=True)
    if check and done.returncode != 0:
        raise SystemExit(f"fedrisk {' '.join(args[:2])} failed ({done.returncode}): "
                         f"{(done.stdout + done.stderr)[-2000:]}")


def snapshot(series: str, cycle: int, seconds: float, token: str, children_tmp: Path,
             ledgers: list, ports_free: bool) -> dict:
    """What is left of ours after a cycle (waiting up to SETTLE_SECONDS for helpers to exit)."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while (left := marked_processes(token)) and time.monotonic() < deadline:
        time.sleep(0.5)
    return {
        "series": series, "cycle": cycle, "seconds": round(seconds, 1),
        "processes_left": len(left), "process_names": sorted({name for _, name in left}),
        "listening_ports": listening_ports([pid for pid, _ in left]),
        "own_ports_free": ports_free,
        "tmp_entries": tmp_entries(children_tmp),
        "fds": len(os.listdir("/proc/self/fd")),
        "rss_mib": round(rss_bytes() / 2**20, 1),
        "ledgers": len(ledgers), "ledgers_ok": all(r.ok for r in ledgers) and bool(ledgers)
        if series != "start" else True,
    }


def marked_processes(token: str) -> list[tuple[int, str]]:
    """Live processes (pid, name) whose environment carries this run's marker."""
    needle = f"{MARKER}={token}".encode()
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            if needle not in (entry / "environ").read_bytes().split(b"\0"):
                continue
            stat = (entry / "stat").read_text()
            command = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(
                errors="replace")
        except OSError:
            continue
        if stat.rsplit(")", 1)[1].split()[0] != "Z":
            found.append((int(entry.name), command.split(" ")[0][-40:] or stat.split()[1]))
    return found


def listening_ports(pids: list[int]) -> list[int]:
    """Loopback TCP ports in LISTEN held by these processes."""
    inodes = set()
    for pid in pids:
        try:
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[8:-1])
        except OSError:
            continue
    ports = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == LISTEN and fields[9] in inodes:
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return sorted(ports)


def consortium_ports_free(layout: Layout) -> bool:
    """Whether the fleet, SuperLink and banks' Runtime API ports are all free again."""
    settings = read_settings(layout)
    ports = [settings.fleet_port, settings.control_port]
    ports += [settings.fleet_port + 2 + i for i in range(len(settings.banks))]
    return not any(port_in_use("127.0.0.1", port) for port in ports)


def free_base_port(count: int) -> int:
    """A base port with ``count`` consecutive free ports on loopback."""
    for base in range(31000, 60000, 97):
        if not any(port_in_use("127.0.0.1", base + i) for i in range(count)):
            return base
    raise SystemExit("no free ports")


def tmp_entries(folder: Path) -> list[str]:
    """Entries of the children's TMPDIR, two levels deep (Ray keeps one folder per session)."""
    found = []
    for entry in sorted(folder.iterdir()):
        found.append(entry.name)
        if entry.is_dir() and not entry.is_symlink():
            found += [f"{entry.name}/{inner.name}" for inner in sorted(entry.iterdir())]
    return found


def rss_bytes() -> int:
    """Resident set size of this process."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def summary(rows: list[dict]) -> dict:
    """Per series: cycles, worst leftovers, memory and descriptor trend, ledgers."""
    result = {}
    for series in ("simulate", "consortium"):
        mine = [r for r in rows if r["series"] == series]
        if not mine:
            continue
        result[series] = {
            "cycles": len(mine),
            "mean_seconds": round(sum(r["seconds"] for r in mine) / len(mine), 1),
            "max_processes_left": max(r["processes_left"] for r in mine),
            "max_listening_ports": max(len(r["listening_ports"]) for r in mine),
            "own_ports_free": all(r["own_ports_free"] for r in mine),
            "tmp_entries_last": len(mine[-1]["tmp_entries"]),
            "fds_first_last": [mine[0]["fds"], mine[-1]["fds"]],
            "rss_mib_first_last": [mine[0]["rss_mib"], mine[-1]["rss_mib"]],
            "ledgers_verified": all(r["ledgers_ok"] for r in mine),
        }
    return result


def print_row(row: dict) -> None:
    """One line of the table."""
    print(f"{row['series']:>10} {row['cycle']:>2} {row['seconds']:>6.1f}s "
          f"procs={row['processes_left']} ports={row['listening_ports']} "
          f"own-ports-free={row['own_ports_free']} tmp={len(row['tmp_entries'])} "
          f"fds={row['fds']} rss={row['rss_mib']}MiB ledgers={row['ledgers']} "
          f"ok={row['ledgers_ok']}", flush=True)


def plot(rows: list[dict], path: Path) -> None:
    """Leftovers and memory per cycle, both series in order."""
    x = range(len(rows))
    labels = [f"{r['series'][0]}{r['cycle']}" for r in rows]
    figure, (left, right) = plt.subplots(1, 2, figsize=(11, 4))
    left.plot(x, [r["processes_left"] for r in rows], "o-", label="processes left")
    left.plot(x, [len(r["listening_ports"]) for r in rows], "s-", label="ports left")
    left.plot(x, [len(r["tmp_entries"]) for r in rows], "^-", label="TMPDIR entries")
    left.set_title("left behind after each cycle")
    right.plot(x, [r["rss_mib"] for r in rows], "o-", label="benchmark RSS (MiB)")
    right.plot(x, [r["fds"] for r in rows], "s-", label="benchmark open fds")
    right.set_title("benchmark process")
    for axis in (left, right):
        axis.set_xticks(list(x), labels, rotation=90, fontsize=7)
        axis.legend()
        axis.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    main()
